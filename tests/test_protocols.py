"""Stage 2 protocols: 10-fold leave-one-speaker-out and 5-fold leave-one-session-out, and the valid set."""

from __future__ import annotations

import pytest

from mtlser.data.datadir import read_table
from mtlser.data.split import split
from mtlser.utils import MtlserError


@pytest.fixture
def corpus(make_data_dir):
    """Ten speakers in five sessions (Ses01F ... Ses05M), 8 utterances each, 2 per emotion."""
    return make_data_dir(n_spk=10, n_utt=8, seconds=0.2)


def speakers(d):
    return set(read_table(d / "utt2spk").values())


def test_loso_ten_folds_with_valid_from_the_training_speakers(corpus, tmp_path):
    rows = split(corpus, tmp_path / "loso", "loso", "share", valid_share=0.5, seed=0)
    all_spk = sorted(speakers(corpus))
    assert len(rows) == 10
    for i, spk in enumerate(all_spk, 1):
        fold = tmp_path / f"loso/fold{i:02d}"
        assert speakers(fold / "test") == {spk}
        # Model selection never sees the test speaker; every other speaker keeps training.
        assert spk not in speakers(fold / "valid") | speakers(fold / "train")
        assert speakers(fold / "train") == set(all_spk) - {spk}
        assert speakers(fold / "valid") == set(all_spk) - {spk}
        # share 0.5, stratified by speaker and emotion: 1 of each speaker's 2 per emotion.
        assert len(read_table(fold / "valid/utt2emo")) == 9 * 4
        assert len(read_table(fold / "train/utt2emo")) == 9 * 4
        assert not set(read_table(fold / "valid/utt2emo")) & set(read_table(fold / "train/utt2emo"))
    tsv = (tmp_path / "loso/folds.tsv").read_text().splitlines()
    assert tsv[1].split("\t")[:2] == ["fold01", "Ses01F"]
    assert read_table(tmp_path / "loso/protocol")["protocol"] == "loso"


def test_loso_session_mate_valid(corpus, tmp_path):
    split(corpus, tmp_path / "loso", "loso", "session-mate")
    fold = tmp_path / "loso/fold05"  # Ses03F: its session partner Ses03M selects the model
    assert speakers(fold / "test") == {"Ses03F"}
    assert speakers(fold / "valid") == {"Ses03M"}
    assert len(speakers(fold / "train")) == 8 and not speakers(fold / "train") & {"Ses03F", "Ses03M"}


def test_loso_session_five_folds(corpus, tmp_path):
    rows = split(corpus, tmp_path / "los", "loso-session", "share", valid_share=0.5)
    assert [r["test"] for r in rows] == ["Ses01F,Ses01M", "Ses02F,Ses02M", "Ses03F,Ses03M", "Ses04F,Ses04M",
                                         "Ses05F,Ses05M"]
    fold = tmp_path / "los/fold02"
    assert speakers(fold / "test") == {"Ses02F", "Ses02M"}
    assert not (speakers(fold / "valid") | speakers(fold / "train")) & {"Ses02F", "Ses02M"}
    assert set(read_table(fold / "test/utt2session").values()) == {"Ses02"}
    # The session partner is already the test set: session-mate is refused with the way out.
    with pytest.raises(MtlserError, match="with loso-session that speaker is already in the test set. Use --valid share"):
        split(corpus, tmp_path / "x", "loso-session", "session-mate")


def test_valid_choice_is_deterministic_in_the_seed(corpus, tmp_path):
    split(corpus, tmp_path / "a", "loso", "share", valid_share=0.5, seed=3)
    split(corpus, tmp_path / "b", "loso", "share", valid_share=0.5, seed=3)
    split(corpus, tmp_path / "c", "loso", "share", valid_share=0.5, seed=4)
    valid = {k: (tmp_path / k / "fold01/valid/utt2emo").read_text() for k in "abc"}
    assert valid["a"] == valid["b"] != valid["c"]
