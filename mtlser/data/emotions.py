"""The emotion inventory: which labels a corpus's recipe uses, in which order.

The order is the model's contract: a label's position is both its cross-entropy
class index and the emotion tag of its CTC tokens (``Vs1`` = stressed vowel in
an utterance of emotion 1). It is declared once per recipe, as data:

- a **label map** (YAML under ``conf/emotions/``) says how the corpus's raw labels
  become the inventory: ``emotions`` in index order, and ``merge`` for raw labels
  folded into another (IEMOCAP's exc -> hap). Raw labels that are neither in
  ``emotions`` nor merged are dropped by the corpus's prep, which reports them::

      emotions: [ang, hap, sad, neu]
      merge: {exc: hap}

- stage 0 writes the resulting list into the data dir as the file ``emotions``
  (one label a line, index order); stage 2 copies it into every fold's data dirs,
  and training copies it into the model dir (model.yaml). Every later stage reads
  it from there, never from code. A corpus's own ``local/data.sh`` writes it with
  one line (:mod:`mtlser.data.set_emotions`), from a label map or a list.

The config's ``data.emotions`` is null (the data's inventory) or a list that must
equal it, labels and order (:func:`check_same`): training stops before it starts
when they differ. Stage 1 leaves a copy next to each tagged token list, since the
tags are positions in this list, and training checks that copy too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mtlser.utils import MtlserError

#: The inventory file of a data dir.
INVENTORY = "emotions"

#: utt2emo's value for an utterance that has no class of the inventory but stays in the data dir for its
#: attributes (utt2attr; MSP-Podcast's "other" and "no agreement" segments): the class task leaves it out.
#: Not a label (a label starts with a letter or digit), so it never collides with one.
NO_CLASS = "-"

#: The class index of a NO_CLASS utterance in a dataset: cross entropy's ignore_index (torch's default), so
#: the CE term leaves it out.
NO_CLASS_INDEX = -100

#: A label is a token of a Kaldi table and a tag of CTC tokens: letters, digits, '_' and '-'.
_LABEL = re.compile(r"^[^\W][\w\-]*$")


def check_labels(emotions: list[str], where: str) -> list[str]:
    """An inventory is a non-empty list of distinct, well-formed labels."""
    if not isinstance(emotions, list) or not emotions:
        raise MtlserError(f"{where}: the emotion inventory must be a non-empty list of labels, got {emotions!r}")
    labels = [str(e) for e in emotions]
    bad = [e for e in labels if not _LABEL.match(e)]
    if bad:
        raise MtlserError(f"{where}: emotion labels {bad} are not single words (letters, digits, '_', '-')")
    dup = sorted({e for e in labels if labels.count(e) > 1})
    if dup:
        raise MtlserError(f"{where}: emotion labels {dup} appear more than once")
    if len(labels) < 2:
        raise MtlserError(f"{where}: an emotion inventory needs at least 2 labels, got {labels}")
    return labels


@dataclass
class EmotionMap:
    """Raw corpus labels -> inventory labels (see the module doc)."""

    emotions: list[str]
    merge: dict[str, str] = field(default_factory=dict)
    source: str = "<emotion map>"

    def __post_init__(self) -> None:
        self.emotions = check_labels(self.emotions, self.source)
        bad = {k: v for k, v in self.merge.items() if v not in self.emotions}
        if bad:
            raise MtlserError(f"{self.source}: merge targets {bad} are not in emotions {self.emotions}")
        clash = sorted(set(self.merge) & set(self.emotions))
        if clash:
            raise MtlserError(f"{self.source}: {clash} are both kept labels and merged into another")

    def apply(self, raw: str) -> str | None:
        """The inventory label of a raw label, or None when the raw label is not used (dropped)."""
        if raw in self.merge:
            return self.merge[raw]
        return raw if raw in self.emotions else None


def load_emotion_map(path: str | os.PathLike) -> EmotionMap:
    path = Path(path)
    if not path.is_file():
        raise MtlserError(f"{path}: emotion map not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise MtlserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict) or "emotions" not in data:
        raise MtlserError(f"{path}: expected a mapping with `emotions: [...]` (and optionally `merge: {{raw: label}}`)")
    unknown = set(data) - {"emotions", "merge"}
    if unknown:
        raise MtlserError(f"{path}: unknown keys {sorted(unknown)}; expected emotions and merge")
    merge = data.get("merge") or {}
    if not isinstance(merge, dict):
        raise MtlserError(f"{path}: merge must be a mapping raw label -> label, got {merge!r}")
    return EmotionMap(list(data["emotions"] or []), {str(k): str(v) for k, v in merge.items()}, str(path))


def read_inventory(data_dir: str | os.PathLike) -> list[str]:
    """The ``emotions`` file of a data dir (index order)."""
    path = Path(data_dir) / INVENTORY
    if not path.is_file():
        raise MtlserError(f"{path}: no emotion inventory; the data preparation (local/data.sh) writes it: "
                          "one label a line, "
                          f"in class-index order (python -m mtlser.data.set_emotions {Path(data_dir)} --map FILE "
                          f"or --emotions 'LABEL ...'); rerun the data preparation, then the tokens and folds steps")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return []  # no classes: a dimensional-only corpus (every utt2emo is NO_CLASS)
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line != line.strip():
            raise MtlserError(f"{path}:{lineno}: expected one label per line, no blanks or spaces; got {line!r}")
    return check_labels(lines, str(path))


def write_inventory(data_dir: str | os.PathLike, emotions: list[str]) -> None:
    """The inventory file; an empty list writes an empty file (a corpus with attributes and no classes)."""
    from mtlser.utils.fileio import atomic_write_text

    labels = check_labels(list(emotions), f"{data_dir}/{INVENTORY}") if list(emotions) else []
    atomic_write_text(Path(data_dir) / INVENTORY, "".join(f"{e}\n" for e in labels))


def check_same(declared: list[str], where_declared: str, inventory: list[str], where_inventory: str,
               fix: str = "rerun the data preparation, tokens and folds steps so that they agree") -> None:
    """Two statements of the inventory must agree label for label, in order (the order is the class index)."""
    declared, inventory = [str(e) for e in declared], [str(e) for e in inventory]
    if declared == inventory:
        return
    only_declared = [e for e in declared if e not in inventory]
    only_inventory = [e for e in inventory if e not in declared]
    if only_declared or only_inventory:
        diff = (f"only in the first: {' '.join(only_declared) or '-'}; "
                f"only in the second: {' '.join(only_inventory) or '-'}")
    else:
        diff = "same labels, other order: the order is the class index and the CTC tag"
    raise MtlserError(f"{where_declared} has emotions [{' '.join(declared)}] but {where_inventory} has "
                      f"[{' '.join(inventory)}] ({diff}); {fix}")


def inventory_of(data_dirs: list[str | os.PathLike]) -> tuple[list[str], str]:
    """The inventory shared by these data dirs (e.g. a fold's train/ and valid/), and the file it was read from."""
    dirs = [Path(d) for d in data_dirs]
    emotions = read_inventory(dirs[0])
    where = str(dirs[0] / INVENTORY)
    for d in dirs[1:]:
        check_same(read_inventory(d), str(d / INVENTORY), emotions, where)
    return emotions, where
