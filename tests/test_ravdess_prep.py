"""Stage 0 for RAVDESS on a small copy in the release layout, with its traps (tests/corpus_layouts.py),
and stage 2's conversion of its 48 kHz audio."""

from __future__ import annotations

import logging

import pytest
import soundfile as sf

from mtlser.corpora import ravdess
from mtlser.corpora.prep import check_release_counts, prepare
from mtlser.data.datadir import read_table, validate_data_dir
from mtlser.data.emotions import EmotionMap, load_emotion_map, read_inventory
from mtlser.data.split import split
from mtlser.utils import MtlserError
from tests.conftest import ROOT
from tests.corpus_layouts import make_ravdess, ravdess_names

MAPS = ROOT / "conf" / "emotions"


def test_prep_takes_speech_clips_once_and_leaves_song_video_and_hidden_files(tmp_path, caplog):
    db = make_ravdess(tmp_path / "RAVDESS", actors=2, clips_per_actor=8, kaggle_twin=True)
    with caplog.at_level(logging.WARNING):
        report = prepare(ravdess.CORPUS, db, tmp_path / "data" / "all", load_emotion_map(MAPS / "ravdess.yaml"))
    out = tmp_path / "data" / "all"
    dd = validate_data_dir(out)

    speech = {f"Actor_{a:02d}_{n[:-4]}" for a in (1, 2) for n in ravdess_names(a, 8)}
    assert set(dd.utts) == speech  # each clip once, although the doubled tree holds it twice
    assert all("/Audio_Speech_Actors_01-24/" in p for p in dd["wav.scp"].values())
    skipped = [line.split(" ", 1) for line in (tmp_path / "data/local/ravdess_prep/skipped").read_text().splitlines()]
    reasons = {}
    for reason, path in skipped:
        reasons.setdefault(reason, []).append(path)
    assert {k: len(v) for k, v in reasons.items()} == {"duplicate": 16, "hidden": 4, "song": 4, "video": 8}
    assert all(p.split("/")[-1].startswith("03-02-") for p in reasons["song"])
    assert all(p.endswith(".mp4") and p.split("/")[-1][:2] in ("01", "02") for p in reasons["video"])
    assert report["skipped"] == {"duplicate": 16, "hidden": 4, "song": 4, "video": 8}

    for utt in dd.utts:
        spk, name = utt[:8], utt[9:]
        modality, channel, emotion, _, statement, _, actor = name.split("-")
        assert (modality, channel) == ("03", "01") and spk == f"Actor_{actor}" == dd["utt2spk"][utt]
        assert dd["utt2emo"][utt] == ravdess.EMOTION_CODES[emotion]
        assert dd["text"][utt] == {"01": "Kids are talking by the door",
                                   "02": "Dogs are sitting by the door"}[statement]
    speakers_in_order = [dd["utt2spk"][u] for u in dd.utts]
    assert speakers_in_order == sorted(speakers_in_order)  # ids sort speaker-first
    assert read_table(out / "spk2gender") == {"Actor_01": "m", "Actor_02": "f"}  # odd male, even female
    assert read_inventory(out) == ["ang", "hap", "sad", "neu", "calm", "fea", "dis", "sur"]
    assert set(dd["utt2emo"].values()) == set(read_inventory(out))
    assert report["sample_rates"] == {"48000 Hz x1": 15, "48000 Hz x2": 1}
    assert "speech clips: 16, the release has 1440" in caplog.text


def test_calm_merged_into_neutral_is_a_label_map(tmp_path):
    db = make_ravdess(tmp_path / "db", actors=2, clips_per_actor=8, traps=False)
    prepare(ravdess.CORPUS, db, tmp_path / "eight", load_emotion_map(MAPS / "ravdess.yaml"), check_counts=False)
    prepare(ravdess.CORPUS, db, tmp_path / "seven", load_emotion_map(MAPS / "ravdess_calm_merged.yaml"), check_counts=False)
    eight, seven = read_table(tmp_path / "eight" / "utt2emo"), read_table(tmp_path / "seven" / "utt2emo")
    assert set(eight) == set(seven)
    assert read_inventory(tmp_path / "seven") == ["ang", "hap", "sad", "neu", "fea", "dis", "sur"]
    for utt, emo in eight.items():
        assert seven[utt] == ("neu" if emo == "calm" else emo)
    assert list(seven.values()).count("neu") == 4 and "calm" not in seven.values()


