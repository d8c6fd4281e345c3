"""Bad input: each is a clear error naming the file (and line) and what to do, or a logged, counted
skip; never a crash deep inside torch and never a half-written data dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtlser.data.datadir import read_table, write_table
from mtlser.corpora.mini_corpus import generate

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, check_ok=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if check_ok is not None:
        assert (r.returncode == 0) == check_ok, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A one-session corpus in IEMOCAP's layout (synthesised, seconds)."""
    root = tmp_path_factory.mktemp("db") / "IEMOCAP_mini"
    generate(root, seed=3, n_sessions=1, utts_per_speaker=6)
    return root


@pytest.fixture
def db(corpus, tmp_path):
    """A private copy the test may break."""
    import shutil

    dst = tmp_path / "db"
    shutil.copytree(corpus, dst)
    return dst


def test_missing_wav_is_an_error_or_a_counted_skip(db, tmp_path):
    wav = sorted((db / "Session1/sentences/wav").rglob("*.wav"))[0]
    wav.unlink()
    out = tmp_path / "all"
    r = cli("mtlser.corpora", "iemocap", "--db-root", str(db), "--out", str(out), "--no-check-counts", check_ok=False)
    assert str(wav) in r.stderr and "--skip-missing-audio" in r.stderr
    assert not out.exists(), "no data dir may be left behind"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    r = cli("mtlser.corpora", "iemocap", "--db-root", str(db), "--out", str(out), "--no-check-counts",
            "--skip-missing-audio", check_ok=True)
    assert "1 evaluated turns of the 4 classes have no audio" in r.stderr
    assert wav.stem not in read_table(out / "wav.scp")


def test_unknown_emotion_code_names_file_and_line(db, tmp_path):
    emo_file = sorted((db / "Session1/dialog/EmoEvaluation").glob("*.txt"))[0]
    lines = emo_file.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("["))
    parts = lines[i].split("\t")
    parts[2] = "happyish"
    lines[i] = "\t".join(parts)
    emo_file.write_text("\n".join(lines) + "\n")
    r = cli("mtlser.corpora", "iemocap", "--db-root", str(db), "--out", str(tmp_path / "all"), "--no-check-counts",
            check_ok=False)
    assert f"{emo_file}:{i + 1}: unknown emotion code 'happyish'" in r.stderr


def test_unknown_label_and_duplicate_ids_in_a_data_dir(make_data_dir):
    data = make_data_dir(n_spk=2, n_utt=2)
    emo = read_table(data / "utt2emo")
    first = sorted(emo)[0]
    emo[first] = "frustrated"
    write_table(data / "utt2emo", emo)
    r = cli("mtlser.data.datadir", "validate", str(data), check_ok=False)
    assert f"{data / 'utt2emo'}:1: utterance '{first}' has label 'frustrated'" in r.stderr
    assert "Traceback" not in r.stderr

    emo[first] = "ang"
    write_table(data / "utt2emo", emo)
    scp = (data / "wav.scp").read_text().splitlines()
    (data / "wav.scp").write_text("\n".join([scp[0], scp[0]] + scp[1:]) + "\n")
    r = cli("mtlser.data.datadir", "validate", str(data), check_ok=False)
    assert f"{data / 'wav.scp'}:2: duplicate key '{first}'" in r.stderr


def _fold_with_targets(make_data_dir, tmp_path, text_for):
    from mtlser.data.split import split
    from mtlser.text.phone_classes import PhoneClassMap, phncls_token_list
    from mtlser.text.tokenize import write_token_list

    data = make_data_dir(n_spk=3, n_utt=4, seconds=0.6)
    write_token_list(tmp_path / "tokens", phncls_token_list(PhoneClassMap.load().classes, 4))
    emo = read_table(data / "utt2emo")
    write_table(data / "text_phncls", {u: text_for(i, u, emo[u]) for i, u in enumerate(sorted(emo))})
    split(data, tmp_path / "folds", valid_share=0.25)
    return tmp_path / "folds", tmp_path / "tokens"


