"""Stage 1 token types (phncls, phn, char, bpe; tagged or not) and per-fold BPE on training text only."""

from __future__ import annotations

import pytest

from mtlser.data.datadir import DataDir, read_table
from mtlser.text import bpe as bpe_mod
from mtlser.text.tokenize import read_token_list, token_set_name, tokenize_data_dir
from mtlser.utils import MtlserError

#: A stand-in for G2P (slow to load): fixed phones per transcript, as G2P gives them.
PHONES = {
    "hello world": ["HH", "AH0", "L", "OW1", "W", "ER1", "L", "D"],
    "Yeah! That's great.": ["Y", "AE1", "DH", "AE1", "T", "S", "G", "R", "EY1", "T"],
    "[LAUGHTER]": [],
}


def fake_g2p(text):
    return list(PHONES[text])


@pytest.fixture
def text_dir(tmp_path):
    """Three utterances: ang / hap / neu, one of them only a non-verbal tag."""
    tables = {
        "wav.scp": {"u1": "/a.wav", "u2": "/b.wav", "u3": "/c.wav"},
        "text": {"u1": "hello world", "u2": "Yeah! That's great.", "u3": "[LAUGHTER]"},
        "utt2spk": {"u1": "Ses01F", "u2": "Ses01F", "u3": "Ses01M"},
        "utt2emo": {"u1": "ang", "u2": "hap", "u3": "neu"},
    }
    DataDir(tables, emotions=["ang", "hap", "sad", "neu"]).write(tmp_path / "all")
    return tmp_path / "all"


def test_token_set_names():
    assert token_set_name("phncls") == "phncls"
    assert token_set_name("phncls", emo_tag=False) == "phncls_notag"
    assert token_set_name("phn") == "phn_emo" and token_set_name("phn", False) == "phn"
    assert token_set_name("char", False) == "char" and token_set_name("char") == "char_emo"
    assert token_set_name("bpe", True, 50) == "bpe50_emo" and token_set_name("bpe", False, 50) == "bpe50"
    with pytest.raises(MtlserError, match="unknown token type 'word'"):
        token_set_name("word")


def test_phncls_default_is_the_papers_targets(text_dir, tmp_path):
    tokenize_data_dir(text_dir, tmp_path / "token_list", g2p=fake_g2p)
    text = read_table(text_dir / "text_phncls", allow_empty_value=True)
    # HH AH0 L OW1 W ER1 L D -> F V L Vs L Vs L S, each tagged with ang = 0
    assert text["u1"] == "F0 V0 L0 Vs0 L0 Vs0 L0 S0"
    assert text["u2"].split()[:3] == ["L1", "Vs1", "F1"]
    assert text["u3"] == ""  # non-verbal only: no targets, label kept
    tokens = read_token_list(tmp_path / "token_list/phncls/tokens.txt")
    assert tokens == ["<blank>"] + [f"{c}{i}" for i in range(4) for c in ("S", "F", "N", "L", "V", "Vs")]
    # The G2P output is kept for inspection as text_phn (the plain phn set).
    assert read_table(text_dir / "text_phn", allow_empty_value=True)["u1"] == "HH AH0 L OW1 W ER1 L D"


def test_an_utterance_without_class_has_no_tagged_targets(text_dir, tmp_path):
    """utt2emo '-' (kept for its attributes): tagged targets need the class, so none; untagged ones stay."""
    (text_dir / "utt2emo").write_text("u1 -\nu2 hap\nu3 neu\n")
    tokenize_data_dir(text_dir, tmp_path / "token_list", g2p=fake_g2p)
    text = read_table(text_dir / "text_phncls", allow_empty_value=True)
    assert text["u1"] == "" and text["u2"].split()[:3] == ["L1", "Vs1", "F1"]
    tokenize_data_dir(text_dir, tmp_path / "token_list", emo_tag=False, g2p=fake_g2p)
    assert read_table(text_dir / "text_phncls_notag", allow_empty_value=True)["u1"] == "F V L Vs L Vs L S"
    (text_dir / "utt2emo").write_text("u1 xyz\nu2 hap\nu3 neu\n")
    with pytest.raises(MtlserError, match=r"utt2emo:1: 'u1' has label 'xyz'"):
        tokenize_data_dir(text_dir, tmp_path / "token_list", g2p=fake_g2p)