def test_48k_audio_is_converted_once_by_stage_2_into_gender_balanced_speaker_folds(tmp_path):
    db = make_ravdess(tmp_path / "db", actors=4, clips_per_actor=8, duration_scale=0.2)
    prepare(ravdess.CORPUS, db, tmp_path / "data" / "all", load_emotion_map(MAPS / "ravdess.yaml"), check_counts=False)
    assert {sf.info(p).samplerate for p in read_table(tmp_path / "data/all/wav.scp").values()} == {48000}
    rows = split(tmp_path / "data" / "all", tmp_path / "data" / "kfold2", "kfold2", valid_share=0.2)

    assert [r["test"] for r in rows] == ["Actor_01,Actor_02", "Actor_03,Actor_04"]  # one woman, one man each
    converted = sorted((tmp_path / "data" / "wav16k").glob("*.wav"))
    assert len(converted) == len(read_table(tmp_path / "data/all/utt2spk"))
    for p in converted:
        info = sf.info(p)
        assert (info.samplerate, info.channels) == (16000, 1)
    for fold in ("fold01", "fold02"):
        for part in ("train", "valid", "test"):
            for path in read_table(tmp_path / "data/kfold2" / fold / part / "wav.scp").values():
                assert path.startswith(str((tmp_path / "data" / "wav16k").resolve()))
        test_spk = set(read_table(tmp_path / "data/kfold2" / fold / "test/utt2spk").values())
        assert not test_spk & set(read_table(tmp_path / "data/kfold2" / fold / "train/utt2spk").values())
        assert read_inventory(tmp_path / "data/kfold2" / fold / "test") == read_inventory(tmp_path / "data/all")
    mtime = converted[0].stat().st_mtime_ns
    split(tmp_path / "data" / "all", tmp_path / "data" / "kfold2", "kfold2", valid_share=0.2)
    assert converted[0].stat().st_mtime_ns == mtime  # converted once


def test_bad_copies_fail_with_the_file_named(tmp_path, caplog):
    emotion_map = load_emotion_map(MAPS / "ravdess.yaml")
    db = make_ravdess(tmp_path / "db", actors=1, clips_per_actor=2, traps=False, kaggle_twin=True)
    twin = db / "audio_speech_actors_01-24" / "Actor_01" / ravdess_names(1, 1)[0]
    twin.write_bytes(twin.read_bytes() + b"\x00\x00")
    with pytest.raises(MtlserError, match=r"03-01-01-01-01-01-01.wav: clip .* is also at .* with another size"):
        prepare(ravdess.CORPUS, db, tmp_path / "all", emotion_map)
    twin.unlink()

    bad = db / "Audio_Speech_Actors_01-24" / "Actor_01" / "03-01-09-01-01-01-01.wav"
    bad.write_bytes(b"RIFF")
    with pytest.raises(MtlserError, match=r"03-01-09-01-01-01-01.wav: unknown emotion code '09'"):
        prepare(ravdess.CORPUS, db, tmp_path / "all", emotion_map)
    bad.unlink()

    (tmp_path / "songs" / "Actor_01").mkdir(parents=True)
    (tmp_path / "songs" / "Actor_01" / "03-02-01-01-01-01-01.wav").write_bytes(b"RIFF")
    with pytest.raises(MtlserError, match=r"no RAVDESS speech clip .*'song': 1"):
        prepare(ravdess.CORPUS, tmp_path / "songs", tmp_path / "all", emotion_map)


def test_release_counts_are_the_published_ones_and_differences_are_named(tmp_path, caplog):
    assert sum(ravdess.EXPECTED_EMOTIONS.values()) == ravdess.EXPECTED_TOTAL == 24 * ravdess.EXPECTED_PER_ACTOR
    assert len(ravdess_names(1, 60)) == len(set(ravdess_names(1, 60))) == 60  # the 60 clips of an actor
    per_actor = {f"Actor_{a:02d}": 60 for a in range(1, 25)}
    full = {"clips": 1440, "actors": 24, "raw_emotions": dict(ravdess.EXPECTED_EMOTIONS), "clips_per_actor": per_actor}
    assert check_release_counts(ravdess.CORPUS, full, tmp_path)
    short = dict(full, clips=1439, raw_emotions={**full["raw_emotions"], "sur": 191},
                 clips_per_actor={**per_actor, "Actor_18": 59})
    with caplog.at_level(logging.WARNING):
        assert not check_release_counts(ravdess.CORPUS, short, tmp_path)
    for line in ("speech clips: 1439, the release has 1440", "emotion sur: 191, the release has 192",
                 "Actor_18: 59 clips, the release has 60"):
        assert line in caplog.text
