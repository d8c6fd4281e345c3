"""Progress of long loops: a tqdm bar on a terminal, plain log lines in a log file.

A tqdm bar redraws itself with carriage returns; in a log file (the recipe's
``exp/<tag>/logs/*.log``, a fold's ``train.log``) that leaves one unreadable line
per bar. So a bar is drawn only when stderr is a terminal; otherwise the loop
logs ``desc: i/N unit`` lines, at most one every ``log_every_s`` seconds, and one
at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             log_every_s: float = 60.0, logger: logging.Logger | None = None, disable: bool = False,
             **tqdm_kwargs) -> Iterator[T]:
    """Yield from ``iterable``, showing progress as a bar (terminal) or as log lines (anything else)."""
    if disable:
        yield from iterable
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, total=total, unit=unit, **tqdm_kwargs)
        return
    log = logger or logging.getLogger("mtlser")
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    of = f"/{total}" if total is not None else ""
    last = start = time.monotonic()
    i = 0
    for i, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= log_every_s:
            log.info("%s: %d%s %s (%.0f s)", desc, i, of, unit, now - start)
            last = now
    if i and time.monotonic() - start >= log_every_s:  # short loops stay silent: their caller logs the result
        log.info("%s: %d%s %s done (%.0f s)", desc, i, of, unit, time.monotonic() - start)
