"""--protocol cross-corpus: train and select on some corpora of a combined dir, test on the whole of another."""

from __future__ import annotations

import pytest

from mtlser.data.combine import main as combine
from mtlser.data.datadir import read_table
from mtlser.data.fold_names import PROTOCOL_TABLE
from mtlser.data.split import split
from mtlser.utils import MtlserError


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
