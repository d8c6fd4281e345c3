"""Stage 0 for CREMA-D: the release -> ``data/all``.

CREMA-D (Cao et al., IEEE Trans. Affective Computing 2014), as released
(github.com/CheyneyComputerScience/CREMA-D)::

    AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav   the clips: 16 kHz mono (used)
    AudioMP3/<same name>.mp3                             MP3 twins of the clips (not read)
    VideoFlash/, VideoDemographics.csv, *.csv, ...       VideoDemographics.csv gives each actor's sex (read
                                                         when present, for gender-balanced folds); the rest
                                                         is not read

- actor: 1001 ... 1091 (91 actors); the speaker id.
- sentence: one of 12 codes; the actor reads that sentence, whose text is known
  from the code (SENTENCES below, as the release's README lists them). It is the
  utterance's transcript, so the CTC targets come from it.
- emotion: ANG DIS FEA HAP NEU SAD (read as ang dis fea hap neu sad; the recipe's
  label map, conf/emotions/crema_d.yaml, says which are kept, merged, in which order).
- level: LO MD HI for the IEO sentence, XX (unspecified) for the others.

Only AudioWAV/ is read (``--db-root`` is the folder that holds it, or AudioWAV/
itself). Files there that are not clips are skipped and listed: hidden files
(.DS_Store, ._<name> AppleDouble copies), names of another form (a stray
``notes.txt``, a browser's ``1001_DFA_ANG_XX (1).wav``, an .mp3). A name of the
clip form with an unknown code is an error naming the file.

The full release gives 7,442 clips (ANG DIS FEA HAP SAD 1,271 each, NEU 1,087;
per sentence IEO 1,456, DFA IOM IWL IWW TAI TSI 546, ITS TIE 545, ITH MTI WSI 540;
91 actors). A copy that gives other counts gets a loud warning naming each count
that differs.

Utterance id = the file name without .wav (``1001_DFA_ANG_XX``): it starts with
the actor, so ids sort speaker-first and the speaker id is their prefix.

Writes the stage-0 data dir (wav.scp text utt2spk spk2utt utt2emo utt2dur emotions,
and spk2gender when VideoDemographics.csv is there) and REPORT_DIR/counts.json and
REPORT_DIR/skipped (:mod:`mtlser.corpora.prep`).

Usage:
    python -m mtlser.corpora crema_d --db-root /path/to/CREMA-D --out data/all \\
        [--emotion-map conf/emotions/crema_d.yaml] [--report-dir data/local/crema_d_prep] [--no-check-counts]
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from pathlib import Path

from mtlser.corpora.prep import (Corpus, Found, Utterance, compare_counts, compare_totals, is_hidden, relpath,
                                 require_code)
from mtlser.data.emotions import EmotionMap
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)

#: Sentence code -> the sentence the actor reads (CREMA-D's README).
SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
#: Emotion code of the file name -> the raw label the label map sees.
EMOTION_CODES = {"ANG": "ang", "DIS": "dis", "FEA": "fea", "HAP": "hap", "NEU": "neu", "SAD": "sad"}
LEVELS = ("LO", "MD", "HI", "XX")

#: The full release (raw emotion codes, before any label map).
EXPECTED_TOTAL = 7442
EXPECTED_ACTORS = 91
EXPECTED_EMOTIONS = {"ANG": 1271, "DIS": 1271, "FEA": 1271, "HAP": 1271, "NEU": 1087, "SAD": 1271}
EXPECTED_SENTENCES = {"IEO": 1456, "TIE": 545, "IOM": 546, "IWW": 546, "TAI": 546, "MTI": 540, "IWL": 546,
                      "ITH": 540, "DFA": 546, "ITS": 545, "TSI": 546, "WSI": 540}

#: <actor>_<sentence>_<emotion>_<level>.wav; codes are checked against the tables above.
_CLIP = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav$", re.IGNORECASE)
_SEX = {"male": "m", "female": "f"}


def find_audio_dir(db_root: Path) -> Path:
    """AudioWAV/ under the root, or the root itself when it holds the clips."""
    if not db_root.is_dir():
        raise MtlserError(f"{db_root}: CREMA-D root not found; pass --db-root /path/to/CREMA-D (the folder "
                          "that holds AudioWAV/)")
    if (db_root / "AudioWAV").is_dir():
        return db_root / "AudioWAV"
    if any(_CLIP.match(p.name) for p in db_root.iterdir()):
        return db_root
    raise MtlserError(f"{db_root}: no AudioWAV/ folder and no CREMA-D clips (<actor>_<sentence>_<emotion>_<level>"
                      ".wav); give the folder of the release that holds AudioWAV/")


def read_demographics(path: Path) -> dict[str, str]:
    """VideoDemographics.csv -> {actor: m|f} (columns ActorID and Sex, as released)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "ActorID" not in rows[0] or "Sex" not in rows[0]:
        raise MtlserError(f"{path}:1: expected a header with ActorID and Sex columns, got {rows[0] if rows else []}")
    i_actor, i_sex = rows[0].index("ActorID"), rows[0].index("Sex")
    out = {}
    for lineno, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) <= max(i_actor, i_sex) or row[i_sex].strip().lower() not in _SEX:
            raise MtlserError(f"{path}:{lineno}: expected an ActorID and a Sex of Male or Female, got {row}")
        out[row[i_actor].strip()] = _SEX[row[i_sex].strip().lower()]
    return out


