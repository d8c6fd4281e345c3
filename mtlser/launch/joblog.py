"""A job's log, as both launchers (local, Slurm) treat it: its one writer (a lock) and its error line.

:func:`lock_logs` holds a lock beside each log (``.LOGNAME.lock``, :mod:`mtlser.utils.lock`) for a
launch's life, so that a second launch of the same jobs cannot rewrite a running job's log;
:func:`error_line` finds the one line by which a failed job said why, which :func:`failure` puts
beside the log's path in the launcher's report.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from mtlser.utils import MtlserError
from mtlser.utils.lock import hold_lock

#: Lines of a job's output that are its one-line error: what ``mtlser.utils.run_main`` prints for an
#: MtlserError (bare, or in the logging format "DATE TIME (module:line) ERROR: message"), and argparse's
#: "prog: error: message".
_ERROR_LINE = re.compile(r"^(?:\S+ \S+ \([^)]*\) )?(?:ERROR|CRITICAL): (?P<msg>.+)$|^(?P<usage>\S+: error: .+)$")
#: The longest error line shown on the terminal (the log has all of it).
MAX_ERROR_LINE = 2000


def error_line(log: str | os.PathLike) -> str | None:
    """The one-line message by which the job of ``log`` said why it failed; None when it printed none.

    The last error line of the job's output (:data:`_ERROR_LINE`: mtlser's own message, without the
    logging prefix, or argparse's), else the exception line of its last Python traceback. The
    launchers' framing lines ("# ...", a header's command of several lines included) are not the job's,
    nor is the output of a Slurm job's runs before its last requeue.
    """
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))  # the end of the log says how the job ended
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [ln.rsplit("\r", 1)[-1].rstrip() for ln in text.split("\n")]
    # The job's output: after the header (whose command may span lines) and, on Slurm, after its last requeue.
    starts = [i for i, ln in enumerate(lines) if ln.startswith(("# Started at ", "# Requeued "))]
    lines = [ln for ln in lines[starts[-1] + 1 if starts else 0:] if not ln.startswith("#")]
    found = None
    for ln in lines:
        m = _ERROR_LINE.match(ln)
        if m:
            found = m.group("msg") or m.group("usage")
    if found is None:
        for i, ln in enumerate(lines):
            if ln.startswith("Traceback (most recent call last):"):
                found = next((x for x in lines[i + 1:] if x and not x[0].isspace()), found)
    if found is not None and len(found) > MAX_ERROR_LINE:
        found = found[:MAX_ERROR_LINE] + " …"
    return found


def failure(log: str | os.PathLike, why: str) -> str:
    """How a failed job is reported: "(why): its error line; see LOG" (without the line when it printed none)."""
    line = error_line(log)
    return f"({why}){': ' + line if line else ''}; see {log}"


def log_lock(log: str | os.PathLike) -> Path:
    """The lock file that the launcher running the job of ``log`` holds."""
    log = Path(log)
    return log.parent / f".{log.name}.lock"


def lock_logs(logs: dict[str, Path], stack: contextlib.ExitStack) -> None:
    """Lock the log of every job in ``logs`` (job, e.g. "JOB=1" -> its log) for the life of ``stack``; raise
    MtlserError naming the first log that another launch holds (nothing has been written then)."""
    for job, log in logs.items():
        try:
            stack.enter_context(hold_lock(log_lock(log), f"the log of job {job}, {log},"))
        except MtlserError as e:
            raise MtlserError(f"{e}; no job of this launch was started") from None
