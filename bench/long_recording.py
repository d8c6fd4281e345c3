#!/usr/bin/env python3
"""Peak memory of mtlser-infer on long recordings: bounded whatever the length (issue 22 item 4).

Usage:
    python bench/long_recording.py --json bench/results/long_recording.json --timeline /tmp/timeline
    python bench/long_recording.py --model exp/<tag>/fold01 --backend torch --minutes 5,60 --json /tmp/x.json

For each length of --minutes (default 5 and 60) one synthetic recording (16 kHz, 16-bit mono WAV:
:func:`synth`, written block by block, never whole in memory) is written to --dir and
labelled by mtlser-infer's own ``main`` in a fresh process (windows of --window seconds every --hop
seconds, each window read from the file when its batch runs). Recorded per run: the process's peak
resident memory (``os.wait4``'s ``ru_maxrss``: start-up included), the **labelling peak** (the peak from
the start of the label loop to the end, outputs and timeline included: the kernel's high-water mark
VmHWM, reset through ``/proc/self/clear_refs`` as the loop starts; Linux only, else null), the resident
memory when the loop starts, wall and CPU time, and the number of windows. The labelling peak is the
figure that shows what the length costs: the process's peak is set by start-up (imports, loading the
weights), which can hide tens of MiB held by the loop. Bounded means the longest recording's labelling
peak is about the shortest's: ``growth_mib`` (longest minus shortest) set against
``whole_file_float32_mib`` (what reading the longest file whole as float32 would add).

--model is any model mtlser-infer takes (a model dir, pack, ensemble or .onnx; default: a model with
random weights at --size, wav2vec2-base by default, exported to ONNX, as bench/infer_throughput.py builds
it). --timeline DIR: every recording's timeline (CSV + PNG) is written there (each run draws one, so
that matplotlib's memory is in every peak alike).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mtlser.expdir import environment  # noqa: E402  (the repo on sys.path first)

SAMPLE_RATE = 16000

#: Runs mtlser-infer's main with the label loop wrapped: the high-water mark is reset as the loop starts and
#: read at exit (argv[1]: where to write the figures; the rest: mtlser-infer's arguments).
CHILD = r"""
import atexit, json, re, sys
from pathlib import Path

import mtlser.infer.output as output
from mtlser.infer.__main__ import main
from mtlser.utils import run_main

report, sys.argv = Path(sys.argv[1]), ["mtlser-infer"] + sys.argv[2:]
status = Path("/proc/self/status")
figures = {}


def kib(field):
    return int(re.search(field + r":\s+(\d+)", status.read_text()).group(1))


def label(*args, real=output.label, **kw):
    try:
        figures["rss_at_loop_start_kib"] = kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        figures["hwm_reset"] = True
    except OSError:
        pass
    return real(*args, **kw)


output.label = label
atexit.register(lambda: report.write_text(json.dumps({**figures, "hwm_kib": kib("VmHWM")})))
sys.exit(run_main(main))
"""


def label_in_child(model: str, wav: Path, args, out: Path, timeline: str | None) -> dict:
    """mtlser-infer on one recording in a child process: its peak RSS, wall and CPU time, its windows."""
    figures = out.with_suffix(".rss.json")
    cmd = [sys.executable, "-c", CHILD, str(figures), "--model", model, "--backend", args.backend, "--precision",
           args.precision, "--window", str(args.window), "--hop", str(args.hop), "--num-threads", str(args.threads),
           "-o", str(out), "--no-progress", str(wav)] + (["--timeline", timeline] if timeline else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN would be the max of all)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"mtlser-infer on {wav} failed (exit {proc.returncode}): {err.strip()[-2000:]}")
    record = json.loads(out.read_text().splitlines()[0])
    if "error" in record:
        raise SystemExit(f"mtlser-infer on {wav}: {record['error']}")
    rss = json.loads(figures.read_text())
    return {"peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "labelling_peak_rss_mib": round(rss["hwm_kib"] / 1024, 1) if rss.get("hwm_reset") else None,
            "rss_at_loop_start_mib": round(rss["rss_at_loop_start_kib"] / 1024, 1), "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "windows": len(record.get("windows", [])),
            "duration_s": record["duration"], "emotion": record["emotion"]}


def synth(path: Path, seconds: float, segment_s: float = 150.0) -> None:
    """A recording written block by block (never whole in memory): a gliding tone with noise whose pitch,
    loudness and noise change every ``segment_s`` seconds, so that a model's answer (and the timeline's band)
    can change along it."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(7)
    styles = [(rng.uniform(90, 260), rng.uniform(0.05, 0.4), rng.uniform(0.005, 0.15)) for _ in range(8)]
    block = int(segment_s * SAMPLE_RATE)
    total = int(seconds * SAMPLE_RATE)
    with sf.SoundFile(str(path), "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16") as f:
        for k, done in enumerate(range(0, total, block)):
            n = min(block, total - done)
            f0, amp, noise = styles[k % len(styles)]
            t = (done + np.arange(n)) / SAMPLE_RATE
            pitch = f0 * (1 + 0.2 * np.sin(2 * np.pi * t / 7.0))
            x = amp * np.sin(2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE) + noise * rng.standard_normal(n)
            f.write(np.clip(x, -1, 1).astype(np.float32))


