"""Stage 0 for MSP-Podcast: the release -> ``data/all`` (classes, attributes, the release's sets).

MSP-Podcast (Lotfian and Busso, IEEE Trans. Affective Computing 2019; Busso et al. 2025), as released::

    Audios/<FileName>                 the segments (MSP-PODCAST_0001_0008.wav; 16 kHz mono)
    Labels/labels_consensus.csv       one row per segment, with a header naming the columns:
        FileName    the segment's file in Audios/ (with .wav)
        EmoClass    the primary class: A anger, H happiness, S sadness, U surprise, F fear, D disgust,
                    C contempt, N neutral; O other, X no agreement among the annotators
        EmoAct, EmoVal, EmoDom   arousal, valence, dominance: the annotators' mean on a 1-7 scale
        SpkrID      the speaker, a number, or "Unknown"
        Gender      Male, Female or Unknown
        Split_Set   Train, Development, Test1, Test2 (Test3 in the releases that label it)
    Transcripts/<stem>.txt            the segment's transcript, in the releases that have them
    Labels/labels_detailed.csv, ...   each annotator's labels; not read

(the layout and the codes as the MSP lab's release README and the public code that reads the corpus
give them; other columns of the CSV are ignored; columns are found by name.)

What stage 0 makes of it:

- classes: the challenge's eight (conf/emotions/msp_podcast.yaml: ang hap sad neu dis fea sur con, the
  IEMOCAP recipe's four first at their indices). A segment labelled O or X has no class: it stays in
  the data dir for its attributes, with utt2emo ``-`` (mtlser.data.emotions.NO_CLASS).
- attributes: ``utt2attr`` (arousal valence dominance, in that order) and their declaration
  ``attributes`` (each 1 7). A value outside the scale is an error naming the CSV's line.
- sets: ``utt2set`` for the fixed-split protocol (mtlser.data.fixed_split): Train -> train, Development
  -> dev, Test1 -> test (the test set RESULTS.md reports: the one the corpus's papers report), Test2 ->
  test2, Test3 -> test3. Another value is an error naming the line; so is a segment listed twice.
- speakers: ``spk<SpkrID>``. Segments whose speaker is "Unknown" are not one speaker: each becomes its
  own pseudo-speaker ``unk_<stem>``, so no speaker-wise statistic (per-speaker counts, folds of whole
  speakers) treats hundreds of strangers as one person. spk2gender is written when every kept speaker's
  gender is known.
- transcripts: ``text`` from Transcripts/<stem>.txt, or from ``--transcripts DIR`` (the same layout:
  an ASR transcript per segment, supplied by you). Without either, ``text`` is empty: every segment
  trains without the CTC term, and the log says so; train with ``--loss.lambda 0`` (no CTC head) then.

Utterance id = the file name's stem (``MSP-PODCAST_0001_0008``). The release's size differs by version
(1.11: 84,030 labelled segments; 2.0 more), so there is no release-count check.

Usage:
    python -m mtlser.corpora msp_podcast --db-root /path/to/MSP-Podcast --out data/all \\
        [--transcripts DIR] [--emotion-map conf/emotions/msp_podcast.yaml]
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from pathlib import Path

from mtlser.corpora.prep import Corpus, Found, Utterance
from mtlser.data.attributes import Attribute
from mtlser.data.emotions import EmotionMap
from mtlser.data.fixed_split import DEV_SET, TRAIN_SET, UTT2SET
from mtlser.data.fold_names import TEST_SET
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)

LABELS_CSV = Path("Labels") / "labels_consensus.csv"
AUDIO_DIR = "Audios"
TRANSCRIPT_DIR = "Transcripts"

#: EmoClass code -> the raw label the label map sees (O and X are not classes: kept for their attributes).
EMOTION_CODES = {"A": "ang", "H": "hap", "S": "sad", "U": "sur", "F": "fea", "D": "dis", "C": "con", "N": "neu",
                 "O": "oth", "X": "xxx"}
#: The attribute columns, in utt2attr's order, with the declared names; the scale of every one.
ATTRIBUTE_COLUMNS = (("EmoAct", "arousal"), ("EmoVal", "valence"), ("EmoDom", "dominance"))
SCALE = (1.0, 7.0)
#: Split_Set -> the fixed protocol's set.
SETS = {"Train": TRAIN_SET, "Development": DEV_SET, "Test1": TEST_SET, "Test2": f"{TEST_SET}2",
        "Test3": f"{TEST_SET}3"}
COLUMNS = ("FileName", "EmoClass", *(c for c, _ in ATTRIBUTE_COLUMNS), "SpkrID", "Gender", "Split_Set")
UNKNOWN = "Unknown"
_GENDERS = {"Male": "m", "Female": "f"}


def speaker_id(spkr: str, stem: str) -> str:
    """``spk<SpkrID>``; an unknown speaker is a speaker of this one segment (``unk_<stem>``)."""
    return f"unk_{stem}" if spkr == UNKNOWN else f"spk{spkr}"


def attribute_values(row: dict[str, str], where: str) -> tuple[float, ...]:
    values = []
    for column, _ in ATTRIBUTE_COLUMNS:
        try:
            v = float(row[column])
        except ValueError:
            v = math.nan
        if not SCALE[0] <= v <= SCALE[1]:  # nan fails too
            raise MtlserError(f"{where}: {column} '{row[column]}' is not a value of the scale {SCALE[0]:g}-"
                              f"{SCALE[1]:g}; correct the row (or restore the release's file)")
        values.append(v)
    return tuple(values)


def read_labels(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line, row) of labels_consensus.csv; a missing column stops at line 1."""
    if not path.is_file():
        raise MtlserError(f"{path}: not found; --db-root is the MSP-Podcast folder holding {LABELS_CSV} and "
                          f"{AUDIO_DIR}/")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MtlserError(f"{path}:1: missing column(s) {' '.join(missing)}; the release's header has "
                              f"{','.join(COLUMNS)} (other columns are ignored)")
        return [(reader.line_num, row) for row in reader]


