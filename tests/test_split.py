"""Stage 2: fold splits never leak the test speaker; audio is converted to 16 kHz mono once."""

from __future__ import annotations

import soundfile as sf
import pytest

from mtlser.data.datadir import read_table, validate_data_dir, write_table
from mtlser.data.split import split
from mtlser.utils import MtlserError
from tests.conftest import write_wav


def speakers(d):
    return set(read_table(d / "utt2spk").values())


def test_loso_never_leaks_the_test_speaker(make_data_dir, tmp_path):
    data = make_data_dir(n_spk=4, n_utt=10)
    rows = split(data, tmp_path / "loso", "loso", "share", 0.2, seed=0)
    assert len(rows) == 4
    all_utts = set(read_table(data / "utt2spk"))
    for i, row in enumerate(rows, 1):
        fold = tmp_path / "loso" / f"fold{i:02d}"
        test_spk = speakers(fold / "test")
        assert test_spk == {row["test"]}
        assert not test_spk & speakers(fold / "train")
        assert not test_spk & speakers(fold / "valid")
        parts = [set(read_table(fold / s / "utt2spk")) for s in ("train", "valid", "test")]
        assert sum(map(len, parts)) == len(all_utts) and set().union(*parts) == all_utts
        for s in ("train", "valid", "test"):
            validate_data_dir(fold / s)
        # "share": every training speaker stays in training and gives ~20 % to valid
        assert speakers(fold / "valid") == speakers(fold / "train")
    assert (tmp_path / "loso" / "folds.tsv").read_text().startswith("fold\ttest_speakers")


def test_split_is_deterministic(make_data_dir, tmp_path):
    data = make_data_dir(n_spk=4, n_utt=10)
    split(data, tmp_path / "a", seed=7)
    split(data, tmp_path / "b", seed=7)
    for i in range(1, 5):
        assert (tmp_path / "a" / f"fold{i:02d}/valid/utt2spk").read_text() == \
               (tmp_path / "b" / f"fold{i:02d}/valid/utt2spk").read_text()


def test_session_mate_valid_and_loso_session(make_data_dir, tmp_path):
    data = make_data_dir(n_spk=6, n_utt=3)
    split(data, tmp_path / "mate", "loso", "session-mate")
    fold = tmp_path / "mate" / "fold01"  # test Ses01F -> valid is its session partner Ses01M
    assert speakers(fold / "test") == {"Ses01F"} and speakers(fold / "valid") == {"Ses01M"}
    assert speakers(fold / "train") == {"Ses02F", "Ses02M", "Ses03F", "Ses03M"}

    rows = split(data, tmp_path / "sess", "loso-session", "share", 0.34)
    assert [r["test"] for r in rows] == ["Ses01F,Ses01M", "Ses02F,Ses02M", "Ses03F,Ses03M"]
    assert not speakers(tmp_path / "sess/fold02/test") & speakers(tmp_path / "sess/fold02/train")
    with pytest.raises(MtlserError, match="Use --valid share"):
        split(data, tmp_path / "x", "loso-session", "session-mate")


def test_audio_not_16k_mono_is_converted_once(make_data_dir, tmp_path):
    data = make_data_dir(n_spk=2, n_utt=3)
    scp = read_table(data / "wav.scp")
    utts = sorted(scp)
    write_wav(tmp_path / "odd" / "a.wav", 1.0, sr=8000)
    write_wav(tmp_path / "odd" / "b.wav", 1.0, sr=16000, channels=2)
    scp[utts[0]] = str(tmp_path / "odd" / "a.wav")
    scp[utts[1]] = str(tmp_path / "odd" / "b.wav")
    write_table(data / "wav.scp", scp)
    split(data, tmp_path / "loso", audio_dir=tmp_path / "wav16k")
    converted = sorted((tmp_path / "wav16k").glob("*.wav"))
    assert [p.stem for p in converted] == utts[:2]
    for p in converted:
        info = sf.info(p)
        assert (info.samplerate, info.channels) == (16000, 1)
        assert abs(info.duration - 1.0) < 0.01
    fold_scp = {**read_table(tmp_path / "loso/fold01/test/wav.scp"), **read_table(tmp_path / "loso/fold02/test/wav.scp")}
    assert fold_scp[utts[0]] == str((tmp_path / "wav16k" / f"{utts[0]}.wav").resolve())
    # A rerun reuses the converted files.
    mtime = converted[0].stat().st_mtime_ns
    split(data, tmp_path / "loso", audio_dir=tmp_path / "wav16k")
    assert converted[0].stat().st_mtime_ns == mtime