def test_untagged_and_phone_and_char_sets(text_dir, tmp_path):
    tl = tmp_path / "token_list"
    tokenize_data_dir(text_dir, tl, "phncls", emo_tag=False, g2p=fake_g2p)
    assert read_table(text_dir / "text_phncls_notag", allow_empty_value=True)["u1"] == "F V L Vs L Vs L S"
    assert read_token_list(tl / "phncls_notag/tokens.txt") == ["<blank>", "S", "F", "N", "L", "V", "Vs"]

    tokenize_data_dir(text_dir, tl, "phn", g2p=fake_g2p)
    assert read_table(text_dir / "text_phn_emo", allow_empty_value=True)["u2"].startswith("Y_1 AE1_1 DH_1")
    phn = read_token_list(tl / "phn_emo/tokens.txt")
    assert len(phn) == 1 + 4 * 69 and "AH0_3" in phn and "HH_0" in phn and "AH_0" not in phn

    tokenize_data_dir(text_dir, tl, "char")
    char = read_table(text_dir / "text_char_emo", allow_empty_value=True)
    assert char["u2"] == " ".join(f"{c}_1" for c in "yeah|that's|great")
    assert char["u3"] == ""
    assert read_table(text_dir / "text_norm", allow_empty_value=True)["u2"] == "yeah that's great"
    tokens = read_token_list(tl / "char_emo/tokens.txt")
    assert len(tokens) == 1 + 4 * 28 and "|_2" in tokens and "'_0" in tokens

    # Every target token is in its list (what the trainer's dataset checks too).
    for name in ("phncls_notag", "phn_emo", "char_emo"):
        known = set(read_token_list(tl / name / "tokens.txt"))
        for line in read_table(text_dir / f"text_{name}", allow_empty_value=True).values():
            assert set(line.split()) <= known, (name, line)


def test_old_token_list_file_is_a_clear_error(text_dir, tmp_path):
    (tmp_path / "token_list").write_text("<blank>\n")
    with pytest.raises(MtlserError, match=r"token_list: is a file \(the token list of an older layout\)"):
        tokenize_data_dir(text_dir, tmp_path / "token_list", g2p=fake_g2p)


# ---------------------------------------------------------------- bpe per fold

def _fold(root, name, splits):
    """A fold dir with text_norm/utt2emo per split: splits = {split: {utt: (emotion, words)}}."""
    for split, utts in splits.items():
        DataDir({
            "wav.scp": {u: "/x.wav" for u in utts},
            "utt2spk": {u: u.split("_")[0] for u in utts},
            "utt2emo": {u: e for u, (e, _) in utts.items()},
            "text": {u: w for u, (_, w) in utts.items()},
            "text_norm": {u: w for u, (_, w) in utts.items()},
        }, emotions=["ang", "hap", "sad", "neu"]).write(root / name / split)
    return root / name


TRAIN = {f"Ses01F_d_F{i:03d}": ("ang" if i % 2 else "sad", s) for i, s in enumerate(
    ["the cat sat on the mat", "a dog ran in the park", "we went home at night", "the park is green",
     "she sat by the door", "they ran to the station", "it was a good day", "the night was cold"] * 3)}
VALID = {"Ses01M_d_M000": ("neu", "the dog sat")}
# Said only by the test speaker, many times: BPE trained with it would make it one piece.
TEST = {f"Ses02F_d_F{i:03d}": ("hap", "zyzzogeton quixotic zyzzogeton") for i in range(30)}


