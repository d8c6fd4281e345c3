"""Stage 0 for RAVDESS speech: the release -> ``data/all``.

RAVDESS (Livingstone & Russo, PLoS ONE 2018; zenodo.org/record/1188976) names
every file with seven two-digit codes, ``MM-VV-EE-II-SS-RR-AA``:

    MM modality       01 audio-video, 02 video only, 03 audio only
    VV vocal channel  01 speech, 02 song
    EE emotion        01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust, 08 surprised
    II intensity      01 normal, 02 strong (none for neutral)
    SS statement      01 "Kids are talking by the door", 02 "Dogs are sitting by the door"
    RR repetition     01, 02
    AA actor          01 ... 24; odd numbers are male, even female

The speech audio (Audio_Speech_Actors_01-24.zip) unpacks to
``Actor_AA/03-01-EE-II-SS-RR-AA.wav``: 24 actors x 60 clips = 1,440, 48 kHz 16-bit.
Copies differ in where that sits (Zenodo's zips, redistributions that hold the tree
twice), so the clips are found anywhere under ``--db-root``. Only audio-only speech
is used: song files (vocal channel 02) and video files (modality 01/02, .mp4) are
skipped and listed, as are hidden files (.DS_Store, ._<name>) and names of another
form. A clip found twice (a doubled tree) is used once if both copies have
the same size, otherwise it is an error naming both. Stage 2 converts the 48 kHz
audio to 16 kHz mono once (data/wav16k/), as for any corpus.

Emotion codes are read as neu calm hap sad ang fea dis sur; the recipe's label map
(conf/emotions/ravdess.yaml: all 8; ravdess_calm_merged.yaml: calm counted as neu)
says which are kept, merged, in which order. The statement's text is the transcript
(the CTC targets come from it).

The full speech release gives 1,440 clips: 24 actors x 60, neutral 96 and 192 of
each other emotion. A copy that gives other counts gets a loud warning naming each
count that differs.

Speaker = ``Actor_AA`` (the release's folder name); utterance id =
``Actor_AA_<file name>``, so ids sort speaker-first. spk2gender is written from the
actor number (odd m, even f), for gender-balanced folds.

Writes the stage-0 data dir (wav.scp text utt2spk spk2utt utt2emo utt2dur emotions
spk2gender) and REPORT_DIR/counts.json and REPORT_DIR/skipped (:mod:`mtlser.corpora.prep`).

Usage:
    python -m mtlser.corpora ravdess --db-root /path/to/RAVDESS --out data/all \\
        [--emotion-map conf/emotions/ravdess.yaml] [--report-dir data/local/ravdess_prep] [--no-check-counts]
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

from mtlser.corpora.prep import Corpus, Found, Utterance, compare_totals, is_hidden, relpath, require_code
from mtlser.data.emotions import EmotionMap
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)

AUDIO_ONLY = "03"
SPEECH = "01"
#: Emotion code -> the raw label the label map sees.
EMOTION_CODES = {"01": "neu", "02": "calm", "03": "hap", "04": "sad", "05": "ang", "06": "fea", "07": "dis",
                 "08": "sur"}
#: Statement code -> its text (the transcript).
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}

#: The full speech release (raw labels, before any label map).
EXPECTED_TOTAL = 1440
EXPECTED_ACTORS = 24
EXPECTED_PER_ACTOR = 60
EXPECTED_EMOTIONS = {"neu": 96, "calm": 192, "hap": 192, "sad": 192, "ang": 192, "fea": 192, "dis": 192, "sur": 192}

_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.(wav|mp4)$", re.IGNORECASE)


def speaker_of(actor: str) -> str:
    return f"Actor_{actor}"


def gender_of(actor: str) -> str:
    """Odd actor numbers are male, even female (the release's convention)."""
    return "m" if int(actor) % 2 == 1 else "f"


def find_clips(db_root: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """{file name: path} of the speech clips anywhere under the root, and (reason, path) of every other file."""
    clips: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(db_root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = relpath(path, db_root)
            m = _NAME.match(name)
            if is_hidden(name):
                reason = "hidden"
            elif m is None:
                reason = "not_a_clip"
            elif m.group(8).lower() == "mp4" or m.group(1) != AUDIO_ONLY:
                reason = "video"
            elif m.group(2) != SPEECH:
                reason = "song"
            else:
                key = name[:-4] + ".wav"  # one key per clip whatever the extension's case
                if key in clips:
                    first = clips[key]
                    if first.stat().st_size != path.stat().st_size:
                        raise MtlserError(f"{path}: clip {key} is also at {first} with another size; keep the "
                                          "release's copy and remove the other")
                    skipped.append(("duplicate", rel))
                    continue
                clips[key] = path
                continue
            skipped.append((reason, rel))
    return clips, skipped


def scan(db_root: Path) -> Found:
    """Every speech clip under the root (once), each other file listed with its reason."""
    if not db_root.is_dir():
        raise MtlserError(f"{db_root}: RAVDESS root not found; pass --db-root /path/to/RAVDESS (any folder above "
                          "the Actor_XX/ folders of the speech audio)")
    clips, skipped = find_clips(db_root)
    if not clips:
        why = Counter(reason for reason, _ in skipped)
        raise MtlserError(f"{db_root}: no RAVDESS speech clip (03-01-EE-II-SS-RR-AA.wav) under it "
                          f"(skipped: {dict(why) or 'no files at all'}); unpack Audio_Speech_Actors_01-24.zip there")
    utterances: list[Utterance] = []
    raw: Counter[str] = Counter()
    per_actor: Counter[str] = Counter()
    for name, path in sorted(clips.items()):
        _, _, emotion, intensity, statement, repetition, actor, _ = _NAME.match(name).groups()
        require_code(path, "emotion code", emotion, EMOTION_CODES, "RAVDESS")
        require_code(path, "statement code", statement, STATEMENTS, "RAVDESS", shown="01 and 02")
        raw[EMOTION_CODES[emotion]] += 1
        per_actor[actor] += 1
        utterances.append(Utterance(f"{speaker_of(actor)}_{name[:-4]}", path, STATEMENTS[statement],
                                    speaker_of(actor), EMOTION_CODES[emotion], relpath(path, db_root)))
    return Found(db_root, utterances, skipped, genders={speaker_of(a): gender_of(a) for a in per_actor},
                 genders_from="the actor numbers", facts={
                     "clips": len(clips), "actors": len(per_actor),
                     "raw_emotions": {e: raw[e] for e in EMOTION_CODES.values() if raw[e]},
                     "clips_per_actor": {speaker_of(a): n for a, n in sorted(per_actor.items())}})


def release_problems(report: dict, emotion_map: EmotionMap) -> list[str]:
    """The speech clips found against the full release (1,440): totals, per emotion, per actor."""
    problems = compare_totals(report, EXPECTED_TOTAL, EXPECTED_ACTORS, EXPECTED_EMOTIONS, clips_name="speech clips")
    return problems + [f"{spk}: {n} clips, the release has {EXPECTED_PER_ACTOR}"
                       for spk, n in report["clips_per_actor"].items() if n != EXPECTED_PER_ACTOR]


CORPUS = Corpus(
    name="RAVDESS", labels=tuple(EMOTION_CODES.values()), scan=scan, release_problems=release_problems,
    db_root_help="any folder above the Actor_XX/ folders of the speech audio", release_total="1,440 speech clips",
    items="speech clips", module="ravdess", clips_start_with_speaker=True,
)
