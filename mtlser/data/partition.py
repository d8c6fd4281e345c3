"""Folds from a published partition (protocol ``partition``), in EmoBox's metadata format.

A figure is comparable with a benchmark's only on the benchmark's folds. EmoBox
(Ma et al., "EmoBox: Multilingual Multi-corpus Speech Emotion Recognition Toolkit
and Benchmark", Interspeech 2024; github.com/emo-box/EmoBox) publishes its folds
per corpus as one folder per fold, each with the fold's training and test lists::

    PARTITION_DIR/fold_1/<corpus>_train_fold_1.jsonl
    PARTITION_DIR/fold_1/<corpus>_test_fold_1.jsonl
    PARTITION_DIR/fold_2/...                            (as many folds as the corpus has)

Each list holds one JSON object per line; the fields read are ``key`` (the
benchmark's id of the clip), ``wav`` (the clip's path in the benchmark's own
download tree) and ``emo`` (its label, in the benchmark's spelling), e.g.
``{"key": "corpus-0001-b", "wav": "downloads/corpus/audio/0001_b.wav", "emo": "Sad", ...}``.
Other fields, other files of the folders (``.json`` twins, label maps, a valid
list) are not read: model selection draws its valid set from the fold's training
side, as with every protocol (``--valid share``), never from its test side.

An entry is the utterance of data/all whose id is its ``key``, else the one whose
audio file (wav.scp, before stage 2's conversion) has the file name of its
``wav`` without extension (the benchmark's keys are not our ids; the corpora's file
names are unique). An entry matching no utterance, or several, is an error naming
the file and line: the data dir and the partition must describe the same corpus.

Checked (errors): a fold's training and test lists share no utterance and list
none twice; each of the partition's labels is one of ours (spellings may differ,
``ANG`` for ang, and several may merge into one, Calm and Neutral when calm is
merged; one partition label spread over two of ours means files and data disagree).
Reported (not errors): speakers in both a fold's training and test lists (such a
partition is not speaker-independent: EmoBox's single CREMA-D fold has all 91
actors on both sides), and utterances of data/all a fold does not list.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from mtlser.data.datadir import DataDir, sort_key
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)

_FOLD_DIR = re.compile(r"^fold_(\d+)$")
FIELDS = ("key", "wav", "emo")


@dataclass
class Entry:
    key: str
    wav: str
    emo: str
    where: str  # file:line


def read_list(path: Path) -> list[Entry]:
    """One fold's training or test list (JSON lines)."""
    entries, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise MtlserError(f"{where}: not a JSON object ({e.msg}); expected one object per line") from None
            if not isinstance(obj, dict) or any(not isinstance(obj.get(k), str) for k in FIELDS):
                raise MtlserError(f"{where}: expected an object with string fields {', '.join(FIELDS)}")
            if obj["key"] in seen:
                raise MtlserError(f"{where}: key '{obj['key']}' is listed twice (first at line {seen[obj['key']]})")
            seen[obj["key"]] = lineno
            entries.append(Entry(obj["key"], obj["wav"], obj["emo"], where))
    if not entries:
        raise MtlserError(f"{path}: no entries")
    return entries


def fold_lists(partition_dir: Path) -> list[tuple[int, Path, Path]]:
    """(fold number, training list, test list) per ``fold_<N>/`` folder, folds 1..N."""
    if not partition_dir.is_dir():
        raise MtlserError(f"{partition_dir}: partition folder not found")
    numbers = sorted(int(m.group(1)) for p in partition_dir.iterdir() if p.is_dir()
                     for m in [_FOLD_DIR.match(p.name)] if m)
    if not numbers:
        raise MtlserError(f"{partition_dir}: no fold_<N>/ folders; expected EmoBox's layout, "
                          "fold_1/<corpus>_train_fold_1.jsonl and fold_1/<corpus>_test_fold_1.jsonl, ...")
    if numbers != list(range(1, len(numbers) + 1)):
        raise MtlserError(f"{partition_dir}: folds {numbers}; expected fold_1 ... fold_{len(numbers)} without gaps")
    out = []
    for n in numbers:
        fold_dir = partition_dir / f"fold_{n}"
        found = []
        for side in ("train", "test"):
            files = sorted(fold_dir.glob(f"*_{side}_fold_{n}.jsonl"))
            if len(files) != 1:
                raise MtlserError(f"{fold_dir}: expected one *_{side}_fold_{n}.jsonl, found "
                                  f"{[f.name for f in files] or 'none'}")
            found.append(files[0])
        out.append((n, found[0], found[1]))
    return out


