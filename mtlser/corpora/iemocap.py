"""Stage 0 for IEMOCAP (and the mini corpus, which has its layout): the release -> ``data/all``.

The release, as laid out on disk (IEMOCAP_full_release)::

    SessionN/dialog/EmoEvaluation/<dialog>.txt      one block per evaluated turn:
        [START - END]<TAB>TURN_NAME<TAB>EMOTION<TAB>[V, A, D]     the summary line (used; V A D:
                                                                  the evaluators' mean valence,
                                                                  activation, dominance, scale 1-5)
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
utt2session for the leave-one-session-out protocol, the inventory ``emotions``
from the label map, and the attributes of the summary line's ``[V, A, D]`` as
``utt2attr`` in the order arousal valence dominance with their declaration
``attributes``, scale 1-5), keys = TURN_NAME, and a report next to it (:mod:`mtlser.corpora.prep`):
REPORT_DIR/counts.json (counts per session, speaker, label) and REPORT_DIR/dropped
(``TURN reason`` per dropped turn).

Usage:
    python -m mtlser.corpora iemocap --db-root /path/to/IEMOCAP_full_release --out data/all \\
        [--sessions 1 2 3 4 5] [--report-dir data/local/iemocap_prep] [--no-check-counts] \\
        [--skip-missing-audio] [--emotion-map conf/emotions/iemocap.yaml]
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mtlser.corpora.prep import Corpus, Found, Utterance
from mtlser.data.attributes import Attribute
from mtlser.data.emotions import EmotionMap
from mtlser.utils import MtlserError
from mtlser.utils.fileio import path_in

logger = logging.getLogger(__name__)

ALL_LABELS = ("ang", "hap", "exc", "sad", "neu", "fru", "sur", "fea", "dis", "oth", "xxx")
#: The raw code -> class mapping the published counts below are counts of (exc -> hap; others dropped).
LABEL_MAP = {"ang": "ang", "hap": "hap", "exc": "hap", "sad": "sad", "neu": "neu"}
#: What the full five-session release gives under LABEL_MAP.
EXPECTED_COUNTS = {"ang": 1103, "hap": 1636, "sad": 1084, "neu": 1708}
EXPECTED_TOTAL = 5531
#: Utterances per session under LABEL_MAP (they sum to 5531).
EXPECTED_SESSION_COUNTS = {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241}

# Tabs in the release; any whitespace accepted so that a re-saved copy still parses.
_SUMMARY = re.compile(r"^\[\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*\]\s+(\S+)\s+(\S+)\s+\[([^\]]*)\]\s*$")
#: The summary's [V, A, D] -> utt2attr's columns: (name, index in the triple); IEMOCAP's scale.
ATTRIBUTE_ORDER = (("arousal", 1), ("valence", 0), ("dominance", 2))
SCALE = (1.0, 5.0)
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
    attributes: tuple[float, ...] = ()  # arousal valence dominance (ATTRIBUTE_ORDER)


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
            start, end, turn, label, vad = m.groups()
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
            turns.append(Turn(turn, dialog, session, speaker, label, float(start), float(end), where,
                              parse_vad(vad, where)))
    return turns


def parse_vad(text: str, where: str) -> tuple[float, ...]:
    """The summary line's ``V, A, D`` -> (arousal, valence, dominance), each on the scale 1-5."""
    try:
        vad = [float(v) for v in text.split(",")]
    except ValueError:
        vad = []
    if len(vad) != 3 or not all(SCALE[0] <= v <= SCALE[1] for v in vad):
        raise MtlserError(f"{where}: [V, A, D] '[{text}]' is not three values of the scale {SCALE[0]:g}-{SCALE[1]:g}; "
                          "compare the line with the release")
    return tuple(vad[i] for _, i in ATTRIBUTE_ORDER)


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


def scan(db_root: Path, sessions: list[int] | None = None) -> Found:
    """Every evaluated turn of the sessions (all found when None), with its transcript when there is one."""
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

    utterances: list[Utterance] = []
    seen: dict[str, str] = {}  # turn -> where, over all sessions
    raw_counts: Counter[tuple[int, str]] = Counter()  # (session, raw label)
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
                wav = path_in(path_in(sess_dir / "sentences" / "wav", t.dialog), t.turn, ".wav")  # ids stay inside
                utterances.append(Utterance(t.turn, wav, transcripts.get(t.turn), t.speaker, t.label, t.where,
                                            {"utt2session": f"Ses{t.session:02d}"}, attributes=t.attributes))
    if odd_lines:
        logger.warning("%d transcript lines are not 'TURN [START-END]: words' and were skipped, e.g. %s",
                       len(odd_lines), odd_lines[0])
    logger.info("%d transcript lines of no evaluated turn (ids with XX) ignored", unevaluated_lines)
    return Found(db_root, utterances, groups=[f"Ses{s:02d}" for s in sessions], facts={
        "sessions": sessions,
        "raw_labels": {f"Ses{s:02d}": {lab: raw_counts[(s, lab)] for lab in ALL_LABELS if raw_counts[(s, lab)]}
                       for s in sessions},
        "transcript_lines_of_no_evaluated_turn": unevaluated_lines, "odd_transcript_lines": len(odd_lines)})


def counted_by_release(emotion_map: EmotionMap) -> bool:
    """True when the map turns every code into the class LABEL_MAP does (the order of the classes may differ)."""
    return all(emotion_map.apply(code) == LABEL_MAP.get(code) for code in ALL_LABELS)


def release_problems(report: dict, emotion_map: EmotionMap) -> list[str] | None:
    """The sessions' (and with all five, the classes') counts that differ from the full release's."""
    if not counted_by_release(emotion_map):
        logger.info("%s is not the 4-class mapping the release's published counts are for (exc -> hap; fru sur "
                    "fea dis oth xxx dropped): no counts to compare with", emotion_map.source)
        return None
    sessions = report["sessions"]
    problems = []
    for s in sessions:
        got = sum(report["per_session"][f"Ses{s:02d}"].values())
        if s in EXPECTED_SESSION_COUNTS and got != EXPECTED_SESSION_COUNTS[s]:
            problems.append(f"Session{s}: {got} utterances, the release gives {EXPECTED_SESSION_COUNTS[s]}")
    if sessions == [1, 2, 3, 4, 5] and report["counts"] != EXPECTED_COUNTS:
        problems.insert(0, f"all five sessions: {report['total']} utterances {report['counts']}, the release "
                           f"gives {EXPECTED_TOTAL} {EXPECTED_COUNTS}")
    return problems


CORPUS = Corpus(
    name="IEMOCAP", labels=ALL_LABELS, scan=scan, release_problems=release_problems,
    db_root_help="IEMOCAP_full_release (holds Session1..Session5)", release_total="5531 utterances",
    items="evaluated turns", labels_called="emotion codes", group_by="utt2session",
    options={"--sessions": dict(type=int, nargs="+", default=None, help="sessions to use (default: all found)")},
    module="iemocap", attributes=tuple(Attribute(name, *SCALE) for name, _ in ATTRIBUTE_ORDER),
)
