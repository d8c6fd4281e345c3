"""The emotion inventory: one list, from the data, read by every stage in one order.

Label maps and the data dir's ``emotions`` file (stage 0), the tags of the CTC tokens
(stage 1), the fold dirs (stage 2), the class index of training and the checks that
stop a run whose config, token list or data disagree; an undeclared label at stage 0;
transcripts in other languages (char keeps their letters, G2P refuses them).
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from mtlser.corpora import iemocap
from mtlser.corpora.prep import prepare
from mtlser.data.datadir import DataDir, read_table, validate_data_dir, write_table
from mtlser.data.dataset import SERDataset
from mtlser.data.emotions import EmotionMap, read_inventory, write_inventory
from mtlser.data.set_emotions import main as set_emotions_main
from mtlser.data.split import split
from mtlser.text.g2p import check_english
from mtlser.text.tokenize import CHARS, read_token_list, tokenize_data_dir
from mtlser.train.__main__ import main as train_main
from mtlser.utils import MtlserError, run_main
from tests.conftest import write_wav
from tests.test_iemocap_prep import EXPECTED_EMO, kaldi_id, release  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
FIVE = ["neu", "fea", "sad", "hap", "ang"]  # a fifth label, and not the recipe's order


def tag_of(token: str) -> int:
    return int(token.rsplit("_", 1)[-1]) if "_" in token else int(token[-1])


# ---------------------------------------------------------------- stage 0: label maps and the inventory

def test_iemocap_prep_takes_its_classes_from_a_label_map(release, tmp_path, caplog):  # noqa: F811
    # The recipe's map: data/all/emotions is the paper's four, in its order; the release counts are checked.
    out = tmp_path / "four"
    with caplog.at_level(logging.INFO):
        prepare(iemocap.CORPUS, release, out, skip_missing_audio=True)
    assert read_inventory(out) == ["ang", "hap", "sad", "neu"]
    assert "the release gives 1241" in caplog.text

    # Another map: exc is a class of its own, listed first; fru kept; nothing merged.
    caplog.clear()
    path = tmp_path / "five.yaml"
    path.write_text("emotions: [exc, neu, ang, hap, sad, fru]\n")
    out = tmp_path / "six"
    with caplog.at_level(logging.INFO):
        prepare(iemocap.CORPUS, release, out, emotion_map=path, skip_missing_audio=True)
    dd = DataDir.load(out)
    assert read_inventory(out) == ["exc", "neu", "ang", "hap", "sad", "fru"]
    assert dd["utt2emo"]["Ses01F-Ses01F_impro01_F001"] == "exc" and dd["utt2emo"]["Ses01M-Ses01F_impro01_M001"] == "fru"
    assert dd["utt2emo"]["Ses01F-Ses01F_impro01_F002"] == "hap"
    assert "no counts to compare with" in caplog.text and "the release gives" not in caplog.text

    # The paper's mapping in another order is still the mapping the published counts are for.
    path.write_text("emotions: [neu, sad, hap, ang]\nmerge: {exc: hap}\n")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        prepare(iemocap.CORPUS, release, tmp_path / "reordered", emotion_map=path, skip_missing_audio=True)
    dd = DataDir.load(tmp_path / "reordered")
    assert dict(dd["utt2emo"]) == {kaldi_id(t): e for t, e in EXPECTED_EMO.items()}
    assert "the release gives 1241" in caplog.text

    path.write_text("emotions: [ang, hap, sad, neu]\nmerge: {excited: hap}\n")
    with pytest.raises(MtlserError, match=r"five.yaml: excited are not IEMOCAP emotion codes"):
        prepare(iemocap.CORPUS, release, tmp_path / "bad", emotion_map=path, skip_missing_audio=True)


def test_shipped_label_maps_load():
    from mtlser.data.emotions import load_emotion_map

    emap = load_emotion_map(ROOT / "conf/emotions/iemocap.yaml")
    assert emap.emotions == ["ang", "hap", "sad", "neu"] and emap.merge == {"exc": "hap"}
    assert iemocap.counted_by_release(emap)


def test_set_emotions_applies_a_label_map_to_a_data_dir(make_data_dir, tmp_path):
    # A corpus's own local/data.sh writes raw labels, then one line gives it its inventory.
    data = make_data_dir(n_spk=2, n_utt=6, seconds=0.3, emotions=["angry", "calm", "neutral", "happy", "sad", "fear"])
    before = read_table(data / "utt2emo")
    emap = tmp_path / "map.yaml"
    emap.write_text("emotions: [neutral, happy, sad, angry]\nmerge: {calm: neutral}\n")
    assert run_main(set_emotions_main, [str(data), "--map", str(emap)]) == 0
    dd = validate_data_dir(data)
    assert dd.emotions == ["neutral", "happy", "sad", "angry"]
    kept = {u for u, e in before.items() if e != "fear"}
    assert set(dd["utt2emo"]) == kept and set(dd["wav.scp"]) == kept and set(dd["text"]) == kept
    assert all(dd["utt2emo"][u] == ("neutral" if e == "calm" else e) for u, e in before.items() if u in kept)
    # Idempotent: a second run keeps everything.
    assert run_main(set_emotions_main, [str(data), "--map", str(emap)]) == 0
    assert read_table(data / "utt2emo") == dd["utt2emo"]

    # Labels already final: --emotions only declares their order.
    data2 = make_data_dir(name="other", n_spk=2, n_utt=3, seconds=0.3, emotions=["a", "b", "c"])
    (data2 / "emotions").unlink()
    assert run_main(set_emotions_main, [str(data2), "--emotions", "c b a"]) == 0
    assert read_inventory(data2) == ["c", "b", "a"]


def recipe_dir(tmp_path: Path, data_sh: str) -> Path:
    """A recipe dir as a user makes one for a new corpus (links to the template), with this local/data.sh."""
    recipe = tmp_path / "egs" / "mycorpus"
    (recipe / "local").mkdir(parents=True)
    for name, target in (("path.sh", ROOT / "path.sh"), ("cmd.sh", ROOT / "egs/TEMPLATE/cmd.sh"),
                         ("utils", ROOT / "egs/TEMPLATE/utils"), ("conf", ROOT / "conf"),
                         ("ser.sh", ROOT / "egs/TEMPLATE/ser.sh")):
        (recipe / name).symlink_to(target)
    (recipe / "local/data.sh").write_text(data_sh)
    (recipe / "local/data.sh").chmod(0o755)
    return recipe


def test_an_undeclared_label_fails_at_stage_0_with_file_and_line(tmp_path):
    wavs = [write_wav(tmp_path / "audio" / f"{i}.wav", 0.3, seed=i) for i in range(4)]
    labels = ["ang", "neu", "fea", "sad"]
    lines = {"wav.scp": [], "text": [], "utt2spk": [], "utt2emo": []}
    for i, (wav, emo) in enumerate(zip(wavs, labels)):
        utt = f"spk{i % 2}_utt{i}"
        lines["wav.scp"].append(f"{utt} {wav}")
        lines["text"].append(f"{utt} hello there")
        lines["utt2spk"].append(f"{utt} spk{i % 2}")
        lines["utt2emo"].append(f"{utt} {emo}")
    writes = "".join(f"printf '%s\\n' {' '.join(repr(x) for x in sorted(v))} > data/all/{k}\n"
                     for k, v in lines.items())
    data_sh = ("#!/usr/bin/env bash\nset -euo pipefail\n. ./path.sh\nmkdir -p data/all\n" + writes
               + "python -m mtlser.data.set_emotions data/all --emotions 'ang hap sad neu'\n")
    recipe = recipe_dir(tmp_path, data_sh)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    r = subprocess.run(["./ser.sh", "--stage", "0", "--stop-stage", "0"], cwd=recipe, capture_output=True,
                       text=True, env=env)
    assert r.returncode != 0
    # spk0_utt2 is the second line of the sorted utt2emo
    assert ("data/all/utt2emo:2: utterance 'spk0_utt2' has label 'fea', which is not in the emotion inventory "
            "data/all/emotions (ang hap sad neu)") in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr

    # Declaring it (anywhere: its line is its class index) makes the same data valid.
    (recipe / "data/all/emotions").write_text("ang\nhap\nsad\nneu\nfea\n")
    assert len(validate_data_dir(recipe / "data/all")) == 4
    (recipe / "data/all/emotions").unlink()
    with pytest.raises(MtlserError, match=r"data/all/emotions: no emotion inventory; the data preparation "
                                          r"\(local/data.sh\) writes it"):
        validate_data_dir(recipe / "data/all")


# ---------------------------------------------------------------- stages 1-3: one order for CE and CTC

def _fold_targets(data: Path, tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    tokenize_data_dir(data, tmp_path / name / "token_list", "char")
    split(data, tmp_path / name / "loso", valid_share=0.25, seed=0)
    return tmp_path / name / "loso", read_token_list(tmp_path / name / "token_list/char_emo/tokens.txt")


@pytest.mark.parametrize("order", [["ang", "hap", "sad", "neu", "fea"], FIVE], ids=["appended", "reordered"])
def test_ce_index_and_ctc_tag_follow_the_inventory(make_data_dir, tmp_path, order):
    data = make_data_dir(n_spk=4, n_utt=5, seconds=0.3, text="kids are talking", emotions=order)
    folds, tokens = _fold_targets(data, tmp_path, "x")
    assert len(tokens) == 1 + len(order) * (len(CHARS) + 1)
    assert read_inventory(tmp_path / "x/token_list/char_emo") == order  # what the tags index
    labels = read_table(data / "utt2emo")
    for split_name in ("train", "valid", "test"):
        d = folds / "fold01" / split_name
        assert read_inventory(d) == order
        ds = SERDataset(d, token_list=tokens, token_type="char_emo")
        for i, utt in enumerate(ds.utts):
            index = order.index(labels[utt])
            assert ds.emotions[i] == index  # the cross-entropy target
            assert {tag_of(tokens[t]) for t in ds.targets[i]} == {index}  # every CTC token's tag


def test_training_refuses_a_config_token_list_or_fold_that_disagrees(make_data_dir, tmp_path, tiny_config):
    data = make_data_dir(n_spk=4, n_utt=4, seconds=0.6, text="kids are talking", emotions=FIVE)
    folds, _ = _fold_targets(data, tmp_path, "x")
    token_list = str(tmp_path / "x/token_list/char_emo/tokens.txt")

    def train(*over):
        config = tiny_config(train={"epochs": 1}, data={"token_type": "char_emo", "batch_size": 4})
        return ["--config", str(config), "--folds-dir", str(folds), "--fold", "1", "--token-list", token_list,
                "--exp-dir", str(tmp_path / "exp"), *over]

    # data.emotions restating the data in another order: an error before training, naming both.
    with pytest.raises(MtlserError, match=r"the config's data.emotions has emotions \[ang hap sad neu fea\] but "
                                          r".*fold01/train/emotions has \[neu fea sad hap ang\] \(same labels, "
                                          r"other order"):
        train_main(train("--data.emotions", "[ang, hap, sad, neu, fea]"))
    with pytest.raises(MtlserError, match=r"only in the second: fea"):
        train_main(train("--data.emotions", "[neu, sad, hap, ang]"))
    with pytest.raises(MtlserError, match=r"loss.class_weights has 4 values for the 5 emotions"):
        train_main(train("--loss.class_weights", "[1, 1, 1, 1]"))
    assert not (tmp_path / "exp/fold01/checkpoint.pt").exists()

    # The inventory reordered after stage 1 (tags made with the old order), folds remade: refused.
    write_inventory(data, ["ang", "hap", "sad", "neu", "fea"])
    split(data, folds, valid_share=0.25, seed=0)
    with pytest.raises(MtlserError, match=r"token_list/char_emo/emotions has emotions \[neu fea sad hap ang\] .*"
                                          r"CTC tags would name other emotions than the classes: rerun stages 1-2"):
        train_main(train())

    # Stage 1 rerun: the run goes through, and the model dir records the list and its order.
    tokenize_data_dir(data, tmp_path / "x/token_list", "char")
    split(data, folds, valid_share=0.25, seed=0)
    assert train_main(train("--data.emotions", "[ang, hap, sad, neu, fea]")) == 0
    model = yaml.safe_load((tmp_path / "exp/fold01/model.yaml").read_text())
    assert model["emotions"] == ["ang", "hap", "sad", "neu", "fea"]
    assert yaml.safe_load((tmp_path / "exp/fold01/config.yaml").read_text())["data"]["emotions"] == model["emotions"]


# ---------------------------------------------------------------- transcripts in other languages

def _text_dir(tmp_path: Path, texts: list[str]) -> Path:
    utts = [f"s1_u{i}" for i in range(len(texts))]
    DataDir({"wav.scp": {u: "/x.wav" for u in utts}, "text": dict(zip(utts, texts)),
             "utt2spk": {u: "s1" for u in utts}, "utt2emo": {u: "neu" for u in utts}},
            emotions=["neu", "ang"]).write(tmp_path / "all")
    return tmp_path / "all"


def test_char_tokens_keep_the_corpus_letters(tmp_path):
    data = _text_dir(tmp_path, ["Über die Straße, 2 Mal!", "Привет, мир", "नमस्ते दुनिया", "Ça va? Sí, señor."])
    tokenize_data_dir(data, tmp_path / "tl", "char", emo_tag=False)
    text = read_table(data / "text_char", allow_empty_value=True)
    assert text["s1_u0"] == "ü b e r | d i e | s t r a ß e | m a l"  # the digit is left out, not a letter
    assert text["s1_u1"] == "п р и в е т | м и р"
    assert text["s1_u2"].split()[:6] == ["न", "म", "स", "्", "त", "े"]  # vowel signs and virama are units
    assert text["s1_u3"] == "ç a | v a | s í | s e ñ o r"
    tokens = read_token_list(tmp_path / "tl/char/tokens.txt")
    assert tokens[:1 + len(CHARS)] == ["<blank>", *CHARS] and tokens[-1] == "|"
    extra = tokens[1 + len(CHARS):-1]
    assert extra == sorted(extra) and {"ü", "ß", "ç", "í", "ñ", "п", "्"} <= set(extra)
    for line in text.values():
        assert set(line.split()) <= set(tokens)
    # Decomposed input (e + combining acute) is the same letter as the composed one.
    data = _text_dir(tmp_path / "nfd", ["Se\u0301ance"])
    tokenize_data_dir(data, tmp_path / "nfd/tl", "char", emo_tag=False)
    assert read_table(data / "text_char")["s1_u0"] == "s é a n c e"


class EnglishG2P:
    """A stand-in for G2P with a small English dictionary (the real one is the CMU dictionary)."""

    lexicon = set("kids are talking by the door dogs sitting it's eleven o'clock that is exactly what happened "
                  "i'm on my way to meeting".split())

    def __call__(self, text):
        return ["K", "IH1", "D", "Z"]


def test_g2p_refuses_transcripts_that_are_not_english(tmp_path):
    english = ["Kids are talking by the door.", "Dogs are sitting by the door!", "It's eleven o'clock.",
               "That is exactly what happened.", "I'm on my way to the meeting."] * 2
    data = _text_dir(tmp_path / "en", english)
    tokenize_data_dir(data, tmp_path / "en/tl", "phncls", g2p=EnglishG2P())
    assert read_table(data / "text_phncls")["s1_u0"] == "S0 Vs0 S0 F0"

    german = ["Der Lappen liegt auf dem Eisschrank.", "Das will sie am Mittwoch abgeben.",
              "Heute abend könnte ich es ihm sagen.", "In sieben Stunden wird es soweit sein."]
    data = _text_dir(tmp_path / "de", german)
    with pytest.raises(MtlserError, match=r"de/all/text: the transcripts do not look like English \(1% of letters "
                                          r"outside a-z, 100% of 26 words not in the CMU dictionary, e\.g\. der lappen "
                                          r".*G2P \(--token-type phn, phncls\) is English-only: use --token-type char "
                                          r"or bpe"):
        tokenize_data_dir(data, tmp_path / "de/tl", "phn", g2p=EnglishG2P())
    assert not (data / "text_phn").exists()
    # Another script needs no dictionary to tell.
    data = _text_dir(tmp_path / "ru", ["Дети разговаривают у двери"])
    with pytest.raises(MtlserError, match=r"100% of letters outside a-z\); G2P"):
        tokenize_data_dir(data, tmp_path / "ru/tl", "phncls", g2p=lambda t: [])


def test_english_check_with_the_cmu_dictionary(g2p):
    english = ["Um, yeah, I mean, I don't know what you're gonna do about it.", "The airplane is almost full.",
               "Maybe tomorrow it will be cold.", "I would like a new alarm clock.", "Don't forget a jacket!"]
    shares = check_english(dict(enumerate(english)), g2p.lexicon)
    assert shares["non_ascii_letters"] == 0 and shares["oov_words"] < 0.05
    french = ["Les enfants parlent près de la porte.", "Je ne sais pas ce que tu veux dire.",
              "Il fait très beau aujourd'hui, on va se promener?", "Nous avons mangé une pomme et du fromage."]
    with pytest.raises(MtlserError, match="do not look like English"):
        check_english(dict(enumerate(french)), g2p.lexicon)


def test_label_map_errors(tmp_path):
    with pytest.raises(MtlserError, match=r"merge targets \{'exc': 'happy'\} are not in emotions"):
        EmotionMap(["ang", "hap"], {"exc": "happy"}, "m.yaml")
    with pytest.raises(MtlserError, match=r"emotion labels \['hap'\] appear more than once"):
        EmotionMap(["hap", "ang", "hap"])
    (tmp_path / "emotions").write_text("ang\n\nhap\n")
    with pytest.raises(MtlserError, match=r"emotions:2: expected one label per line"):
        read_inventory(tmp_path)


# ---------------------------------------------------------------- a five-class corpus through stages 0-5

@pytest.mark.slow
def test_five_classes_through_stages_0_to_5(tmp_path):
    """The mini corpus with exc as a class of its own (not merged into hap), in an order of the map's own."""
    recipe = recipe_dir(tmp_path, (ROOT / "egs/mini/local/data.sh").read_text())
    order = ["neu", "exc", "sad", "hap", "ang"]
    (recipe / "local/five.yaml").write_text(f"emotions: [{', '.join(order)}]\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    r = subprocess.run(["./ser.sh", "--stage", "0", "--stop-stage", "5", "--train-config", "conf/train_mini.yaml",
                        "--local-data-opts", "--sessions 2 --utts-per-speaker 8 --emotion-map local/five.yaml",
                        "--train-opts", "--train.epochs 1", "--folds", "1"],
                       cwd=recipe, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    data, exp = recipe / "data", recipe / "exp/train_mini_loso"

    # Stage 0: the map's classes, in its order; exc kept as itself.
    dd = validate_data_dir(data / "all")
    assert dd.emotions == order and "exc" in dd["utt2emo"].values()
    # Stage 1: 6 x 5 tagged classes + blank; each utterance's tags are its label's position.
    tokens = read_token_list(data / "token_list/phncls/tokens.txt")
    assert len(tokens) == 31 and tokens[-1] == "Vs4"
    for utt, seq in read_table(data / "all/text_phncls", allow_empty_value=True).items():
        assert {tag_of(t) for t in seq.split()} <= {order.index(dd["utt2emo"][utt])}
    # Stage 2: every fold dir carries the inventory.
    for d in (data / "loso").glob("fold*/*"):
        if (d / "utt2emo").is_file():
            assert read_inventory(d) == order
    # Stage 3: the model's classes; stage 4: one probability per class.
    fold = exp / "fold01"
    assert yaml.safe_load((fold / "model.yaml").read_text())["emotions"] == order
    assert yaml.safe_load((fold / "config.yaml").read_text())["data"]["emotions"] == order
    probs = read_table(fold / "decode_test/emo_probs")
    assert all(len(p.split()) == 5 for p in probs.values())
    hyp = read_table(fold / "decode_test/utt2emo_hyp")
    assert all(h == order[max(range(5), key=lambda i: float(probs[u].split()[i]))] for u, h in hyp.items())
    # Stage 5: scores, report and plot over the five classes.
    import json

    result = json.loads((fold / "decode_test/result.json").read_text())
    assert result["emotions"] == order and len(result["confusion"]) == 5
    report = (exp / "RESULTS.md").read_text()
    assert "|recall neu|recall exc|recall sad|recall hap|recall ang|" in report
    assert "|ref \\ hyp|neu|exc|sad|hap|ang|" in report
    assert (exp / "confusion.png").read_bytes()[:4] == b"\x89PNG"
