"""bench/infer_throughput.py runs end to end and reports its ratios."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_inference_benchmark_runs_and_reports_ratios(tmp_path):
    """bench/infer_throughput.py on a few files of the scaled model: every variant timed, ratios written."""
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "infer_throughput.py"), "--size", "scaled", "--files", "2",
                        "--repeats", "1", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"hf_file_order", "hf_sorted", "mtlser"} and len(result["rounds"]) == 1
    assert all(result[k] > 0 for k in ("ratio_vs_hf_file_order", "ratio_vs_hf_sorted", "cpu_ratio_vs_hf_sorted"))
