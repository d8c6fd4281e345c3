"""Stage 0 for IEMOCAP (and the mini corpus, which has its layout): the release -> ``data/all``.

The release, as laid out on disk::

    SessionN/dialog/EmoEvaluation/<dialog>.txt      one summary line per turn:
        [START - END]<TAB>TURN_NAME<TAB>EMOTION<TAB>[V, A, D]
      followed by evaluator lines (C-E2:, A-E3: ...), which are not summaries;
      sub-folders (Categorical/, Attribute/, Self-evaluation/) are skipped.
    SessionN/dialog/transcriptions/<dialog>.txt     TURN_NAME [START-END]: words
    SessionN/sentences/wav/<dialog>/<TURN_NAME>.wav 16 kHz mono, one per turn

Labels: ang hap exc sad neu fru sur fea dis oth xxx. The 4-class set of the
paper merges exc into hap and drops the rest; the full release then gives 5531
utterances (1103 ang, 1636 hap = 595 hap + 1041 exc, 1084 sad, 1708 neu).

Speaker = session + the gender letter of the turn's own id:
``Ses01F_impro01_M003`` is spoken by Ses01M although the dialog says F.

Writes the stage-0 data dir (wav.scp text utt2spk spk2utt utt2emo utt2dur,
plus utt2session for the leave-one-session-out protocol), keys = TURN_NAME.

Usage:
    python -m mtlser.data.iemocap --db-root /path/to/IEMOCAP_full_release --out data/all \\
        [--sessions 1 2 3 4 5] [--no-check-counts] [--skip-missing-audio]
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from mtlser.data.datadir import EMOTIONS, DataDir, validate_data_dir
from mtlser.utils import MtlserError, run_main, setup_logging

logger = logging.getLogger(__name__)

ALL_LABELS = ("ang", "hap", "exc", "sad", "neu", "fru", "sur", "fea", "dis", "oth", "xxx")
#: The paper's 4-class mapping: exc -> hap; labels not listed are dropped.
LABEL_MAP = {"ang": "ang", "hap": "hap", "exc": "hap", "sad": "sad", "neu": "neu"}
#: What the full five-session release gives under LABEL_MAP.
EXPECTED_COUNTS = {"ang": 1103, "hap": 1636, "sad": 1084, "neu": 1708}

_SUMMARY = re.compile(r"^\[(\d+(?:\.\d+)?) - (\d+(?:\.\d+)?)\]\t(\S+)\t(\S+)\t\[.*\]\s*$")
_TRANSCRIPT = re.compile(r"^(\S+) \[(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)\]:\s?(.*)$")
_TURN = re.compile(r"^(Ses\d\d)[FM]_\S+_([FM])[^_]*$")


@dataclass
class Turn:
    turn: str
    dialog: str
    session: str
    speaker: str
    label: str
    start: float
    end: float


def speaker_of(turn: str) -> str:
    """``Ses01F_impro01_M003 -> Ses01M`` (the last field's gender letter, not the dialog's)."""
    m = _TURN.match(turn)
    if m is None:
        raise ValueError(f"'{turn}' is not an IEMOCAP turn name (SesNN[FM]_<dialog>_[FM]NNN)")
    return m.group(1) + m.group(2)


def parse_emo_evaluation(path: Path) -> list[Turn]:
    """Summary lines of one EmoEvaluation file; evaluator and header lines are skipped."""
    turns = []
    dialog = path.stem
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.startswith("["):
                continue  # header (%), blank, or an evaluator line (C-E2:, A-E3: ...)
            m = _SUMMARY.match(line.rstrip("\n"))
            if m is None:
                raise MtlserError(
                    f"{path}:{lineno}: a line starting with '[' is not a summary line "
                    f"'[START - END]<TAB>TURN<TAB>LABEL<TAB>[V, A, D]': {line.strip()!r}"
                )
            start, end, turn, label = m.groups()
            if label not in ALL_LABELS:
                raise MtlserError(f"{path}:{lineno}: unknown emotion code '{label}'; expected one of {ALL_LABELS}")
            try:
                speaker = speaker_of(turn)
            except ValueError as e:
                raise MtlserError(f"{path}:{lineno}: {e}") from None
            turns.append(Turn(turn, dialog, speaker[:5], speaker, label, float(start), float(end)))
    return turns


def parse_transcriptions(path: Path) -> dict[str, str]:
    """``TURN [START-END]: words`` lines; lines of no turn format are skipped."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _TRANSCRIPT.match(line.rstrip("\n"))
            if m is not None:
                out[m.group(1)] = m.group(4).strip()
    return out


