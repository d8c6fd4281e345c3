"""Several data dirs -> one (Kaldi's ``utils/combine_data.sh``, ours), onto one declared emotion inventory.

Usage:
    python -m mtlser.data.combine OUT [NAME=]DIR [NAME=]DIR ... [--emotion-map conf/emotions/cross_corpus.yaml]

Each input is a validated data dir; NAME (default: the dir's own name) names its corpus. Its utt2emo
labels are mapped through the emotion map (its ``emotions`` become OUT's inventory, its ``merge`` renames);
an utterance whose label the map neither keeps nor merges leaves, and the log says how many per corpus
and label. OUT gets ``utt2corpus`` (utterance -> corpus name) and ``utt2origid`` (the corpus's clip name:
an input's own utt2origid, else its utterance id).

Ids stay unique: when two inputs share an utterance or speaker id, every speaker and utterance id is
prefixed with its corpus, ``<corpus>-<id>`` ('-' for the reason mtlser.corpora.prep.SPEAKER_SEP gives), so
speaker ids stay prefixes of utterance ids; otherwise ids are kept as they are. Per-utterance files that not
every input has are left out (as Kaldi's combine_data does), as is spk2gender unless every input has one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from mtlser.data.datadir import DataDir, DataDirError, read_table, validate_data_dir, write_table
from mtlser.data.emotions import EmotionMap, load_emotion_map
from mtlser.utils import run_main, setup_logging
from mtlser.utils.fileio import check_output

logger = logging.getLogger(__name__)

#: utterance -> the name of the corpus it came from
UTT2CORPUS = "utt2corpus"
ORIGID = "utt2origid"
#: The inventory corpora share (EmoBox's four cross-corpus classes).
DEFAULT_MAP = Path(__file__).resolve().parents[2] / "conf" / "emotions" / "cross_corpus.yaml"
SEP = "-"


def parse_input(arg: str) -> tuple[str, Path]:
    """``NAME=DIR`` or ``DIR`` (the corpus is then named after the dir)."""
    name, sep, path = arg.partition("=")
    if not sep:
        name, path = Path(arg).name, arg
    if not name or SEP in name or "=" in path:
        raise DataDirError(f"'{arg}': an input is DIR or NAME=DIR, NAME without '{SEP}'")
    return name, Path(path)


def combine(out: str | Path, inputs: list[tuple[str, Path]], emotion_map: EmotionMap,
            check_audio: bool = True) -> dict[str, Counter]:
    """Write the combined dir ``out``; return, per corpus, the counts of the labels that left."""
    names = [n for n, _ in inputs]
    if len(set(names)) != len(names):
        raise DataDirError(f"corpus names {names} repeat; name each input NAME=DIR")
    check_output(out, [path for _, path in inputs], "out")
    dirs = [(name, validate_data_dir(path, check_audio=check_audio)) for name, path in inputs]
    common = set.intersection(*(set(dd.tables) for _, dd in dirs))
    prefix = _collide(dirs)
    tables: dict[str, dict[str, str]] = {t: {} for t in sorted(common | {ORIGID})}
    tables[UTT2CORPUS] = {}
    genders: dict[str, str] | None = {}
    left: dict[str, Counter] = {}
    for name, dd in dirs:
        new_id = (lambda x, n=name: f"{n}{SEP}{x}") if prefix else (lambda x: x)
        left[name] = Counter()
        for utt in dd.utts:
            label = emotion_map.apply(dd["utt2emo"][utt])
            if label is None:
                left[name][dd["utt2emo"][utt]] += 1
                continue
            uid = new_id(utt)
            for t in common:
                tables[t][uid] = dd[t][utt]
            tables["utt2emo"][uid] = label
            tables["utt2spk"][uid] = new_id(dd["utt2spk"][utt])
            tables[ORIGID][uid] = dd[ORIGID][utt] if ORIGID in dd.tables else utt
            tables[UTT2CORPUS][uid] = name
        if genders is not None and (dd.path / "spk2gender").is_file():
            genders.update({new_id(s): g for s, g in read_table(dd.path / "spk2gender").items()})
        else:
            genders = None
        for label, n in sorted(left[name].items()):
            logger.info("%s: %d utterances of '%s' left out (not in %s)", name, n, label, emotion_map.source)
    if not tables["utt2spk"]:
        raise DataDirError(f"no utterance of {' '.join(names)} has a label of {emotion_map.source}")
    out = Path(out)
    DataDir(tables, emotions=emotion_map.emotions).write(out)
    speakers = set(tables["utt2spk"].values())
    if genders:
        write_table(out / "spk2gender", {s: g for s, g in genders.items() if s in speakers})
    validate_data_dir(out, check_audio=False)
    logger.info("wrote %s: %d utterances of %s%s", out, len(tables["utt2spk"]), " ".join(names),
                " (ids prefixed with their corpus: two corpora share ids)" if prefix else "")
    return left


def _collide(dirs: list[tuple[str, DataDir]]) -> bool:
    """Do two inputs share an utterance or a speaker id?"""
    seen_u: set[str] = set()
    seen_s: set[str] = set()
    for _, dd in dirs:
        utts, spks = set(dd["utt2spk"]), set(dd["utt2spk"].values())
        if utts & seen_u or spks & seen_s:
            return True
        seen_u |= utts
        seen_s |= spks
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Combine data dirs of several corpora onto one emotion inventory.")
    parser.add_argument("out", help="the combined data dir to write")
    parser.add_argument("inputs", nargs="+", metavar="[NAME=]DIR", help="a data dir and its corpus's name")
    parser.add_argument("--emotion-map", default=str(DEFAULT_MAP),
                        help="label map onto the shared inventory (default: %(default)s)")
    parser.add_argument("--no-audio-check", action="store_true", help="do not check that audio files exist")
    args = parser.parse_args(argv)
    setup_logging()
    combine(args.out, [parse_input(a) for a in args.inputs], load_emotion_map(args.emotion_map),
            check_audio=not args.no_audio_check)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