def scan(db_root: Path) -> Found:
    """Every clip of AudioWAV/ (the MP3 twins are not read), each file that is not one listed with its reason."""
    audio_dir = find_audio_dir(db_root)
    mp3_dir = db_root / "AudioMP3"
    if mp3_dir.is_dir():
        logger.info("%s: not read (the MP3 twins of the WAV clips)", mp3_dir)
    utterances: list[Utterance] = []
    skipped: list[tuple[str, str]] = []
    raw_emotions: Counter[str] = Counter()
    sentences: Counter[str] = Counter()
    levels: Counter[str] = Counter()
    for path in sorted(audio_dir.iterdir()):
        name = path.name
        if is_hidden(name):
            skipped.append(("hidden", relpath(path, db_root)))
            continue
        m = _CLIP.match(name)
        if m is None or not path.is_file():
            skipped.append(("not_a_clip", relpath(path, db_root)))
            continue
        actor, sentence, emotion, level = (g.upper() for g in m.groups())
        require_code(path, "sentence code", sentence, SENTENCES, "CREMA-D")
        require_code(path, "emotion code", emotion, EMOTION_CODES, "CREMA-D")
        require_code(path, "level", level, LEVELS, "CREMA-D")
        raw_emotions[emotion] += 1
        sentences[sentence] += 1
        levels[level] += 1
        utterances.append(Utterance(path.stem, path, SENTENCES[sentence], actor, EMOTION_CODES[emotion],
                                    relpath(path, db_root)))
    demographics = db_root / "VideoDemographics.csv"
    return Found(audio_dir, utterances, skipped, genders=actor_genders(demographics), genders_from=str(demographics),
                 facts={"clips": len(utterances), "actors": len({u.speaker for u in utterances}),
                        "raw_emotions": dict(sorted(raw_emotions.items())),
                        "sentences": dict(sorted(sentences.items())), "levels": dict(sorted(levels.items()))})


def actor_genders(demographics: Path) -> dict[str, str] | None:
    """{actor: m|f} from VideoDemographics.csv, or None (with a log line) when it cannot be read."""
    if not demographics.is_file():
        logger.info("%s not found: no spk2gender (folds will not be gender-balanced)", demographics)
        return None
    try:
        return read_demographics(demographics)
    except MtlserError as e:  # only the folds' gender balance depends on it: go on without
        logger.warning("%s; no spk2gender written (folds will not be gender-balanced)", e)
        return None


def release_problems(report: dict, emotion_map: EmotionMap) -> list[str]:
    """The clips found against the full release (7,442): totals, per emotion code, per sentence."""
    return (compare_totals(report, EXPECTED_TOTAL, EXPECTED_ACTORS, EXPECTED_EMOTIONS)
            + compare_counts("sentence", report["sentences"], EXPECTED_SENTENCES))


CORPUS = Corpus(
    name="CREMA-D", labels=tuple(EMOTION_CODES.values()), scan=scan, release_problems=release_problems,
    db_root_help="the CREMA-D folder that holds AudioWAV/", release_total="7,442 clips", module="crema_d",
    clips_start_with_speaker=True,
)