def random_onnx(size: str, out: Path) -> str:
    """A model with random weights (bench/infer_throughput.py's) exported to ONNX at ``out``."""
    from infer_throughput import build_predictor

    from mtlser.infer.onnx_graph import graph_bytes

    out.write_bytes(graph_bytes(build_predictor(size)))
    return str(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", default="5,60", help="recording lengths in minutes (comma list; default 5,60)")
    p.add_argument("--model", help="a model mtlser-infer takes (default: random weights at --size, as ONNX)")
    p.add_argument("--size", choices=["base", "scaled"], default="base", help="the random model's size")
    p.add_argument("--backend", default="onnx", choices=("torch", "onnx"))
    p.add_argument("--precision", default="int8", help="mtlser-infer's --precision (default int8)")
    p.add_argument("--window", type=float, default=20.0)
    p.add_argument("--hop", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the recordings are written (default: the "
                   "temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the recordings (default: deleted at the end)")
    p.add_argument("--timeline", metavar="DIR", help="the recordings' timelines (CSV + PNG) go here")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)


    minutes = sorted(float(m) for m in args.minutes.split(",") if m)
    runs = []
    with tempfile.TemporaryDirectory(prefix="mtlser-long-") as tmp:
        tmp = Path(tmp)
        model = args.model or random_onnx(args.size, tmp / "model.onnx")
        for m in minutes:
            wav = Path(args.dir) / f"mtlser_synthetic_{m:g}min.wav"
            seconds = 60 * m
            synth(wav, seconds)
            try:
                run = label_in_child(model, wav, args, tmp / f"{m:g}.jsonl", args.timeline)
            finally:
                if not args.keep:
                    wav.unlink(missing_ok=True)
            runs.append({"minutes": m, "file": str(wav), "file_mib": round(2 * seconds * SAMPLE_RATE / 2**20, 1),
                         **run, "audio_s_per_wall_s": round(seconds / run["wall_s"], 2)})
            print(f"{m:g} min: peak RSS {run['peak_rss_mib']:.0f} MiB, labelling {run['labelling_peak_rss_mib']} "
                  f"MiB, {run['windows']} windows, "
                  f"{run['wall_s']:.0f} s wall", file=sys.stderr, flush=True)
    longest = runs[-1]
    key = "labelling_peak_rss_mib" if all(r["labelling_peak_rss_mib"] is not None for r in runs) else "peak_rss_mib"
    result = {"what": "peak RSS of mtlser-infer (fresh process) on synthetic recordings of growing length",
              "model": args.model or f"random weights, {args.size} size, exported to ONNX",
              "backend": args.backend, "precision": args.precision, "window_s": args.window, "hop_s": args.hop,
              "threads": args.threads, "runs": runs,
              "growth_of": key, "growth_mib": round(longest[key] - runs[0][key], 1),
              "whole_file_float32_mib": round(4 * 60 * longest["minutes"] * SAMPLE_RATE / 2**20, 1),
              "timeline": args.timeline, "machine": environment()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"growth ({key}) {result['growth_mib']} MiB from {runs[0]['minutes']:g} to {longest['minutes']:g} min (reading "
          f"the longest whole as float32 would add {result['whole_file_float32_mib']} MiB) -> {args.json}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
