"""What the preps of clip corpora share: one audio file per clip, its labels in its file name.

CREMA-D (mtlser.data.crema_d) and RAVDESS (mtlser.data.ravdess) are released this
way: no transcript or label files, every fact about a clip is a code in its name.
Their preps differ in the codes and the layout; they share what is here:
which names are not clips at all (hidden files), reading a clip's duration (and
recognising a Git LFS pointer left by a clone without git-lfs), writing the data
dir with its emotion inventory in one piece, the report, and the loud warning
when a copy does not give the release's counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from pathlib import Path

import soundfile as sf

from mtlser.data.datadir import sort_key, spk2utt_from_utt2spk, validate_data_dir, write_table
from mtlser.data.emotions import EmotionMap, check_labels, write_inventory
from mtlser.utils import MtlserError, setup_logging
from mtlser.utils.fileio import atomic_dir, atomic_write_text

logger = logging.getLogger(__name__)

#: The per-utterance files a clip prep writes (spk2utt is derived, spk2gender optional).
TABLES = ("wav.scp", "text", "utt2spk", "utt2emo", "utt2dur")

_LFS_POINTER = b"version https://git-lfs"


def is_hidden(name: str) -> bool:
    """.DS_Store, the ._<name> AppleDouble copies a macOS archive leaves, and other dot files."""
    return name.startswith(".")


def clip_duration(path: Path) -> tuple[float, int, int]:
    """(seconds, sample rate, channels) of a clip, or a clear error naming it."""
    try:
        info = sf.info(str(path))
    except Exception as e:
        with open(path, "rb") as f:
            head = f.read(len(_LFS_POINTER))
        if head == _LFS_POINTER:
            raise MtlserError(f"{path}: a Git LFS pointer, not audio: the copy was cloned without git-lfs; "
                              "run `git lfs pull` in it (or download the release's audio)") from None
        raise MtlserError(f"{path}: cannot read the audio header ({e}); is the file complete?") from None
    if info.frames <= 0:
        raise MtlserError(f"{path}: empty audio; restore the file from the release")
    return info.frames / info.samplerate, info.samplerate, info.channels


def new_tables() -> dict[str, dict[str, str]]:
    return {name: {} for name in TABLES}


def add_clip(tables: dict[str, dict[str, str]], rates: Counter, utt: str, path: Path, text: str, speaker: str,
             label: str) -> None:
    """One kept clip into the tables, its duration read from its header (rates counts (rate, channels))."""
    seconds, rate, channels = clip_duration(path)
    rates[(rate, channels)] += 1
    tables["wav.scp"][utt] = str(path)
    tables["text"][utt] = text
    tables["utt2spk"][utt] = speaker
    tables["utt2emo"][utt] = label
    tables["utt2dur"][utt] = f"{seconds:.4f}"


def check_map(emotion_map: EmotionMap, raw_labels: list[str], corpus: str) -> None:
    """A label map for this corpus: it merges the corpus's raw labels, and each of its classes can get clips."""
    bad_merge = sorted(set(emotion_map.merge) - set(raw_labels))
    never = [e for e in emotion_map.emotions if e not in raw_labels and e not in emotion_map.merge.values()]
    if bad_merge or never:
        raise MtlserError(f"{emotion_map.source}: {' '.join(bad_merge + never)} are not {corpus} labels "
                          f"({' '.join(raw_labels)}) nor merge targets; a label map for {corpus} keeps and merges "
                          "those labels")


def write_data_dir(out: Path, tables: dict[str, dict[str, str]], emotion_map: EmotionMap,
                   spk2gender: dict[str, str] | None = None) -> None:
    """The data dir, its ``emotions`` inventory and spk2gender, appearing in one piece; then validated."""
    emotions = check_labels(list(emotion_map.emotions), emotion_map.source)
    with atomic_dir(out) as tmp:
        for name, table in tables.items():
            write_table(tmp / name, table)
        write_table(tmp / "spk2utt", spk2utt_from_utt2spk(tables["utt2spk"]))
        write_inventory(tmp, emotions)
        if spk2gender:
            write_table(tmp / "spk2gender", spk2gender)
    validate_data_dir(out)  # labels against the inventory just written; warns of classes without clips


