"""Progress a user can read: per-fold ETA in the launcher's display, no carriage returns in log files."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mtlser.launch.jobs import eta_seconds, format_duration
from mtlser.utils.progress import progress

ROOT = Path(__file__).resolve().parents[1]


def test_eta_from_the_epochs_seen():
    # Epoch 1 seen at t=100, epoch 4 at t=130: 10 s per epoch; epochs 4..10 (7) remain from t=130.
    assert eta_seconds((100.0, 1), (130.0, 4), total=10, now=135.0) == pytest.approx(65.0)
    assert eta_seconds((100.0, 3), (100.0, 3), total=10, now=101.0) is None  # one epoch seen: no rate yet
    assert eta_seconds((100.0, 1), (130.0, 4), total=4, now=200.0) == 0.0  # overdue, never negative
    assert [format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_progress_in_a_log_is_plain_lines(caplog, capsys):
    with caplog.at_level(logging.INFO):
        items = list(progress(range(5), desc="decode x", unit="batch", log_every_s=0.0))
    assert items == list(range(5))
    assert "decode x: 1/5 batch" in caplog.text and "decode x: 5/5 batch done" in caplog.text
    assert "\r" not in capsys.readouterr().err  # pytest's stderr is not a terminal: no bar drawn


def test_launcher_shows_each_jobs_eta(tmp_path):
    job = ("import sys, time\n"
           "for i in range(1, 5):\n"
           "    print(f'epoch {i}/4: 3 batches', flush=True)\n"
           "    time.sleep(1.5)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MTLSER_PROGRESS="1")
    r = subprocess.run([sys.executable, "-m", "mtlser.launch", "JOB=1:1", str(tmp_path / "job.JOB.log"),
                        sys.executable, "-c", job], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "JOB=1: " in r.stderr and "ETA ?" in r.stderr  # before a second epoch starts, no rate
    assert re.search(r"ETA \d+s", r.stderr), r.stderr[-2000:]
