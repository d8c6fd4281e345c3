"""Small helpers shared by every stage: atomic writes, logging, errors."""

from __future__ import annotations

import logging
import os
import sys


class MtlserError(Exception):
    """An error whose message tells the user what is wrong and what to do.

    Command-line entry points print it without a traceback and exit 1.
    """


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to stderr (and to ``log_file`` when given), Kaldi/ESPnet style."""
    fmt = "%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=level, format=fmt, handlers=handlers, force=True)


def run_main(main, argv=None) -> int:
    """Run a CLI ``main``; turn MtlserError into a one-line message and exit code 1."""
    try:
        return main(argv) or 0
    except MtlserError as e:
        if logging.getLogger().handlers:
            logging.getLogger("mtlser").error("%s", e)
        else:
            print(f"ERROR: {e}", file=sys.stderr)
        return 1
