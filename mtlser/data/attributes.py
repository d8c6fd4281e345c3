"""Dimensional emotion attributes of a data dir: ``utt2attr`` and its declaration ``attributes``.

The one owner of the attribute data format (issue 21, /work/notes/ATTR_SPEC.md):

- ``attributes`` declares the attributes once, as ``emotions`` declares the classes: one line per
  attribute, in column order, ``<name> <min> <max>`` (``arousal 1 7``). The order is the regression
  head's output order.
- ``utt2attr`` holds per utterance the values in that order: ``<utt-id> <v1> <v2> ...`` (floats),
  keys sorted in the C locale like every Kaldi table.

A data dir may have classes, attributes or both. When one of the two files is present the other must
be too, and every utterance of the dir has a value for every attribute (the regression task needs a
target for each utterance it trains or scores on). Stage 2 copies ``attributes`` into every fold
through :class:`mtlser.data.datadir.DataDir`, and training records it in model.yaml.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from mtlser.utils import MtlserError

#: The declaration file of a data dir.
ATTRIBUTES = "attributes"
#: The per-utterance values file of a data dir.
UTT2ATTR = "utt2attr"

_NAME = re.compile(r"^[^\W\d][\w\-]*$")


class AttributesError(MtlserError):
    """An attribute file breaks the format; the message names the file and line."""


@dataclass(frozen=True)
class Attribute:
    name: str
    low: float
    high: float

    def line(self) -> str:
        return f"{self.name} {_num(self.low)} {_num(self.high)}"


def _num(x: float) -> str:
    # 1.0 -> "1": the declaration reads as the corpus documents its scale.
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _float(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AttributesError(f"{where}: {what} '{text}' is not a number") from None
    if not math.isfinite(value):
        raise AttributesError(f"{where}: {what} '{text}' is not a finite number")
    return value


def parse_declaration(lines: list[str], path: str) -> list[Attribute]:
    """Attributes from the lines of an ``attributes`` file; errors name ``path:line``."""
    attrs: list[Attribute] = []
    for lineno, line in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        fields = line.split()
        if len(fields) != 3:
            raise AttributesError(f"{where}: '{line.rstrip()}' has {len(fields)} fields; a line is "
                                  f"'<name> <min> <max>', e.g. 'arousal 1 7'")
        name, low_s, high_s = fields
        if not _NAME.match(name):
            raise AttributesError(f"{where}: attribute name '{name}' is not one word (letters, digits, '_', '-')")
        low, high = _float(low_s, where, "min"), _float(high_s, where, "max")
        if not low < high:
            raise AttributesError(f"{where}: attribute '{name}' has min {low_s} >= max {high_s}")
        if any(a.name == name for a in attrs):
            raise AttributesError(f"{where}: attribute '{name}' is declared twice")
        attrs.append(Attribute(name, low, high))
    if not attrs:
        raise AttributesError(f"{path}: declares no attribute; one line per attribute: '<name> <min> <max>'")
    return attrs


def read_declaration(data_dir: str | os.PathLike) -> list[Attribute]:
    path = Path(data_dir) / ATTRIBUTES
    if not path.is_file():
        raise AttributesError(f"{path}: no such file; a data dir with {UTT2ATTR} declares its attributes there "
                              f"('<name> <min> <max>' a line, in column order)")
    return parse_declaration(path.read_text(encoding="utf-8").splitlines(), str(path))


def has_attributes(data_dir: str | os.PathLike) -> bool:
    return (Path(data_dir) / ATTRIBUTES).is_file()


def write_declaration(data_dir: str | os.PathLike, attrs: list[Attribute]) -> None:
    from mtlser.utils.fileio import atomic_write_text
    parse_declaration([a.line() for a in attrs], str(Path(data_dir) / ATTRIBUTES))  # same rules as reading
    atomic_write_text(Path(data_dir) / ATTRIBUTES, "".join(a.line() + "\n" for a in attrs))


def declaration_to_yaml(attrs: list[Attribute]) -> list[dict]:
    """The form model.yaml and packs record: ``[{name, min, max}, ...]`` in column order."""
    return [{"name": a.name, "min": a.low, "max": a.high} for a in attrs]


def declaration_from_yaml(items: list, where: str) -> list[Attribute]:
    if not isinstance(items, list):
        raise AttributesError(f"{where}: attributes must be a list of {{name, min, max}}, got {items!r}")
    lines = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict) or set(item) != {"name", "min", "max"}:
            raise AttributesError(f"{where}: attribute {i} must be {{name, min, max}}, got {item!r}")
        lines.append(f"{item['name']} {item['min']} {item['max']}")
    return parse_declaration(lines, where)


def parse_values(value: str, attrs: list[Attribute], where: str, utt: str) -> list[float]:
    """The values of one ``utt2attr`` line (after its key), checked against the declared scales."""
    fields = value.split()
    if len(fields) != len(attrs):
        raise AttributesError(
            f"{where}: utterance '{utt}' has {len(fields)} value(s); the declaration has {len(attrs)} "
            f"({' '.join(a.name for a in attrs)}): one value per attribute, in that order")
    values = []
    for a, text in zip(attrs, fields):
        v = _float(text, where, f"utterance '{utt}': {a.name}")
        if not a.low <= v <= a.high:
            raise AttributesError(f"{where}: utterance '{utt}' has {a.name} {text}, outside its scale "
                                  f"[{_num(a.low)}, {_num(a.high)}]; fix the value or the declaration")
        values.append(v)
    return values


def check_table(path: str | os.PathLike, table: Mapping[str, str], attrs: list[Attribute],
                utts: list[str] | None = None) -> dict[str, list[float]]:
    """Parse and check a ``utt2attr`` table read in file order; ``utts``: every utterance that needs values."""
    values = {utt: parse_values(v, attrs, f"{path}:{lineno}", utt) for lineno, (utt, v) in enumerate(table.items(), 1)}
    if utts is not None:
        lack = [u for u in utts if u not in values]
        if lack:
            raise AttributesError(f"{path}: {len(lack)} utterance(s) have no attribute values, e.g. "
                                  f"{lack[:3]}; every utterance needs one value per attribute (or drop it in "
                                  f"local/data.sh)")
    return values


def read_values(data_dir: str | os.PathLike, attrs: list[Attribute] | None = None) -> dict[str, list[float]]:
    """``utt2attr`` of a data dir as ``{utt: [values]}``, checked against its declaration."""
    from mtlser.data.datadir import read_table
    data_dir = Path(data_dir)
    attrs = attrs if attrs is not None else read_declaration(data_dir)
    return check_table(data_dir / UTT2ATTR, read_table(data_dir / UTT2ATTR), attrs)


def write_values(path: str | os.PathLike, values: Mapping[str, list[float]]) -> None:
    """Write a ``utt2attr``-format file (keys in C order), atomically; used for data and hypotheses."""
    from mtlser.data.datadir import write_table
    write_table(path, {u: " ".join(f"{float(x):.6g}" for x in vs) for u, vs in values.items()})


def validate(data_dir: str | os.PathLike, table: Mapping[str, str] | None, utts: list[str]) -> list[Attribute] | None:
    """The data-dir validator's attribute check: both files or neither; values on the scale for every utt."""
    data_dir = Path(data_dir)
    declared = has_attributes(data_dir)
    if table is None and not declared:
        return None
    if table is None:
        raise AttributesError(f"{data_dir / UTT2ATTR}: no such file, but {data_dir / ATTRIBUTES} declares "
                              f"attributes; write the values or remove the declaration")
    attrs = read_declaration(data_dir)
    check_table(data_dir / UTT2ATTR, table, attrs, utts)
    return attrs