def write_report(report_dir: Path, report: dict, skipped: list[tuple[str, str]]) -> None:
    """REPORT_DIR/counts.json and REPORT_DIR/skipped (``reason path`` per file that is not a used clip)."""
    atomic_write_text(report_dir / "counts.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(report_dir / "skipped", "".join(f"{reason} {path}\n" for reason, path in sorted(skipped)))


def count_table(tables: dict[str, dict[str, str]], emotions: list[str]) -> dict:
    """Kept utterances per emotion (inventory order) and per speaker."""
    kept = Counter(tables["utt2emo"].values())
    per_speaker: dict[str, dict[str, int]] = {}
    for utt, emo in tables["utt2emo"].items():
        per_speaker.setdefault(tables["utt2spk"][utt], {e: 0 for e in emotions})[emo] += 1
    return {"total": len(tables["utt2emo"]), "counts": {e: kept[e] for e in emotions},
            "per_speaker": {k: per_speaker[k] for k in sorted(per_speaker, key=sort_key)}}


def write_outputs(out: Path, tables: dict[str, dict[str, str]], emotion_map: EmotionMap,
                  spk2gender: dict[str, str] | None, skipped: list[tuple[str, str]], rates: Counter,
                  report_dir: Path, facts: dict, clips_name: str = "clips", skipped_note: str = "") -> dict:
    """The data dir, then the count report (kept counts, the corpus's ``facts``, sample rates, skip
    reasons) in REPORT_DIR, and the summary lines of the log; returns the report."""
    write_data_dir(out, tables, emotion_map, spk2gender)
    report = count_table(tables, emotion_map.emotions)
    report.update(facts)
    report["sample_rates"] = {f"{r} Hz x{c}": n for (r, c), n in sorted(rates.items())}
    report["skipped"] = dict(sorted(Counter(reason for reason, _ in skipped).items()))
    write_report(report_dir, report, skipped)
    logger.info("%s found: %d from %d actors (%s); kept: %d %s", clips_name, report["clips"], report["actors"],
                " ".join(f"{k}={v}" for k, v in report["raw_emotions"].items()), report["total"],
                " ".join(f"{k}={v}" for k, v in report["counts"].items()))
    logger.info("skipped files%s: %s", skipped_note,
                " ".join(f"{k}={v}" for k, v in report["skipped"].items()) or "none")
    not_16k = sum(n for (r, c), n in rates.items() if (r, c) != (16000, 1))
    if not_16k:
        logger.info("%d clips are not 16 kHz mono (%s); stage 2 converts them once into data/wav16k", not_16k,
                    ", ".join(report["sample_rates"]))
    logger.info("wrote %s (%d utterances, %d speakers) and %s", out, report["total"], len(report["per_speaker"]),
                report_dir)
    return report


def compare_counts(name: str, found: dict[str, int], expected: dict[str, int]) -> list[str]:
    """Lines naming each count that differs from the release's (missing keys count 0)."""
    keys = list(expected) + [k for k in found if k not in expected]
    return [f"{name} {k}: {found.get(k, 0)}, the release has {expected.get(k, 0)}"
            for k in keys if found.get(k, 0) != expected.get(k, 0)]


def release_problems(report: dict, clips: int, actors: int, emotions: dict[str, int],
                     clips_name: str = "clips") -> list[str]:
    """Lines naming each of the report's totals (clips, actors, per raw emotion) that the release's differ from."""
    problems = []
    if report["clips"] != clips:
        problems.append(f"{clips_name}: {report['clips']}, the release has {clips}")
    if report["actors"] != actors:
        problems.append(f"actors: {report['actors']}, the release has {actors}")
    return problems + compare_counts("emotion", report["raw_emotions"], emotions)


def warn_release_counts(corpus: str, problems: list[str], report_dir: Path) -> bool:
    """A loud warning listing the counts that differ; True when there are none."""
    if not problems:
        logger.info("counts match the full %s release", corpus)
        return True
    banner = "!" * 78
    shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    logger.warning(
        "\n%s\nThis %s copy does not give the counts of the full release:\n  %s\n"
        "Results will not be comparable with published ones. Check the copy (missing, edited or extra files?);\n"
        "%s/counts.json and skipped list what was found.\n%s",
        banner, corpus, "\n  ".join(shown), report_dir, banner,
    )
    return False


def main(argv: list[str] | None, corpus: str, prepare, db_root_help: str, map_name: str, release_total: str) -> int:
    """The command line of a clip prep: ``python -m mtlser.data.<corpus> --db-root DIR --out data/all ...``."""
    parser = argparse.ArgumentParser(description=f"{corpus} release -> Kaldi data dir (stage 0).")
    parser.add_argument("--db-root", required=True, help=db_root_help)
    parser.add_argument("--out", required=True, help="data dir to write, e.g. data/all")
    parser.add_argument("--emotion-map", default=None,
                        help=f"label map YAML (default conf/emotions/{map_name}.yaml; format: mtlser/data/emotions.py)")
    parser.add_argument("--report-dir", default=None,
                        help=f"where counts.json and skipped go (default: OUT/../local/{map_name}_prep)")
    parser.add_argument("--no-check-counts", action="store_true",
                        help=f"do not compare the counts with the full release's {release_total}")
    args = parser.parse_args(argv)
    setup_logging()
    prepare(args.db_root, args.out, args.emotion_map, check_counts=not args.no_check_counts,
            report_dir=args.report_dir)
    return 0


def relpath(path: Path, root: Path) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return str(path)
