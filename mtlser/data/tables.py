"""Kaldi's line-oriented tables, read and written: ``key value...`` lines, keys unique, sorted in C order.

The lowest rung of mtlser.data: the data-dir contract (mtlser.data.datadir) and the attribute tables
(mtlser.data.attributes) both read and write through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_open


class DataDirError(MtlserError):
    """A data dir breaks the contract; the message names the file and line."""


def sort_key(key: str) -> bytes:
    """C-locale order is byte order of the UTF-8 encoding."""
    return key.encode("utf-8")


def read_table(path: str | os.PathLike, *, allow_empty_value: bool = False) -> dict[str, str]:
    """Read a ``key value...`` file into a dict (value = rest of the line, stripped).

    Raises DataDirError naming ``file:line`` for a missing value or a duplicate key.
    Order is kept as in the file; :func:`check_sorted` checks it separately.
    """
    path = Path(path)
    if not path.is_file():
        raise DataDirError(f"{path}: no such file")
    table: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                raise DataDirError(f"{path}:{lineno}: empty line; remove it")
            parts = line.split(maxsplit=1)
            key = parts[0]
            if line[0].isspace():
                raise DataDirError(f"{path}:{lineno}: line starts with whitespace; the first field must be the key")
            value = parts[1].strip() if len(parts) > 1 else ""
            if not value and not allow_empty_value:
                raise DataDirError(f"{path}:{lineno}: key '{key}' has no value")
            if key in table:
                raise DataDirError(f"{path}:{lineno}: duplicate key '{key}'; keys must be unique")
            table[key] = value
    return table


def write_table(path: str | os.PathLike, table: Mapping[str, str]) -> None:
    """Write ``key value`` lines sorted in C order, atomically."""
    with atomic_open(path) as f:
        for key in sorted(table, key=sort_key):
            value = table[key]
            f.write(f"{key} {value}\n" if value != "" else f"{key}\n")
