"""--protocol cross-corpus: train and select on some corpora of a combined dir, test on the whole of another."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mtlser.data.combine import main as combine
from mtlser.data.datadir import read_table
from mtlser.data.fold_names import PROTOCOL_TABLE
from mtlser.data.split import split
from mtlser.utils import MtlserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def combined(make_data_dir, tmp_path):
    dirs = [make_data_dir(name, n_spk=2, n_utt=4) for name in ("a", "b", "c")]
    out = tmp_path / "combined"
    combine([str(out), f"crema_d={dirs[0]}", f"ravdess={dirs[1]}", f"mini={dirs[2]}"])
    return out


def test_cross_corpus_tests_on_the_whole_other_corpus(combined, tmp_path):
    out = tmp_path / "cross"
    rows = split(combined, out, "cross-corpus", test_corpus="mini", train_corpora=["crema_d", "ravdess"])
    assert len(rows) == 1
    corpus = read_table(combined / "utt2corpus")
    fold = out / "fold01"
    test = set(read_table(fold / "test/utt2spk"))
    assert test == {u for u, c in corpus.items() if c == "mini"}
    side = set(read_table(fold / "train/utt2spk")) | set(read_table(fold / "valid/utt2spk"))
    assert side == {u for u, c in corpus.items() if c in ("crema_d", "ravdess")}
    assert {corpus[u] for u in read_table(fold / "valid/utt2spk")} == {"crema_d", "ravdess"}
    assert set(read_table(out / "final/train/utt2spk")) == side  # the test corpus is never trained on
    protocol = read_table(out / PROTOCOL_TABLE)
    assert protocol["test_corpus"] == "mini" and protocol["train_corpora"] == "crema_d,ravdess"


def test_cross_corpus_default_trains_on_every_other_corpus_and_checks_names(combined, tmp_path):
    split(combined, tmp_path / "x", "cross-corpus", test_corpus="ravdess")
    assert read_table(tmp_path / "x" / PROTOCOL_TABLE)["train_corpora"] == "crema_d,mini"
    with pytest.raises(MtlserError, match="unknown: iemocap"):
        split(combined, tmp_path / "y", "cross-corpus", test_corpus="iemocap")
    with pytest.raises(MtlserError, match="must be among them and apart"):
        split(combined, tmp_path / "y", "cross-corpus", test_corpus="mini", train_corpora=["mini", "ravdess"])
    with pytest.raises(MtlserError, match="go together"):
        split(combined, tmp_path / "y", "loso", test_corpus="mini")


@pytest.mark.slow
def test_cross_corpus_recipe_stages_0_to_5(tmp_path):
    """egs/cross_corpus: train on small CREMA-D and RAVDESS copies, test on the mini corpus, 1 epoch."""
    from tests.corpus_layouts import make_crema_d, make_ravdess
    from tests.test_clip_recipes import ser

    crema = make_crema_d(tmp_path / "CREMA-D", actors=2, clips_per_actor=8, duration_scale=0.2)
    ravdess = make_ravdess(tmp_path / "RAVDESS", actors=2, clips_per_actor=8, duration_scale=0.2)
    recipe = tmp_path / "egs" / "cross_corpus"
    (recipe / "local").mkdir(parents=True)
    src = ROOT / "egs" / "cross_corpus"
    for name in ("path.sh", "cmd.sh", "utils", "conf", "ser.sh"):
        (recipe / name).symlink_to((src / name).resolve())
    (recipe / "local" / "score.sh").symlink_to((src / "local" / "score.sh").resolve())
    shutil.copy(src / "local" / "data.sh", recipe / "local" / "data.sh")
    r = ser(recipe, "--stage", "0", "--stop-stage", "5", "--protocol", "cross-corpus",
            "--train-corpora", "crema_d ravdess", "--test-corpus", "mini", "--train-config", "conf/train_mini.yaml",
            "--train-opts", "--train.epochs 1", "--valid-share", "0.25", "--nj", "1", "--ngpu", "0",
            "--local-data-opts", f"--crema-d {crema} --ravdess {ravdess} --mini {tmp_path / 'mini'} "
                                 "--check-counts false")
    assert r.returncode == 0, r.stderr[-3000:]
    data = recipe / "data"
    assert (data / "all" / "emotions").read_text().split() == ["ang", "hap", "sad", "neu"]
    corpus = read_table(data / "all" / "utt2corpus")
    folds = data / "cross-corpus"
    test = read_table(folds / "fold01" / "test" / "utt2spk")
    assert set(test) == {u for u, c in corpus.items() if c == "mini"}
    assert {corpus[u] for u in read_table(folds / "fold01" / "train" / "utt2spk")} == {"crema_d", "ravdess"}
    results = list((recipe / "exp").glob("*/RESULTS.md"))
    assert len(results) == 1
    assert "trained and selected on `crema_d,ravdess`, tested on the whole of `mini`" in results[0].read_text()
