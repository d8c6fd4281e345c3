"""Stage 0 for IEMOCAP (and the mini corpus, which has its layout): the release -> ``data/all``.

The release, as laid out on disk (IEMOCAP_full_release)::

    SessionN/dialog/EmoEvaluation/<dialog>.txt      one block per evaluated turn:
        [START - END]<TAB>TURN_NAME<TAB>EMOTION<TAB>[V, A, D]     the summary line (used)
        C-E2:<TAB>Neutral state;<TAB>()                            evaluator lines (skipped)
        A-E3:<TAB>val 3; act 2; dom  2;<TAB>()
      The sub-folders Categorical/, Attribute/, Self-evaluation/ hold per-evaluator
      files, not summaries, and are not read; nor are hidden files (.DS_Store, and
      the ._<name> AppleDouble copies a macOS archive leaves next to each file).
    SessionN/dialog/transcriptions/<dialog>.txt     TURN_NAME [START-END]: words
      Some lines belong to no evaluated turn (ids with XX, e.g. Ses03F_impro05_MXX0);
      some turns' words are only non-verbal tags ([LAUGHTER], [BREATHING], [GARBAGE]).
    SessionN/sentences/wav/<dialog>/<TURN_NAME>.wav 16 kHz mono, one per turn
      (SessionN/dialog/wav/<dialog>.wav are the stereo sessions: not used)

Dialog names vary (Ses01F_impro05a, Ses02M_script01_1, Ses05M_script01_1b); a
turn name is always ``<dialog>_<F|M><3 digits>``, and its dialog is the
EmoEvaluation file it is listed in.

Labels: ang hap exc sad neu fru sur fea dis oth xxx. Which become classes, in which
order, is a label map (``--emotion-map``, :mod:`mtlser.data.emotions`), default
``conf/emotions/iemocap.yaml``: the paper's 4 classes ang hap sad neu, exc merged
into hap, the rest dropped. The full release then gives 5531 utterances (1103 ang,
1636 hap = 595 hap + 1041 exc, 1084 sad, 1708 neu; per session 1085 1023 1151 1031
1241), the figure SpeechBrain's IEMOCAP prep checks too. The counts are checked
whenever the map keeps and merges the codes that way (in any order); for other
maps there is no published figure to check against, and the log says so.

Speaker = session + the gender letter of the turn's OWN id:
``Ses01F_impro01_M003`` is spoken by Ses01M although the dialog is named after F.

A turn is dropped for one of these reasons, listed per turn in the report:
  label:<code>   the label map does not use its label (with the default map: fru, sur, xxx, ...)
  no_audio       its wav is missing (only with --skip-missing-audio; otherwise an error)
A turn without a transcript line, or with only non-verbal tags, is kept: it has
an emotion label, and stage 1 gives it an empty token sequence (no CTC term).

Writes the stage-0 data dir (wav.scp text utt2spk spk2utt utt2emo utt2dur, plus
utt2session for the leave-one-session-out protocol, and the inventory ``emotions``
from the label map), keys = TURN_NAME, and a
report next to it: REPORT_DIR/counts.json (counts per session, speaker, label)
and REPORT_DIR/dropped (``TURN reason`` per dropped turn).

Usage:
    python -m mtlser.data.iemocap --db-root /path/to/IEMOCAP_full_release --out data/all \\
        [--sessions 1 2 3 4 5] [--report-dir data/local/iemocap_prep] [--no-check-counts] \\
        [--skip-missing-audio] [--emotion-map conf/emotions/iemocap.yaml]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from mtlser.data.datadir import DataDir, sort_key, validate_data_dir, write_table
from mtlser.data.emotions import EmotionMap, load_emotion_map
from mtlser.utils import MtlserError, run_main, setup_logging
from mtlser.utils.fileio import atomic_write_text, path_in

logger = logging.getLogger(__name__)

ALL_LABELS = ("ang", "hap", "exc", "sad", "neu", "fru", "sur", "fea", "dis", "oth", "xxx")
#: The recipe's label map (the paper's 4 classes); --emotion-map takes another.
DEFAULT_EMOTION_MAP = Path(__file__).resolve().parents[2] / "conf" / "emotions" / "iemocap.yaml"
#: The raw code -> class mapping the published counts below are counts of (exc -> hap; others dropped).
LABEL_MAP = {"ang": "ang", "hap": "hap", "exc": "hap", "sad": "sad", "neu": "neu"}
#: What the full five-session release gives under LABEL_MAP.
EXPECTED_COUNTS = {"ang": 1103, "hap": 1636, "sad": 1084, "neu": 1708}
EXPECTED_TOTAL = 5531
#: Utterances per session under LABEL_MAP (they sum to 5531).
EXPECTED_SESSION_COUNTS = {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241}

# Tabs in the release; any whitespace accepted so that a re-saved copy still parses.
_SUMMARY = re.compile(r"^\[\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*\]\s+(\S+)\s+(\S+)\s+\[[^\]]*\]\s*$")
_TRANSCRIPT = re.compile(r"^(\S+)\s+\[\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*\]:\s*(.*)$")
#: Ses01F_impro01_M003: session 01, dialog Ses01F_impro01, spoken by the M actor, turn 003.
_TURN = re.compile(r"^(Ses(\d\d)[FM]_\S+)_([FM])(\d{3})$")


@dataclass
class Turn:
    turn: str
    dialog: str
    session: int
    speaker: str
    label: str
    start: float
    end: float
    where: str  # file:line of the summary line, for messages


def parse_turn_name(turn: str) -> tuple[str, int, str]:
    """``Ses01F_impro01_M003 -> ('Ses01F_impro01', 1, 'Ses01M')``: dialog, session, speaker.

    The speaker's gender is the letter of the turn's own id, not of the dialog name.
    """
    m = _TURN.match(turn)
    if m is None:
        raise ValueError(f"'{turn}' is not an IEMOCAP turn name (<dialog>_<F|M>NNN, e.g. Ses01F_impro01_M003)")
    dialog, session, gender, _ = m.groups()
    return dialog, int(session), f"Ses{session}{gender}"


def speaker_of(turn: str) -> str:
    """``Ses01F_impro01_M003 -> Ses01M`` (the last field's gender letter, not the dialog's)."""
    return parse_turn_name(turn)[2]


def parse_emo_evaluation(path: Path) -> list[Turn]:
    """Summary lines of one EmoEvaluation file; header, evaluator and blank lines are skipped."""
    turns = []
    dialog = path.stem
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.startswith("["):
                continue  # header (%), blank, or an evaluator line (C-E2:, A-E3: ...)
            where = f"{path}:{lineno}"
            m = _SUMMARY.match(line)
            if m is None:
                raise MtlserError(
                    f"{where}: a line starting with '[' is not a summary line "
                    f"'[START - END]<TAB>TURN<TAB>LABEL<TAB>[V, A, D]': {line.strip()!r}; "
                    "is the file complete? compare it with the release"
                )
            start, end, turn, label = m.groups()
            if label not in ALL_LABELS:
                raise MtlserError(f"{where}: unknown emotion code '{label}' for {turn}; "
                                  f"expected one of {' '.join(ALL_LABELS)}")
            try:
                turn_dialog, session, speaker = parse_turn_name(turn)
            except ValueError as e:
                raise MtlserError(f"{where}: {e}") from None
            if turn_dialog != dialog:
                raise MtlserError(f"{where}: turn {turn} belongs to dialog {turn_dialog}, but is listed in "
                                  f"{path.name}; its audio would be looked up in the wrong folder")
            turns.append(Turn(turn, dialog, session, speaker, label, float(start), float(end), where))
    return turns


def parse_transcriptions(path: Path) -> tuple[dict[str, str], list[str]]:
    """``TURN [START-END]: words`` lines -> {turn: words}, and the file:line of lines of another format."""
    out: dict[str, str] = {}
    odd: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            m = _TRANSCRIPT.match(line)
            if m is None:
                odd.append(f"{path}:{lineno}: {line.strip()[:60]!r}")
                continue
            out[m.group(1)] = " ".join(m.group(4).split())
    return out, odd


def summary_files(emo_dir: Path) -> list[Path]:
    """The dialog summaries: plain ``*.txt`` files of EmoEvaluation/ itself (no sub-folders, no hidden files)."""
    return sorted(p for p in emo_dir.iterdir()
                  if p.is_file() and p.suffix == ".txt" and not p.name.startswith("."))


def _audio_duration(wav: Path) -> float:
    try:
        info = sf.info(str(wav))
    except Exception as e:
        raise MtlserError(f"{wav}: cannot read the audio header ({e}); is the file complete?") from None
    if info.frames <= 0:
        raise MtlserError(f"{wav}: empty audio; restore the file from the release")
    return info.frames / info.samplerate


def prepare(
    db_root: str | Path,
    out: str | Path,
    sessions: list[int] | None = None,
    emotion_map: EmotionMap | str | Path | None = None,
    check_counts: bool = True,
    skip_missing_audio: bool = False,
    report_dir: str | Path | None = None,
) -> DataDir:
    from mtlser.text.g2p import clean_transcript  # stdlib-only at import time: cheap

    db_root = Path(db_root).resolve()
    out = Path(out)
    report_dir = Path(report_dir) if report_dir is not None else out.parent / "local" / "iemocap_prep"
    if not isinstance(emotion_map, EmotionMap):
        emotion_map = load_emotion_map(emotion_map if emotion_map is not None else DEFAULT_EMOTION_MAP)
    unknown = sorted((set(emotion_map.emotions) | set(emotion_map.merge)) - set(ALL_LABELS))
    if unknown:
        raise MtlserError(f"{emotion_map.source}: {' '.join(unknown)} are not IEMOCAP emotion codes "
                          f"({' '.join(ALL_LABELS)}); a label map for IEMOCAP keeps and merges those codes")
    if not db_root.is_dir():
        raise MtlserError(f"{db_root}: IEMOCAP root not found; pass --db-root /path/to/IEMOCAP_full_release")
    found = sorted(int(p.name[len("Session"):]) for p in db_root.glob("Session[0-9]*")
                   if p.is_dir() and p.name[len("Session"):].isdigit())
    if not found:
        raise MtlserError(f"{db_root}: no Session1..Session5 folders; is this IEMOCAP_full_release?")
    sessions = sorted(sessions) if sessions else found
    missing_sessions = [s for s in sessions if s not in found]
    if missing_sessions:
        raise MtlserError(f"{db_root}: Session{missing_sessions[0]} not found (have Session{found}); "
                          "pass --sessions to prepare fewer")

    tables: dict[str, dict[str, str]] = {n: {} for n in ("wav.scp", "text", "utt2spk", "utt2emo", "utt2dur",
                                                         "utt2session")}
    seen: dict[str, str] = {}  # turn -> where, over all sessions
    raw_counts: Counter[tuple[int, str]] = Counter()  # (session, raw label)
    dropped: dict[str, str] = {}  # turn -> reason
    missing_audio: list[str] = []
    no_transcript: list[str] = []
    nonverbal_only: list[str] = []
    odd_lines: list[str] = []
    unevaluated_lines = 0
    for s in sessions:
        sess_dir = db_root / f"Session{s}"
        emo_dir = sess_dir / "dialog" / "EmoEvaluation"
        if not emo_dir.is_dir():
            raise MtlserError(f"{emo_dir}: not found; is {sess_dir} a complete IEMOCAP session?")
        files = summary_files(emo_dir)
        if not files:
            raise MtlserError(f"{emo_dir}: no EmoEvaluation summary files (<dialog>.txt)")
        for emo_file in files:
            trans_file = sess_dir / "dialog" / "transcriptions" / emo_file.name
            transcripts: dict[str, str] = {}
            if trans_file.is_file():
                transcripts, odd = parse_transcriptions(trans_file)
                odd_lines.extend(odd)
            else:
                logger.warning("%s: no transcription file; the turns of %s train without the CTC term",
                               trans_file, emo_file.stem)
            turns = parse_emo_evaluation(emo_file)
            evaluated = {t.turn for t in turns}
            unevaluated_lines += sum(1 for k in transcripts if k not in evaluated)
            for t in turns:
                if t.session != s:
                    raise MtlserError(f"{t.where}: turn {t.turn} is of session {t.session} but is in Session{s}")
                if t.turn in seen:
                    raise MtlserError(f"{t.where}: turn {t.turn} is listed twice (first at {seen[t.turn]}); "
                                      "remove the duplicate file")
                seen[t.turn] = t.where
                raw_counts[(s, t.label)] += 1
                label = emotion_map.apply(t.label)
                if label is None:
                    dropped[t.turn] = f"label:{t.label}"
                    continue
                wav = path_in(path_in(sess_dir / "sentences" / "wav", t.dialog), t.turn, ".wav")  # ids stay inside
                if not wav.is_file():
                    missing_audio.append(str(wav))
                    dropped[t.turn] = "no_audio"
                    continue
                words = transcripts.get(t.turn)
                if words is None:
                    no_transcript.append(t.turn)
                    words = ""
                elif words and not clean_transcript(words):
                    nonverbal_only.append(t.turn)
                tables["wav.scp"][t.turn] = str(wav)
                tables["text"][t.turn] = words
                tables["utt2spk"][t.turn] = t.speaker
                tables["utt2emo"][t.turn] = label
                tables["utt2session"][t.turn] = f"Ses{t.session:02d}"
                tables["utt2dur"][t.turn] = f"{_audio_duration(wav):.4f}"

    if missing_audio:
        msg = (f"{len(missing_audio)} evaluated turns of the {len(emotion_map.emotions)} classes have no audio, "
               f"e.g. {missing_audio[0]}")
        if not skip_missing_audio:
            raise MtlserError(msg + "; restore the files from the release, or drop those turns with "
                              "--skip-missing-audio (./run.sh --local-data-opts '--skip-missing-audio true')")
        logger.warning("%s: dropped (--skip-missing-audio)", msg)
    if no_transcript:
        logger.warning("%d turns have no transcript line (e.g. %s); kept, they train without the CTC term",
                       len(no_transcript), no_transcript[0])
    if odd_lines:
        logger.warning("%d transcript lines are not 'TURN [START-END]: words' and were skipped, e.g. %s",
                       len(odd_lines), odd_lines[0])
    if not tables["utt2spk"]:
        raise MtlserError(f"{db_root}: no utterance with a label that {emotion_map.source} keeps")

    dd = DataDir(tables, emotions=emotion_map.emotions)
    dd.write(out)
    validate_data_dir(out)

    report = count_report(tables, raw_counts, dropped, sessions, emotion_map)
    report.update({"db_root": str(db_root), "sessions": sessions, "no_transcript": len(no_transcript),
                   "nonverbal_only": len(nonverbal_only), "transcript_lines_of_no_evaluated_turn": unevaluated_lines,
                   "odd_transcript_lines": len(odd_lines)})
    atomic_write_text(report_dir / "counts.json", json.dumps(report, indent=1) + "\n")
    write_table(report_dir / "dropped", dropped)
    log_counts(report)
    logger.info("kept %d turns with only non-verbal tags ([LAUGHTER] ...): emotion label, no phones; "
                "%d transcript lines of no evaluated turn (ids with XX) ignored", len(nonverbal_only),
                unevaluated_lines)
    logger.info("wrote %s (%d utterances) and %s", out, len(dd), report_dir)
    if check_counts and not counted_by_release(emotion_map):
        logger.info("%s is not the 4-class mapping the release's published counts are for (exc -> hap; fru sur "
                    "fea dis oth xxx dropped): no counts to compare with", emotion_map.source)
    elif check_counts:
        check_release_counts(report, sessions, report_dir)
    return dd


def counted_by_release(emotion_map: EmotionMap) -> bool:
    """True when the map turns every code into the class LABEL_MAP does (the order of the classes may differ)."""
    return all(emotion_map.apply(code) == LABEL_MAP.get(code) for code in ALL_LABELS)


def count_report(tables: dict[str, dict[str, str]], raw_counts: Counter, dropped: dict[str, str],
                 sessions: list[int], emotion_map: EmotionMap) -> dict:
    emotions = list(emotion_map.emotions)
    kept = Counter(tables["utt2emo"].values())
    per_session = {f"Ses{s:02d}": {e: 0 for e in emotions} for s in sessions}
    per_speaker: dict[str, dict[str, int]] = {}
    for utt, emo in tables["utt2emo"].items():
        per_session[tables["utt2session"][utt]][emo] += 1
        per_speaker.setdefault(tables["utt2spk"][utt], {e: 0 for e in emotions})[emo] += 1
    return {
        "total": len(tables["utt2emo"]),
        "counts": {e: kept[e] for e in emotions},
        "per_session": per_session,
        "per_speaker": {k: per_speaker[k] for k in sorted(per_speaker, key=sort_key)},
        "raw_labels": {f"Ses{s:02d}": {lab: raw_counts[(s, lab)] for lab in ALL_LABELS if raw_counts[(s, lab)]}
                       for s in sessions},
        "dropped": dict(sorted(Counter(dropped.values()).items())),
        "emotion_map": " ".join(emotions) + "".join(f", {k} merged into {v}" for k, v in emotion_map.merge.items()),
    }


def log_counts(report: dict) -> None:
    """A table on the log: kept utterances per session and class, raw labels, drops."""
    emotions = list(report["counts"])
    head = f"{'':8s}" + "".join(f"{e:>7s}" for e in emotions) + f"{'total':>8s}"
    lines = [f"utterances kept ({report['emotion_map']}):", head]
    for sess, c in report["per_session"].items():
        lines.append(f"{sess:8s}" + "".join(f"{c[e]:7d}" for e in emotions) + f"{sum(c.values()):8d}")
    lines.append(f"{'all':8s}" + "".join(f"{report['counts'][e]:7d}" for e in emotions) + f"{report['total']:8d}")
    raw = Counter()
    for c in report["raw_labels"].values():
        raw.update(c)
    lines.append("raw labels: " + " ".join(f"{k}={raw[k]}" for k in ALL_LABELS if raw[k]))
    lines.append("dropped: " + (" ".join(f"{k}={v}" for k, v in report["dropped"].items()) or "none"))
    lines.append(f"speakers: {len(report['per_speaker'])} ({' '.join(report['per_speaker'])})")
    for line in lines:
        logger.info("%s", line)


def check_release_counts(report: dict, sessions: list[int], report_dir: Path | None = None) -> bool:
    """Compare with the full release; warn loudly on a difference. True when they agree."""
    problems = []
    for s in sessions:
        got = sum(report["per_session"][f"Ses{s:02d}"].values())
        if s in EXPECTED_SESSION_COUNTS and got != EXPECTED_SESSION_COUNTS[s]:
            problems.append(f"Session{s}: {got} utterances, the release gives {EXPECTED_SESSION_COUNTS[s]}")
    if sessions == [1, 2, 3, 4, 5] and report["counts"] != EXPECTED_COUNTS:
        problems.insert(0, f"all five sessions: {report['total']} utterances {report['counts']}, the release "
                           f"gives {EXPECTED_TOTAL} {EXPECTED_COUNTS}")
    if not problems:
        logger.info("counts match the full IEMOCAP release (%s)",
                    f"{EXPECTED_TOTAL} utterances" if sessions == [1, 2, 3, 4, 5] else f"sessions {sessions}")
        return True
    banner = "!" * 78
    logger.warning(
        "\n%s\nThis IEMOCAP copy does not give the counts of the full release:\n  %s\n"
        "Results will not be comparable with the paper's. Check the copy (missing, edited or extra files?);\n"
        "%s/counts.json and dropped list what was found.\n%s",
        banner, "\n  ".join(problems), report_dir or "the report dir", banner,
    )
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="IEMOCAP release -> Kaldi data dir (stage 0).")
    parser.add_argument("--db-root", required=True, help="IEMOCAP_full_release (holds Session1..Session5)")
    parser.add_argument("--out", required=True, help="data dir to write, e.g. data/all")
    parser.add_argument("--sessions", type=int, nargs="+", default=None, help="sessions to use (default: all found)")
    parser.add_argument("--report-dir", default=None,
                        help="where counts.json and dropped go (default: OUT/../local/iemocap_prep)")
    parser.add_argument("--no-check-counts", action="store_true",
                        help="do not compare the counts with the full release's 5531 (for other corpora in this layout)")
    parser.add_argument("--skip-missing-audio", action="store_true",
                        help="drop evaluated turns without a wav instead of failing")
    parser.add_argument("--emotion-map", default=None,
                        help="label map YAML: the classes in index order, merges (default conf/emotions/iemocap.yaml)")
    args = parser.parse_args(argv)
    setup_logging()
    prepare(args.db_root, args.out, args.sessions, emotion_map=args.emotion_map, check_counts=not args.no_check_counts,
            skip_missing_audio=args.skip_missing_audio, report_dir=args.report_dir)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
