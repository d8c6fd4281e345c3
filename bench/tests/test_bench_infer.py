"""bench/infer_throughput.py runs end to end and reports its ratios."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_inference_benchmark_runs_and_reports_ratios(tmp_path):
    """bench/infer_throughput.py on a few files of the scaled model: each variant timed, agreement and ratios written."""
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "infer_throughput.py"), "--size", "scaled", "--files", "2",
                        "--long", "1", "--long-s", "25", "--repeats", "1", "--threads", "1", "--warmup-files", "1",
                        "--variants", "pipeline_default,mtlser_onnx_int8", "--balanced-head",
                        "--json", str(out)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"pipeline_default", "mtlser_torch_fp32", "mtlser_onnx_int8"}
    assert len(result["rounds"]) == 1 and len(result["durations_s"]) == 3 and result["balanced_head"] is True
    assert result["variants"]["mtlser_torch_fp32"]["label_agreement_with_fp32"] == 1.0
    assert all(v["peak_rss_mib"] > 0 and v["audio_s_per_cpu_s"] > 0 for v in result["variants"].values())
    assert result["ratios_time_baseline_over_mtlser"]["mtlser_onnx_int8"]["pipeline_default"]["wall"] > 0