def prepare(
    db_root: str | Path,
    out: str | Path,
    sessions: list[int] | None = None,
    label_map: dict[str, str] | None = None,
    check_counts: bool = True,
    skip_missing_audio: bool = False,
) -> DataDir:
    db_root = Path(db_root).resolve()
    label_map = LABEL_MAP if label_map is None else label_map
    if not db_root.is_dir():
        raise MtlserError(f"{db_root}: IEMOCAP root not found; pass --db-root /path/to/IEMOCAP_full_release")
    found = sorted(int(p.name[len("Session"):]) for p in db_root.glob("Session[0-9]*") if p.is_dir())
    sessions = sessions or found
    if not found:
        raise MtlserError(f"{db_root}: no Session1..Session5 folders; is this IEMOCAP_full_release?")
    missing_sessions = [s for s in sessions if s not in found]
    if missing_sessions:
        raise MtlserError(f"{db_root}: Session{missing_sessions[0]} not found (have {found})")

    tables: dict[str, dict[str, str]] = {n: {} for n in ("wav.scp", "text", "utt2spk", "utt2emo", "utt2dur", "utt2session")}
    raw_counts: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    missing_audio: list[str] = []
    no_transcript = 0
    for s in sessions:
        sess_dir = db_root / f"Session{s}"
        emo_dir = sess_dir / "dialog" / "EmoEvaluation"
        files = sorted(p for p in emo_dir.glob("*.txt") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise MtlserError(f"{emo_dir}: no EmoEvaluation summary files")
        for emo_file in files:
            trans_file = sess_dir / "dialog" / "transcriptions" / emo_file.name
            transcripts = parse_transcriptions(trans_file) if trans_file.is_file() else {}
            for t in parse_emo_evaluation(emo_file):
                raw_counts[t.label] += 1
                if t.label not in label_map:
                    dropped[t.label] += 1
                    continue
                if t.turn in tables["utt2spk"]:
                    raise MtlserError(f"{emo_file}: turn '{t.turn}' appears twice in the release")
                wav = sess_dir / "sentences" / "wav" / t.dialog / f"{t.turn}.wav"
                if not wav.is_file():
                    missing_audio.append(str(wav))
                    continue
                words = transcripts.get(t.turn)
                if words is None:
                    no_transcript += 1
                    words = ""
                tables["wav.scp"][t.turn] = str(wav)
                tables["text"][t.turn] = words
                tables["utt2spk"][t.turn] = t.speaker
                tables["utt2emo"][t.turn] = label_map[t.label]
                tables["utt2session"][t.turn] = t.session
                info = sf.info(str(wav))
                tables["utt2dur"][t.turn] = f"{info.frames / info.samplerate:.4f}"

    if missing_audio:
        msg = f"{len(missing_audio)} evaluated turns have no audio, e.g. {missing_audio[0]}"
        if not skip_missing_audio:
            raise MtlserError(msg + "; restore the files, or pass --skip-missing-audio to drop those turns")
        logger.warning("%s: skipped (--skip-missing-audio)", msg)
    if no_transcript:
        logger.warning("%d turns have no transcript line; they train without the CTC term", no_transcript)
    if not tables["utt2spk"]:
        raise MtlserError(f"{db_root}: no utterance with a label in {sorted(label_map)}")

    dd = DataDir(tables)
    dd.write(out)
    validate_data_dir(out, emotions=sorted(set(label_map.values())))

    counts = Counter(tables["utt2emo"].values())
    logger.info("raw labels: %s", " ".join(f"{k}={raw_counts[k]}" for k in ALL_LABELS if raw_counts[k]))
    logger.info("dropped (not in the 4-class map): %d (%s)", sum(dropped.values()),
                " ".join(f"{k}={v}" for k, v in sorted(dropped.items())))
    logger.info("kept %d utterances: %s; %d speakers", len(dd),
                " ".join(f"{e}={counts[e]}" for e in EMOTIONS), len(set(tables["utt2spk"].values())))
    if check_counts and sorted(sessions) == [1, 2, 3, 4, 5] and dict(counts) != EXPECTED_COUNTS:
        banner = "!" * 78
        logger.warning(
            "\n%s\nThe full five-session IEMOCAP gives %s (5531 utterances), but this copy gives %s (%d).\n"
            "Results will not be comparable with the paper. Check the copy (missing or edited files?).\n%s",
            banner, EXPECTED_COUNTS, dict(counts), len(dd), banner,
        )
    return dd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="IEMOCAP release -> Kaldi data dir (stage 0).")
    parser.add_argument("--db-root", required=True, help="IEMOCAP_full_release (holds Session1..Session5)")
    parser.add_argument("--out", required=True, help="data dir to write, e.g. data/all")
    parser.add_argument("--sessions", type=int, nargs="+", default=None, help="sessions to use (default: all found)")
    parser.add_argument("--no-check-counts", action="store_true",
                        help="do not compare the counts with the full release's 5531 (for other corpora in this layout)")
    parser.add_argument("--skip-missing-audio", action="store_true",
                        help="drop evaluated turns without a wav instead of failing")
    args = parser.parse_args(argv)
    setup_logging()
    prepare(args.db_root, args.out, args.sessions, check_counts=not args.no_check_counts,
            skip_missing_audio=args.skip_missing_audio)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
