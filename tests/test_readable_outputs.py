"""Outputs that read well (issue 19.6), each through the command line: stage 5's console table with its
header, the card's protocol / valid / selection lines, mtlser-infer's --per-window CSV, failures once."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT
from tests.test_score_reports import make_exp


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env)


def log_messages(stderr: str) -> list[str]:
    """The messages of the log lines, without their time and source prefix."""
    return [line.split(" INFO: ", 1)[1] for line in stderr.splitlines() if " INFO: " in line]


def test_stage5_console_table_has_its_header(tmp_path):
    exp = make_exp(tmp_path, "train_mtl_loso", 0.1, [0.7, 0.8, 0.9], [0.6, 0.8, 0.7])
    r = cli("-m", "mtlser.score", "aggregate", str(exp))
    assert r.returncode == 0, r.stderr
    assert log_messages(r.stderr) == [
        f"{exp}: WA and UA in % over 3 folds (75 test utterances), from {exp}/RESULTS.md:",
        "  metric  mean over folds  std over folds  pooled  std over seeds          95 % CI  chance",
        "  WA                80.00           10.00   76.00               —  [55.16, 104.84]   28.00",
        "  UA                70.00           10.00   76.19               —   [45.16, 94.84]   25.00",
    ]
    # The console shows RESULTS.md's own cells (pooled UA = mean of 15/18, 15/18, 12/18, 15/21).
    md = (exp / "RESULTS.md").read_text()
    assert "|WA|80.00|10.00|76.00|—|[55.16, 104.84]|28.00|" in md
