"""Run a command for the N-th fold of a list: job arrays number jobs 1..K, folds may be any subset.

    python -m mtlser.launch.nth_fold 2,5,7 3 python -m mtlser.train ... --fold FOLD   # runs with --fold 7
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: python -m mtlser.launch.nth_fold FOLD_LIST JOB command ... (FOLD is replaced)", file=sys.stderr)
        return 2
    folds = [f for f in argv[0].split(",") if f]
    job = int(argv[1])
    if not 1 <= job <= len(folds):
        print(f"nth_fold: job {job} out of range for folds {folds}", file=sys.stderr)
        return 2
    cmd = [a.replace("FOLD", folds[job - 1]) if a == "FOLD" else a for a in argv[2:]]
    os.execvp(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