def scan(db_root: Path, transcripts: str | None = None) -> Found:
    """Every row of labels_consensus.csv, with its audio in Audios/ and its transcript where there is one."""
    if not db_root.is_dir():
        raise MtlserError(f"{db_root}: MSP-Podcast root not found; pass --db-root /path/to/MSP-Podcast")
    labels = db_root / LABELS_CSV
    text_dir = Path(transcripts) if transcripts else db_root / TRANSCRIPT_DIR
    if transcripts and not text_dir.is_dir():
        raise MtlserError(f"{text_dir}: --transcripts is not a folder; give the folder of <stem>.txt transcripts")
    has_text = text_dir.is_dir()
    if not has_text:
        logger.warning("%s: no transcripts: every segment trains without the CTC term (train with --loss.lambda 0, "
                       "or give ASR transcripts with --transcripts DIR)", text_dir)
    utterances: list[Utterance] = []
    seen: dict[str, tuple[int, str]] = {}
    genders: dict[str, str] = {}
    raw: Counter[str] = Counter()
    sets: Counter[str] = Counter()
    for line, row in read_labels(labels):
        where = f"{labels}:{line}"
        name = row["FileName"].strip()
        stem = Path(name).stem
        if not name or Path(name).name != name:
            raise MtlserError(f"{where}: FileName '{name}' is not a file name of {AUDIO_DIR}/")
        split_set = row["Split_Set"].strip()
        if split_set not in SETS:
            raise MtlserError(f"{where}: unknown Split_Set '{split_set}' of {name}; MSP-Podcast's are "
                              f"{' '.join(SETS)}")
        if stem in seen:
            first_line, first_set = seen[stem]
            raise MtlserError(f"{where}: {name} is listed twice ({first_set} at line {first_line}, {split_set} "
                              "here); a segment belongs to one set")
        seen[stem] = (line, split_set)
        code = row["EmoClass"].strip()
        if code not in EMOTION_CODES:
            raise MtlserError(f"{where}: unknown EmoClass '{code}' of {name}; MSP-Podcast's codes are "
                              f"{' '.join(EMOTION_CODES)}")
        values = attribute_values(row, where)
        spkr = row["SpkrID"].strip()
        if not spkr or (spkr != UNKNOWN and not spkr.isdigit()):
            raise MtlserError(f"{where}: SpkrID '{spkr}' of {name}: expected a number or {UNKNOWN}")
        speaker = speaker_id(spkr, stem)
        gender = row["Gender"].strip()
        if gender in _GENDERS:
            genders[speaker] = _GENDERS[gender]
        text = None
        if has_text and (text_dir / f"{stem}.txt").is_file():
            text = " ".join((text_dir / f"{stem}.txt").read_text(encoding="utf-8").split())
        raw[code] += 1
        sets[split_set] += 1
        utterances.append(Utterance(stem, db_root / AUDIO_DIR / name, text, speaker, EMOTION_CODES[code],
                                    f"{AUDIO_DIR}/{name}", tables={UTT2SET: SETS[split_set]}, attributes=values))
    return Found(db_root / AUDIO_DIR, utterances, genders=genders, genders_from=f"{labels} (Gender)",
                 facts={"segments": len(utterances), "raw_classes": dict(sorted(raw.items())),
                        "split_sets": dict(sorted(sets.items())),
                        "unknown_speaker_segments": sum(u.speaker.startswith("unk_") for u in utterances),
                        "transcripts": str(text_dir) if has_text else None})


def release_problems(report: dict, emotion_map: EmotionMap) -> None:
    """No fixed total: the release grows with each version."""
    logger.info("MSP-Podcast's size differs by release version: no count check")
    return None


CORPUS = Corpus(
    name="MSP-Podcast", labels=tuple(EMOTION_CODES.values()), scan=scan, release_problems=release_problems,
    db_root_help=f"the MSP-Podcast folder that holds {AUDIO_DIR}/ and {LABELS_CSV}",
    release_total="segments (none: the size differs by version)", items="segments", labels_called="classes",
    module="msp_podcast", attributes=tuple(Attribute(name, *SCALE) for _, name in ATTRIBUTE_COLUMNS), keep_unclassed=True,
    options={"--transcripts": {"default": None, "help": "folder of <stem>.txt transcripts to use instead of the "
                                                        "release's Transcripts/ (e.g. an ASR system's)"}},
)
