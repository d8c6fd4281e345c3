"""bench/label_sensitivity.py runs end to end: perturbations and modes against fp32, the perturbation undone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sensitivity_rows_against_fp32(tmp_path):
    out = tmp_path / "s.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "label_sensitivity.py"), "--size", "scaled", "--files", "6",
                        "--weight-noise", "0,0.5", "--audio-noise", "0", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    # No perturbation: fp32 against itself, exactly; the weights are restored after each level (the audio row,
    # run after the 50 % noise, would differ otherwise).
    for name in ("weights x (1 + 0 N(0,1))", "audio + 0 N(0,1)"):
        assert rows[name] == {"label_agreement": 1.0, "max_abs_diff": 0.0}
    assert rows["weights x (1 + 0.5 N(0,1))"]["max_abs_diff"] > 1e-3  # a real perturbation moves the answer
    assert 0.0 <= rows["onnx int8"]["label_agreement"] <= 1.0 and rows["onnx int8"]["max_abs_diff"] < 1.0
