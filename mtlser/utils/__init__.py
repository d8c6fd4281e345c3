"""Small helpers shared by every stage: errors (and what a failed write means), logging, the CLI wrapper."""

from __future__ import annotations

import errno
import logging
import os
import re
import sys


class MtlserError(Exception):
    """An error whose message tells the user what is wrong and what to do.

    Command-line entry points print it without a traceback and exit 1.
    """


#: What a failed write means to the user, by errno.
_WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file would exceed the file-size limit (ulimit -f)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no permission to write there",
}


def os_error_in(exc: BaseException) -> OSError | None:
    """The file system's error behind ``exc``: ``exc`` itself, or the ``os error N`` that Rust writers
    (safetensors) fold into their own messages."""
    if isinstance(exc, OSError):
        return exc
    m = re.search(r"os error (\d+)", str(exc))
    if m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    return None


def write_failure(path: str | os.PathLike, exc: BaseException, intact: str = "") -> MtlserError | None:
    """One line for a write of ``path`` that the file system refused (which file, why, what is intact);
    None when ``exc`` is not such a failure."""
    err = os_error_in(exc)
    if err is None:
        return None
    why = _WRITE_FAILURES.get(err.errno or -1, "")
    msg = f"{path}: cannot write it ({err.strerror or err}{': ' + why if why else ''})"
    return MtlserError(msg + (f"; {intact}" if intact else ""))


def require_gpu_for(device: str, option: str) -> None:
    """Refuse a cuda device when no GPU is visible, naming the option that asked (torch's own error is a
    traceback from deep inside the first tensor moved)."""
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MtlserError(f"{option} asks for cuda but no GPU is visible; use {option} cpu")


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to stderr (and to ``log_file`` when given), Kaldi/ESPnet style."""
    fmt = "%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=level, format=fmt, handlers=handlers, force=True)


def run_main(main, argv=None) -> int:
    """Run a CLI ``main``; turn MtlserError into a one-line message and exit code 1.

    So does a write the file system refuses anywhere (disk full, quota, ``ulimit -f``, read-only): the
    message names the file and the reason instead of a traceback.
    """
    try:
        return main(argv) or 0
    except MtlserError as e:
        _report(e)
        return 1
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
            raise
        _report(write_failure(e.filename or "(a file)", e))
        return 1


def _report(e: Exception) -> None:
    if logging.getLogger().handlers:
        logging.getLogger("mtlser").error("%s", e)
    else:
        print(f"ERROR: {e}", file=sys.stderr)
