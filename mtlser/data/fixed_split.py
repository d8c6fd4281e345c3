"""The fixed-split protocol (``fixed``): training, development and test sets given by the corpus.

A corpus released with its own sets (MSP-Podcast: Train, Development, Test1, Test2, ...) is not
cross-validated: stage 2 writes its sets as ONE fold, so training, selection, inference, scoring and
packing run as for any fold. The corpus's prep writes the set of every utterance into ``data/all``::

    utt2set   utt  train | dev | test | test<name>      (e.g. test2; letters and digits after "test")

and ``python -m mtlser.data.split --protocol fixed`` writes ``OUT/fold01/``::

    train/         the utterances of set train
    valid/         the development set (dev): model selection reads it, and only it
    test/          the test set ``test``: the one RESULTS.md, the aggregate and the model card report
    test<name>/    each further test set, decoded into MODEL_DIR/decode_test<name> and scored there

and ``OUT/final/train/`` (train and dev: the final model never sees a test set). A corpus with several
test sets names its main one ``test`` (mtlser.corpora.msp_podcast: Test1). Every utterance has exactly
one set; an utterance listed twice, a set name not of this list, or an utterance without a set stops
stage 2 with the file and line.

A corpus without published sets gets them from a per-utterance table (its speakers, its sessions)::

    python -m mtlser.data.fixed_split --data-dir data/all --by utt2spk \\
        --sets "train=Ses01F,Ses01M,Ses02F dev=Ses04F test=Ses05F test2=Ses05M"

writes ``data/all/utt2set`` (egs/mini_avd: whole speakers per set, as MSP-Podcast's sets are meant to be).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mtlser.data.datadir import read_table, sort_key, write_table
from mtlser.data.fold_names import TEST_SET, is_test_set_name
from mtlser.utils import MtlserError, run_main, setup_logging

logger = logging.getLogger(__name__)

#: The protocol's name (ser.sh --protocol fixed; its folds dir is data/fixed).
PROTOCOL = "fixed"
#: The per-utterance file of a data dir that gives each utterance's set.
UTT2SET = "utt2set"
TRAIN_SET = "train"
DEV_SET = "dev"


def read_utt2set(path: str | Path) -> dict[str, str]:
    """``utt2set`` -> {utt: set}; an unknown set name or an utterance in two sets is an error naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise MtlserError(f"{path}: no such file; the fixed protocol reads each utterance's set from it "
                          f"(utt {TRAIN_SET}|{DEV_SET}|{TEST_SET}|{TEST_SET}<name>), written by the corpus's "
                          "local/data.sh")
    sets: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 2:
                raise MtlserError(f"{path}:{lineno}: expected 'utterance set', got {line.strip()!r}")
            utt, name = fields
            if name not in (TRAIN_SET, DEV_SET) and not is_test_set_name(name):
                raise MtlserError(f"{path}:{lineno}: unknown set '{name}' of '{utt}'; a set is {TRAIN_SET}, "
                                  f"{DEV_SET}, {TEST_SET} or {TEST_SET}<name> (letters and digits, e.g. test2)")
            if utt in sets:
                raise MtlserError(f"{path}:{lineno}: utterance '{utt}' is in two sets ({sets[utt]} at line "
                                  f"{first_line[utt]}, {name} here); give it one")
            sets[utt] = name
            first_line[utt] = lineno
    return sets


def fixed_sets(sets: dict[str, str], utts: list[str], path: str | Path) -> tuple[list[str], list[str],
                                                                                 dict[str, list[str]]]:
    """(train, dev, {test set: utterances}) of the data dir's utterances; test sets in name order, ``test`` first.

    Every utterance needs a set; train, dev and the test set ``test`` must not be empty.
    """
    missing = [u for u in utts if u not in sets]
    if missing:
        raise MtlserError(f"{path}: no set for {len(missing)} utterances of the data dir, e.g. '{missing[0]}'; "
                          "give every utterance one")
    extra = sorted(set(sets) - set(utts), key=sort_key)
    if extra:
        raise MtlserError(f"{path}: {len(extra)} utterances that the data dir does not have, e.g. '{extra[0]}'; "
                          "run: python -m mtlser.data.datadir fix on the data dir")
    by_set: dict[str, list[str]] = {}
    for u in sorted(utts, key=sort_key):
        by_set.setdefault(sets[u], []).append(u)
    for needed in (TRAIN_SET, DEV_SET, TEST_SET):
        if not by_set.get(needed):
            raise MtlserError(f"{path}: no utterance in set '{needed}'; the fixed protocol needs {TRAIN_SET} "
                              f"(training), {DEV_SET} (model selection) and {TEST_SET} (the main test set; further "
                              f"ones are {TEST_SET}<name>)")
    tests = {name: by_set[name] for name in sorted((n for n in by_set if is_test_set_name(n)), key=sort_key)}
    return by_set[TRAIN_SET], by_set[DEV_SET], tests


def parse_set_spec(spec: str) -> dict[str, str]:
    """``"train=a,b dev=c test=d"`` -> {value: set}; each set name checked, each value in one set."""
    out: dict[str, str] = {}
    for item in spec.split():
        name, sep, values = item.partition("=")
        if not sep or not values or (name not in (TRAIN_SET, DEV_SET) and not is_test_set_name(name)):
            raise MtlserError(f"--sets: '{item}' is not SET=VALUE,VALUE,... with SET {TRAIN_SET}, {DEV_SET}, "
                              f"{TEST_SET} or {TEST_SET}<name>")
        for v in values.split(","):
            if v in out:
                raise MtlserError(f"--sets: '{v}' is in two sets ({out[v]} and {name})")
            out[v] = name
    return out


def assign_sets(data_dir: str | Path, by: str, spec: str) -> dict[str, str]:
    """Write ``data_dir/utt2set`` from the per-utterance table ``by`` (utt2spk, utt2session, ...)."""
    data_dir = Path(data_dir)
    table = read_table(data_dir / by)
    value_set = parse_set_spec(spec)
    missing = sorted({v for v in table.values() if v not in value_set}, key=sort_key)
    if missing:
        raise MtlserError(f"--sets gives no set to {by} value(s) {' '.join(missing[:5])} of {data_dir / by}; "
                          "give every value one")
    sets = {u: value_set[v] for u, v in table.items()}
    write_table(data_dir / UTT2SET, sets)
    counts = {name: sum(1 for s in sets.values() if s == name) for name in sorted(set(sets.values()))}
    logger.info("%s: sets by %s: %s", data_dir / UTT2SET, by, " ".join(f"{k} {v}" for k, v in counts.items()))
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a data dir's utt2set from one of its per-utterance tables.")
    parser.add_argument("--data-dir", required=True, help="the data dir (data/all)")
    parser.add_argument("--by", required=True, help="the per-utterance table whose values decide, e.g. utt2spk")
    parser.add_argument("--sets", required=True, help="e.g. 'train=A,B dev=C test=D test2=E'")
    args = parser.parse_args(argv)
    setup_logging()
    assign_sets(args.data_dir, args.by, args.sets)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