def test_bpe_is_trained_on_the_training_split_only(tmp_path, monkeypatch):
    fold = _fold(tmp_path / "loso", "fold01", {"train": TRAIN, "valid": VALID, "test": TEST})
    seen = []
    real_train = bpe_mod.train_bpe
    monkeypatch.setattr(bpe_mod, "train_bpe", lambda sents, *a, **k: seen.append(list(sents)) or
                        real_train(sents, *a, **k))
    rows = bpe_mod.bpe_folds(tmp_path / "loso", nbpe=30)
    assert rows[0]["fold"] == "fold01"
    # The trainer of the units saw exactly the training transcripts: no valid, no test text.
    assert sorted(seen[0]) == sorted(w for _, w in TRAIN.values())

    pieces = read_token_list(fold / "token_list/bpe30_emo/tokens.txt")
    assert pieces[0] == "<blank>" and "<unk>_0" in pieces
    assert not any("zyzz" in p or "quix" in p for p in pieces)
    # Unseen letters of the test speaker become <unk>, tagged like every piece.
    test_text = read_table(fold / "test/text_bpe30_emo", allow_empty_value=True)
    assert "<unk>_1" in test_text["Ses02F_d_F000"].split()
    train_text = read_table(fold / "train/text_bpe30_emo", allow_empty_value=True)
    assert all(t.endswith(("_0", "_2")) for line in train_text.values() for t in line.split())
    assert (fold / "token_list/bpe30_emo/bpe.model").is_file()

    # Control: units trained with the test text do contain its word, so the check above can fail.
    leaky = bpe_mod.pieces_of(bpe_mod.train_bpe([w for _, w in TRAIN.values()] + [w for _, w in TEST.values()], 30))
    assert any("zyzz" in p for p in leaky)


def test_bpe_untagged_and_missing_text_norm(tmp_path):
    fold = _fold(tmp_path / "loso", "fold01", {"train": TRAIN, "valid": VALID, "test": TEST})
    bpe_mod.bpe_folds(tmp_path / "loso", nbpe=30, emo_tag=False)
    tokens = read_token_list(fold / "token_list/bpe30/tokens.txt")
    assert "<unk>" in tokens and not any(t.endswith("_0") for t in tokens)
    (fold / "valid/text_norm").unlink()
    with pytest.raises(MtlserError, match=r"valid/text_norm: missing; run the tokens step with --token-type bpe"):
        bpe_mod.bpe_folds(tmp_path / "loso", nbpe=30)


def test_training_reads_a_per_fold_token_list(tmp_path, tiny_config, make_data_dir):
    """Stages 1-3 for bpe: text_norm, folds, per-fold units, and a fold trained with --token-list .../foldNN/..."""
    from mtlser.data.split import split
    from mtlser.train.__main__ import main as train_main

    words = ["the cat sat on the mat", "a dog ran in the park", "we went home", "she sat by the door"]
    data = make_data_dir(n_spk=4, n_utt=4, seconds=0.6)
    text = read_table(data / "text")
    for i, u in enumerate(sorted(text)):
        text[u] = words[i % 4]
    dd = DataDir.load(data)
    dd.tables["text"] = text
    dd.write(data)
    tokenize_data_dir(data, tmp_path / "token_list", "bpe", nbpe=20)
    split(data, tmp_path / "loso", valid="session-mate")
    bpe_mod.bpe_folds(tmp_path / "loso", nbpe=20)
    cfg = tiny_config(train={"epochs": 1}, data={"token_type": "bpe20_emo", "batch_size": 4})
    rc = train_main(["--config", str(cfg), "--folds-dir", str(tmp_path / "loso"), "--fold", "2",
                     "--token-list", str(tmp_path / "loso/foldNN/token_list/bpe20_emo/tokens.txt"),
                     "--exp-dir", str(tmp_path / "exp")])
    assert rc == 0
    assert (tmp_path / "exp/fold02/token_list").read_text() == \
        (tmp_path / "loso/fold02/token_list/bpe20_emo/tokens.txt").read_text()
