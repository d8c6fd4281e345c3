"""Stage 0 for CREMA-D on a small copy in the release layout, with its traps (tests/corpus_layouts.py)."""

from __future__ import annotations

import json
import logging

import pytest

from mtlser.corpora import crema_d
from mtlser.corpora.__main__ import main as corpora_main
from mtlser.corpora.prep import check_release_counts, prepare
from mtlser.data.datadir import read_table, validate_data_dir
from mtlser.data.emotions import EmotionMap, load_emotion_map, read_inventory
from mtlser.utils import MtlserError, run_main
from tests.conftest import ROOT
from tests.corpus_layouts import make_crema_d

CREMA_D_MAP = ROOT / "conf" / "emotions" / "crema_d.yaml"


def test_prep_reads_audiowav_only_with_texts_speakers_and_labels(tmp_path, caplog):
    db = make_crema_d(tmp_path / "CREMA-D", actors=3, clips_per_actor=8)
    clips = sorted(p.stem for p in (db / "AudioWAV").glob("[0-9]*.wav"))
    assert len(clips) == 24 and len(list((db / "AudioMP3").glob("*.mp3"))) == 24
    with caplog.at_level(logging.WARNING):
        report = prepare(crema_d.CORPUS, db, tmp_path / "data" / "all", load_emotion_map(CREMA_D_MAP))
    out = tmp_path / "data" / "all"
    dd = validate_data_dir(out)

    # Every WAV clip once, nothing from AudioMP3/, no hidden or stray file.
    assert dd.utts == clips
    assert all(p.startswith(str(db / "AudioWAV") + "/") and p.endswith(".wav") for p in dd["wav.scp"].values())
    skipped = (tmp_path / "data/local/crema_d_prep/skipped").read_text().splitlines()
    assert sorted(skipped) == ["hidden AudioWAV/.DS_Store", "hidden AudioWAV/._1001_IEO_ANG_LO.wav",
                               "not_a_clip AudioWAV/notes.txt"]

    # The transcript is the sentence of the code; the speaker is the actor, a prefix of the id.
    for utt in dd.utts:
        actor, sentence, emotion, _ = utt.split("_")
        assert dd["text"][utt] == crema_d.SENTENCES[sentence]
        assert dd["utt2spk"][utt] == actor and utt.startswith(actor + "_")
        assert dd["utt2emo"][utt] == emotion.lower()
    assert dd["text"]["1001_IEO_ANG_LO"] == "It's eleven o'clock"
    # Ids sort speaker-first: each speaker's utterances are one block of the sorted ids.
    speakers_in_order = [dd["utt2spk"][u] for u in dd.utts]
    assert speakers_in_order == sorted(speakers_in_order)
    assert read_table(out / "spk2gender") == {"1001": "m", "1002": "f", "1003": "m"}

    # The inventory is the label map's list, in its order; every clip's label is in it.
    assert read_inventory(out) == ["ang", "hap", "sad", "neu", "dis", "fea"]
    assert set(dd["utt2emo"].values()) == set(read_inventory(out))
    assert report["clips"] == 24 and report["total"] == 24 and report["actors"] == 3
    assert json.loads((tmp_path / "data/local/crema_d_prep/counts.json").read_text())["skipped"] == \
        {"hidden": 2, "not_a_clip": 1}
    # A partial copy is told which counts differ from the release.
    assert "clips: 24, the release has 7442" in caplog.text and "actors: 3, the release has 91" in caplog.text


def test_release_counts_are_the_published_ones_and_differences_are_named(tmp_path, caplog):
    assert sum(crema_d.EXPECTED_EMOTIONS.values()) == crema_d.EXPECTED_TOTAL == 7442
    assert sum(crema_d.EXPECTED_SENTENCES.values()) == 7442
    assert list(crema_d.EXPECTED_SENTENCES) == list(crema_d.SENTENCES)
    full = {"clips": 7442, "actors": 91, "raw_emotions": dict(crema_d.EXPECTED_EMOTIONS),
            "sentences": dict(crema_d.EXPECTED_SENTENCES)}
    with caplog.at_level(logging.INFO):
        assert check_release_counts(crema_d.CORPUS, full, tmp_path)
    assert "counts match the full CREMA-D release" in caplog.text
    caplog.clear()
    short = dict(full, clips=7441, raw_emotions={**full["raw_emotions"], "NEU": 1086},
                 sentences={**full["sentences"], "WSI": 539})
    with caplog.at_level(logging.WARNING):
        assert not check_release_counts(crema_d.CORPUS, short, tmp_path)
    for line in ("clips: 7441, the release has 7442", "emotion NEU: 1086, the release has 1087",
                 "sentence WSI: 539, the release has 540"):
        assert line in caplog.text
    assert "actors:" not in caplog.text and "emotion ANG" not in caplog.text


