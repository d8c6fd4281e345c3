"""Fold naming, one owner.

Stage 2 writes ``data/<protocol>/foldNN/`` (NN counted from 01), stage 3 trains into
``exp/<tag>/foldNN/``, and every later step finds the folds by that name: the trainer, inference,
scoring and its reports, the final model, packing and the model cards; egs/TEMPLATE/ser.sh asks
for them through ``python -m mtlser.recipe``.
"""

from __future__ import annotations

import re
from pathlib import Path

#: The glob of the fold dirs inside a folds dir or an experiment dir.
FOLD_GLOB = "fold[0-9]*"

#: Stands for the fold in a path given once for all folds (a bpe token list lives in the fold dir);
#: the trainer replaces it with the fold's name.
FOLD_PLACEHOLDER = "foldNN"

#: The folds dir's table of how stage 2 split it (protocol, valid choice, seed, ...); read through
#: mtlser.expdir.read_protocol.
PROTOCOL_TABLE = "protocol"

#: The dir beside the folds that holds every speaker: the final model's data (``data/<protocol>/final``) and
#: the final model itself (``exp/<tag>/final``).
FINAL = "final"

#: A fold's main test set (``foldNN/test``, decoded into ``decode_test``). The fixed protocol may add more,
#: ``test<name>`` (mtlser.data.fixed_split); the other protocols have this one.
TEST_SET = "test"

_FOLD_NAME = re.compile(r"^fold\d+$")
_TEST_SET_DIR = re.compile(rf"^{TEST_SET}[A-Za-z0-9]*$")


def fold_name(n: int) -> str:
    """The dir name of fold ``n`` (1-based): fold01, fold02, ..."""
    return f"fold{n:02d}"


def is_fold_name(name: str) -> bool:
    return bool(_FOLD_NAME.match(name))


def fold_dirs(parent: str | Path) -> list[Path]:
    """The fold dirs inside ``parent``, in fold order: foldNN only (the glob alone would take a copy such as
    fold01.bak or fold01_old for a fold)."""
    return sorted(p for p in Path(parent).glob(FOLD_GLOB) if p.is_dir() and is_fold_name(p.name))


def is_test_set_name(name: str) -> bool:
    """``test`` or ``test<name>`` (letters and digits after "test")."""
    return bool(_TEST_SET_DIR.match(name))


def test_sets(fold_dir: str | Path) -> list[str]:
    """The test sets of a fold data dir: ``test`` first, then each ``test<name>`` in C order."""
    return sorted((p.name for p in Path(fold_dir).iterdir() if p.is_dir() and is_test_set_name(p.name)),
                  key=lambda n: (n != TEST_SET, n.encode("utf-8")))