def test_empty_transcripts_and_too_short_audio_are_counted_ctc_skips(make_data_dir, tiny_config, tmp_path):
    idx = {"ang": 0, "hap": 1, "sad": 2, "neu": 3}

    def text(i, utt, emo):
        if i % 4 == 0:
            return ""  # a transcript of non-verbal tags only
        if i % 4 == 1:
            return " ".join(f"{c}{idx[emo]}" for c in ["S", "V"] * 30)  # 60 tokens for ~30 frames
        return f"S{idx[emo]} Vs{idx[emo]}"

    folds, tokens = _fold_with_targets(make_data_dir, tmp_path, text)
    r = cli("mtlser.train", "--config", str(tiny_config(train={"epochs": 1})), "--folds-dir", str(folds),
            "--fold", "1", "--token-list", str(tokens), "--exp-dir", str(tmp_path / "exp"), check_ok=True)
    import re

    m = re.search(r"(\d+) ctc-skipped", r.stderr)
    assert m and int(m.group(1)) >= 4, r.stderr[-2000:]
    assert "nan" not in r.stderr.split("epoch 1:")[1].split("\n")[0].lower()


def test_audio_shorter_than_one_frame_is_skipped(make_data_dir, tiny_config, tmp_path):
    from tests.conftest import write_wav

    folds, tokens = _fold_with_targets(make_data_dir, tmp_path, lambda i, u, e: "")
    train = folds / "fold01" / "train"
    scp = read_table(train / "wav.scp")
    utt = sorted(scp)[0]
    scp[utt] = str(write_wav(tmp_path / "tiny.wav", 0.005))
    write_table(train / "wav.scp", scp)
    dur = read_table(train / "utt2dur")
    dur[utt] = "0.0050"
    write_table(train / "utt2dur", dur)
    r = cli("mtlser.train", "--config", str(tiny_config(train={"epochs": 1})), "--folds-dir", str(folds),
            "--fold", "1", "--token-list", str(tokens), "--exp-dir", str(tmp_path / "exp"), check_ok=True)
    assert "skipped 1 utterances shorter than" in r.stderr and utt in r.stderr


def test_token_missing_from_the_token_list(make_data_dir, tiny_config, tmp_path):
    folds, tokens = _fold_with_targets(make_data_dir, tmp_path, lambda i, u, e: "S0 X9")
    r = cli("mtlser.train", "--config", str(tiny_config()), "--folds-dir", str(folds), "--fold", "1",
            "--token-list", str(tokens), "--exp-dir", str(tmp_path / "exp"), check_ok=False)
    assert "text_phncls" in r.stderr and "token 'X9' that is not in the token list" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_and_corrupt_checkpoint(make_data_dir, tiny_config, tmp_path):
    folds, tokens = _fold_with_targets(make_data_dir, tmp_path, lambda i, u, e: "")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 0.1\n")
    r = cli("mtlser.train", "--config", str(bad), "--folds-dir", str(folds), "--fold", "1",
            "--token-list", str(tokens), "--exp-dir", str(tmp_path / "exp"), check_ok=False)
    assert f"{bad}: unknown key 'optim.learning_rate'; expected one of ['optim.betas', " in r.stderr

    exp = tmp_path / "exp2"
    (exp / "fold01").mkdir(parents=True)
    (exp / "fold01" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    r = cli("mtlser.train", "--config", str(tiny_config()), "--folds-dir", str(folds), "--fold", "1",
            "--token-list", str(tokens), "--exp-dir", str(exp), check_ok=False)
    assert "checkpoint.pt: cannot read the checkpoint" in r.stderr and "delete it" in r.stderr


def test_missing_pretrained_backbone_is_not_a_silent_random_init(make_data_dir, tiny_config, tmp_path):
    folds, tokens = _fold_with_targets(make_data_dir, tmp_path, lambda i, u, e: "")
    missing = tmp_path / "wav2vec2-base"
    r = cli("mtlser.train", "--config", str(tiny_config()), "--folds-dir", str(folds), "--fold", "1",
            "--token-list", str(tokens), "--exp-dir", str(tmp_path / "exp"), "--backbone.init", str(missing),
            check_ok=False)
    assert str(missing) in r.stderr and "not found" in r.stderr
    assert "Traceback" not in r.stderr