def test_a_label_map_drops_and_merges_as_declared(tmp_path):
    db = make_crema_d(tmp_path / "db", actors=2, clips_per_actor=12)
    four = EmotionMap(["neu", "ang", "sad", "hap"], source="four.yaml")
    prepare(crema_d.CORPUS, db, tmp_path / "all", four, check_counts=False)
    emo = read_table(tmp_path / "all" / "utt2emo")
    assert set(emo.values()) == {"neu", "ang", "sad", "hap"} and len(emo) == 16
    assert read_inventory(tmp_path / "all") == ["neu", "ang", "sad", "hap"]
    skipped = (tmp_path / "local/crema_d_prep/skipped").read_text()
    assert skipped.count("label:dis ") == 4 and skipped.count("label:fea ") == 4

    merged = EmotionMap(["ang", "hap", "sad", "neu"], {"dis": "ang", "fea": "sad"}, source="merged.yaml")
    prepare(crema_d.CORPUS, db, tmp_path / "merged", merged, check_counts=False)
    emo = read_table(tmp_path / "merged" / "utt2emo")
    assert len(emo) == 24 and emo["1001_IEO_DIS_LO"] == "ang" and emo["1001_IEO_FEA_LO"] == "sad"


def test_bad_copies_fail_with_the_file_named(tmp_path):
    emotion_map = load_emotion_map(CREMA_D_MAP)
    db = make_crema_d(tmp_path / "db", actors=1, clips_per_actor=2)
    (db / "AudioWAV" / "1001_XYZ_ANG_XX.wav").write_bytes(b"RIFF")
    with pytest.raises(MtlserError, match=r"1001_XYZ_ANG_XX.wav: unknown sentence code 'XYZ'"):
        prepare(crema_d.CORPUS, db, tmp_path / "all", emotion_map)
    (db / "AudioWAV" / "1001_XYZ_ANG_XX.wav").unlink()

    # A clone without git-lfs leaves pointer files where the audio should be.
    (db / "AudioWAV" / "1001_IEO_ANG_LO.wav").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 51244\n")
    with pytest.raises(MtlserError, match=r"1001_IEO_ANG_LO.wav: a Git LFS pointer.*git lfs pull"):
        prepare(crema_d.CORPUS, db, tmp_path / "all", emotion_map)
    assert not (tmp_path / "all").exists()  # nothing half-written

    with pytest.raises(MtlserError, match=r"calm.yaml: calm are not CREMA-D labels"):
        prepare(crema_d.CORPUS, db, tmp_path / "all", EmotionMap(["ang", "calm"], source="calm.yaml"))

    (tmp_path / "empty").mkdir()
    with pytest.raises(MtlserError, match="no AudioWAV/ folder"):
        prepare(crema_d.CORPUS, tmp_path / "empty", tmp_path / "all", emotion_map)

    rc = run_main(corpora_main, ["crema_d", "--db-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "all"),
                                 "--emotion-map", str(CREMA_D_MAP)])
    assert rc == 1


def test_cli_writes_the_data_dir(tmp_path):
    db = make_crema_d(tmp_path / "db", actors=2, clips_per_actor=6, traps=False)
    rc = run_main(corpora_main, ["crema_d", "--db-root", str(db / "AudioWAV"), "--out", str(tmp_path / "all"),
                                 "--emotion-map", str(CREMA_D_MAP), "--no-check-counts"])
    assert rc == 0
    assert len(read_table(tmp_path / "all" / "utt2spk")) == 12
    # Given AudioWAV/ itself, the demographics file above it is not seen: no genders, said in the log.
    assert not (tmp_path / "all" / "spk2gender").exists()