class Matcher:
    """Partition entries -> utterance ids of a data dir (see the module doc)."""

    def __init__(self, dd: DataDir):
        self.dd = dd
        self.ids = set(dd["utt2spk"])
        self.by_name: dict[str, list[str]] = defaultdict(list)
        for utt, path in dd["wav.scp"].items():
            if not path.endswith("|"):  # a Kaldi pipe has no file name
                self.by_name[_stem(path)].append(utt)

    def utt(self, e: Entry) -> str:
        if e.key in self.ids:
            return e.key
        utts = self.by_name.get(_stem(e.wav), [])
        if len(utts) == 1:
            return utts[0]
        if utts:
            raise MtlserError(f"{e.where}: key '{e.key}' (wav {e.wav}) matches several utterances by file name "
                              f"({utts[:3]}); the partition cannot be read against {self.dd.path}")
        raise MtlserError(f"{e.where}: key '{e.key}' (wav {e.wav}) is no utterance of {self.dd.path}: neither an "
                          "utterance id nor the file name of a wav.scp entry. Was data/all prepared from the whole "
                          "corpus the partition is for, with a label map that keeps every clip?")


def _stem(path: str) -> str:
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def partition_folds(partition_dir: str | Path, dd: DataDir) -> list[tuple[str, list[str], list[str]]]:
    """(fold name, test utterances, training-side utterances) per fold of the partition."""
    partition_dir = Path(partition_dir)
    matcher = Matcher(dd)
    labels: dict[str, Counter] = defaultdict(Counter)  # partition label -> our labels of its entries
    label_where: dict[tuple[str, str], str] = {}
    folds = []
    for n, train_file, test_file in fold_lists(partition_dir):
        sides = {}
        for side, path in (("train", train_file), ("test", test_file)):
            utts: dict[str, str] = {}
            for e in read_list(path):
                utt = matcher.utt(e)
                if utt in utts:
                    raise MtlserError(f"{e.where}: key '{e.key}' is utterance {utt}, which {utts[utt]} lists too")
                utts[utt] = e.where
                ours = dd["utt2emo"][utt]
                labels[e.emo][ours] += 1
                label_where.setdefault((e.emo, ours), e.where)
            sides[side] = utts
        both = sorted(set(sides["train"]) & set(sides["test"]), key=sort_key)
        if both:
            raise MtlserError(f"fold_{n}: {len(both)} utterances are in both {train_file.name} and {test_file.name}, "
                              f"e.g. {both[0]} ({sides['test'][both[0]]}); a test utterance must never train")
        spk = dd["utt2spk"]
        shared = {spk[u] for u in sides["train"]} & {spk[u] for u in sides["test"]}
        if shared:
            logger.warning("fold_%d is not speaker-independent: %d speakers are in both its training and test lists "
                           "(e.g. %s); that is the partition's design, figures on it are not speaker-independent",
                           n, len(shared), sorted(shared, key=sort_key)[0])
        unlisted = len(dd["utt2spk"]) - len(sides["train"]) - len(sides["test"])
        if unlisted:
            logger.warning("fold_%d lists %d of the %d utterances of %s; the other %d are not used in it", n,
                           len(sides["train"]) + len(sides["test"]), len(dd["utt2spk"]), dd.path, unlisted)
        folds.append((f"{partition_dir.name}/fold_{n}", sorted(sides["test"], key=sort_key),
                      sorted(sides["train"], key=sort_key)))
    split_labels = {p: c for p, c in labels.items() if len(c) > 1}
    if split_labels:
        p, c = sorted(split_labels.items())[0]
        examples = ", ".join(f"{ours} ({n}, e.g. {label_where[(p, ours)]})" for ours, n in c.most_common())
        raise MtlserError(f"{partition_dir}: the partition's label '{p}' is more than one of our labels: {examples}; "
                          "the partition and data/all disagree on these clips' emotions")
    logger.info("partition %s: %d folds; its labels -> ours: %s", partition_dir, len(folds),
                ", ".join(f"{p}->{next(iter(c))}" for p, c in sorted(labels.items())))
    return folds
