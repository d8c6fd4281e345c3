"""One writer per experiment dir: an exclusive lock on a file inside it.

Two trainers writing one fold dir would leave a mix (the config of one run, the
checkpoint of the other) and both exit 0. The trainer therefore holds
``<fold dir>/.lock`` with ``flock(LOCK_EX | LOCK_NB)`` while it runs:

- the kernel releases the lock when the holder exits in any way (also SIGKILL or
  an OOM kill), so a stale lock cannot block a rerun and there is nothing to clean;
- a second process fails at once, naming the holder's PID, host and command, which
  the holder wrote into the lock file after taking it.

The lock file itself stays (deleting it would let a third process lock a new file
while the second still holds the old one). On NFS, Linux maps flock onto NFS
byte-range locks, so folds trained on several cluster nodes exclude each other too.

    with hold_lock(exp_dir / ".lock", what="fold dir " + str(exp_dir)):
        train()
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from mtlser.utils import MtlserError

#: The lock file of an experiment (fold) dir.
LOCK_NAME = ".lock"


def holder_of(path: str | os.PathLike) -> dict:
    """What the current (or last) holder wrote into the lock file: pid, host, since, command; {} if unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike, what: str | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` for the ``with`` block; raise MtlserError at once if another process
    holds it (naming that process)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = holder_of(path)
            who = (f"PID {h.get('pid', '?')} on host {h.get('host', '?')}"
                   + (f" (since {h['since']})" if h.get("since") else "")
                   + (f": {h['command']}" if h.get("command") else ""))
            raise MtlserError(f"{what or path.parent} is in use by {who}; wait for that run to end or stop it "
                              f"(lock: {path})") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
