"""``python -m mtlser.corpora.from_table corpus.csv data/all``: any table of files (CSV/TSV) -> Kaldi data dir.

Most corpora of one's own are a table: one row per utterance with its audio path, label, speaker and
transcript (optionally a session). This module describes such a table as a :class:`~mtlser.corpora.prep.Corpus`
so the data dir is written by the one shared :func:`~mtlser.corpora.prep.prepare` (label map, audio checks,
report) like every other corpus. Columns are named by flags; relative paths are resolved against the
table's folder (not the working directory), so a table moves with its audio.

The inventory is a list (``--emotions "ang hap sad neu"``) or a label map (``--emotion-map
conf/emotions/x.yaml``). A table label that equals an inventory label (or a merged label) except for case
or spacing stops with ``file:line``: dropped as "not in the map", a whole class could vanish silently.
It lives in mtlser.corpora (not mtlser.data) because it builds on the corpora's prepare: mtlser.data is
below mtlser.corpora in the package ladder.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from mtlser.corpora.prep import Corpus, Found, Utterance, prepare
from mtlser.data.emotions import EmotionMap, load_emotion_map
from mtlser.utils import MtlserError, run_main, setup_logging


def _squash(label: str) -> str:
    return "".join(label.split()).lower()


def read_table(path: Path, columns: dict[str, str | None], emotion_map: EmotionMap) -> Found:
    """The rows of the table as utterances; errors name the file and line."""
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    known = {_squash(k): k for k in [*emotion_map.emotions, *emotion_map.merge]}
    utterances: list[Utterance] = []
    seen: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        for role, name in columns.items():
            if name is not None and name not in header:
                raise MtlserError(f"{path}:1: no column '{name}' (the {role} column; --{role}-col selects "
                                  f"another); the header has: {' '.join(header)}")
        for row in reader:
            line = reader.line_num
            def cell(role: str) -> str | None:
                name = columns[role]
                return None if name is None else (row.get(name) or "").strip()
            wav, label, speaker = cell("path"), cell("label"), cell("speaker")
            if not wav or not label or not speaker:
                raise MtlserError(f"{path}:{line}: empty path, label or speaker; fill it in or remove the row")
            if label not in known.values() and _squash(label) in known:
                raise MtlserError(f"{path}:{line}: label '{label}' differs from the inventory's "
                                  f"'{known[_squash(label)]}' only in case or spacing; write it as "
                                  f"'{known[_squash(label)]}' (or merge it in the label map)")
            audio = Path(wav)
            if not audio.is_absolute():
                audio = path.parent / audio
            utt = cell("utt") if columns["utt"] else None
            utt = utt or audio.stem  # the shared prepare makes it <speaker>-<utt> (Kaldi's speaker prefix)
            if any(c.isspace() for c in utt + speaker):
                raise MtlserError(f"{path}:{line}: utterance id '{utt}' or speaker '{speaker}' contains "
                                  "whitespace; Kaldi ids are single words")
            key = f"{speaker}-{utt}"
            if key in seen:
                raise MtlserError(f"{path}:{line}: utterance id '{key}' is also on line {seen[key]}; "
                                  "give an --utt-col or make the file names unique")
            seen[key] = line
            text = cell("text") if columns["text"] else None
            session = cell("session") if columns["session"] else None
            utterances.append(Utterance(utt, audio.resolve(), text, speaker, label, f"{path.name}:{line}",
                                        {"utt2session": session} if session else {}))
    if not utterances:
        raise MtlserError(f"{path}: no rows under the header")
    return Found(path.parent, utterances, None, facts={"table": str(path), "rows": len(utterances)})


def table_corpus(table: Path, columns: dict[str, str | None], emotion_map: EmotionMap) -> tuple[Corpus, Found]:
    """The table as a described corpus (its raw labels are the table's own) and what it holds."""
    found = read_table(table, columns, emotion_map)
    raw = sorted({u.label for u in found.utterances} | set(emotion_map.emotions) | set(emotion_map.merge))
    corpus = Corpus(name=table.name, labels=tuple(raw), scan=lambda _root: found,
                    release_problems=lambda report, m: None, db_root_help="", release_total="",
                    items="utterances", module=table.stem,
                    group_by="utt2session" if columns["session"] else None)
    return corpus, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtlser.corpora.from_table",
                                     description="A CSV/TSV of audio files (path, label, speaker, transcript, "
                                     "optional session) -> Kaldi data dir (stage 0). A .tsv/.tab is tab-separated.")
    parser.add_argument("table", help="the CSV or TSV; relative audio paths are resolved against its folder")
    parser.add_argument("out", help="data dir to write, e.g. data/all")
    inv = parser.add_mutually_exclusive_group(required=True)
    inv.add_argument("--emotions", help="the inventory in class-index order, e.g. 'ang hap sad neu'")
    inv.add_argument("--emotion-map", help="label map YAML (conf/emotions/*.yaml: emotions, merge)")
    for role, default in (("path", "path"), ("label", "label"), ("speaker", "speaker"), ("text", "text")):
        parser.add_argument(f"--{role}-col", default=default, help=f"the {role} column (default {default})")
    parser.add_argument("--no-text", action="store_true", help="the table has no transcripts (no CTC term)")
    parser.add_argument("--utt-col", default=None, help="utterance id column (default: the file stem; ids are SPEAKER-<it>)")
    parser.add_argument("--session-col", default=None, help="session column -> utt2session (optional)")
    parser.add_argument("--report-dir", default=None, help="counts.json and the dropped list (default "
                        "OUT/../local/<table stem>_prep)")
    parser.add_argument("--skip-missing-audio", action="store_true", help="drop rows whose audio is missing")
    args = parser.parse_args(argv)
    setup_logging()
    table = Path(args.table).resolve()
    if not table.is_file():
        raise MtlserError(f"{args.table}: table not found")
    emotion_map = (load_emotion_map(args.emotion_map) if args.emotion_map
                   else EmotionMap(args.emotions.split(), source="--emotions"))
    columns = {"path": args.path_col, "label": args.label_col, "speaker": args.speaker_col,
               "text": None if args.no_text else args.text_col, "utt": args.utt_col, "session": args.session_col}
    corpus, _ = table_corpus(table, columns, emotion_map)
    prepare(corpus, table.parent, args.out, emotion_map, check_counts=False, report_dir=args.report_dir,
            skip_missing_audio=args.skip_missing_audio)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
