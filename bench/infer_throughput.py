#!/usr/bin/env python3
"""Inference throughput: mtlser's batched labelling vs Hugging Face ``Wav2Vec2Model`` forward, same files.

Usage:
    python bench/infer_throughput.py --device cpu --json bench/results/infer_cpu.json           # base size, 2 threads
    python bench/infer_throughput.py --device cuda --precision bf16 --json bench/results/infer_cuda_bf16.json

One run writes --files WAV files with IEMOCAP-like durations (log-normal, mean ~4.5 s, cut at 20 s;
bench/train_throughput.py's distribution) and times, on those same files, with random weights
(speed does not depend on them), at wav2vec2-base size by default:

    hf_file_order  transformers.Wav2Vec2Model forward (hidden states of every layer, its default attention,
                   attention mask), batches of --batch-size in file order padded to their longest: what a
                   plain transformers script does. Audio preloaded (reading not timed).
    hf_sorted      the same forward on mtlser's batches (sorted by duration): the network alone, same padding.
    mtlser         mtlser's labelling path (mtlser.infer.runner.label): reading the files, batching by duration,
                   the backbone, fusion, emotion and CTC heads, probabilities and tokens. Reading is timed.

The variants run interleaved (A B C, A B C, ...) for --repeats rounds after one untimed warm-up
round, in one process, so that a shared machine's load drift reaches all of them alike: compare
the variants of one run (a timing is a ratio, not an absolute figure). Reported per variant: the
median and spread over rounds of audio-seconds per wall-second, and CPU seconds per round; the
ratios of mtlser to each baseline are medians of per-round ratios.

--precision bf16/fp16 runs every variant under torch.autocast (GPUs): mtlser's is
``SERPredictor(precision=...)``, the baselines the same autocast around transformers' forward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

VARIANTS = ("hf_file_order", "hf_sorted", "mtlser")
#: A smaller wav2vec2 shape for a quick look (--size scaled): bench/train_throughput.py's CPU model.
SCALED = "scaled"


def arch_kwargs(size: str) -> dict:
    from mtlser.model.architectures import architecture

    if size == SCALED:
        from train_throughput import CPU_ARCH

        return architecture("wav2vec2", "custom", dict(CPU_ARCH))
    return architecture("wav2vec2", size)


def build(size: str, device: str, precision: str):
    """(mtlser predictor, transformers Wav2Vec2Model), random weights, eval mode, on ``device``."""
    import torch
    from hf_baseline import hf_config
    from transformers import Wav2Vec2Model

    from mtlser.config import load_config
    from mtlser.infer import SERPredictor
    from mtlser.model.backbone import conv_layers_as_lists
    from mtlser.model.ser_model import build_model

    kw = arch_kwargs(size)
    custom = conv_layers_as_lists(kw)
    cfg = load_config(None, {"backbone": {"size": "custom", "custom": custom}})
    tokens = ["<blank>"] + [f"{c}{e}" for c in ("S", "F", "N", "L", "V", "Vs") for e in range(4)]
    emotions = ["ang", "hap", "sad", "neu"]
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=len(tokens), num_emotions=len(emotions)).to(device).eval()
    meta = {"emotions": emotions, "tokens": tokens, "sample_rate": 16000, "location": size}
    hf = Wav2Vec2Model(hf_config(custom)).to(device).eval()
    return SERPredictor(model, meta, device, precision), hf


def write_files(root: Path, n: int, seed: int) -> list[Path]:
    import soundfile as sf
    from train_throughput import iemocap_like_durations

    rng = np.random.default_rng(seed)
    paths = []
    for i, dur in enumerate(iemocap_like_durations(n, seed)):
        t = np.arange(int(dur * 16000)) / 16000
        x = 0.2 * np.sin(2 * np.pi * (100 + 80 * rng.random()) * t) + 0.02 * rng.standard_normal(len(t))
        paths.append(root / f"utt{i:04d}.wav")
        sf.write(paths[-1], x.astype(np.float32), 16000, subtype="PCM_16")
    return paths


def hf_forward(hf, wavs: list[np.ndarray], batches: list[list[int]], device: str, precision: str) -> None:
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.inference_mode(), torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
        for b in batches:
            lens = torch.tensor([len(wavs[i]) for i in b])
            x = torch.zeros(len(b), int(lens.max()))
            for j, i in enumerate(b):
                x[j, : len(wavs[i])] = torch.from_numpy(wavs[i])
            mask = (torch.arange(x.shape[1])[None, :] < lens[:, None]).long()
            out = hf(x.to(device), attention_mask=mask.to(device), output_hidden_states=True)
            out.hidden_states[-1].float().sum().item()  # wait for the device, as mtlser's .cpu() does


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--size", choices=["base", SCALED], default="base")
    p.add_argument("--files", type=int, default=24, help="number of files (default 24, ~110 s of audio)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (each runs every variant once)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", required=True, help="write the results here")
    args = p.parse_args(argv)

    import soundfile as sf
    import torch

    from mtlser.expdir import environment
    from mtlser.infer.audio import Recording
    from mtlser.infer.runner import label, plan_batches

    torch.set_num_threads(args.threads)
    predictor, hf = build(args.size, args.device, args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_files(Path(tmp), args.files, args.seed)
        wavs = [sf.read(p, dtype="float32")[0] for p in paths]
        audio_s = sum(len(w) for w in wavs) / 16000
        recordings = [Recording(p.name, str(p)) for p in paths]
        in_order = [list(range(i, min(i + args.batch_size, len(wavs)))) for i in range(0, len(wavs), args.batch_size)]
        sorted_batches = plan_batches([len(w) / 16000 for w in wavs], args.batch_size, float("inf"))
        run = {
            "hf_file_order": lambda: hf_forward(hf, wavs, in_order, args.device, args.precision),
            "hf_sorted": lambda: hf_forward(hf, wavs, sorted_batches, args.device, args.precision),
            "mtlser": lambda: label(predictor, recordings, batch_size=args.batch_size, batch_seconds=float("inf"),
                                    progress=False),
        }
        rounds: list[dict] = []
        for r in range(args.repeats + 1):  # round 0 warms up (allocator, kernels), untimed
            row = {}
            for name in VARIANTS:
                wall0, cpu0 = time.perf_counter(), time.process_time()
                run[name]()
                row[name] = {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0}
            if r > 0:
                rounds.append(row)
                print(f"round {r}: " + ", ".join(f"{n} {audio_s / row[n]['wall_s']:.1f} audio-s/s" for n in VARIANTS),
                      file=sys.stderr)
    summary = {}
    for name in VARIANTS:
        speeds = [audio_s / row[name]["wall_s"] for row in rounds]
        summary[name] = {"audio_s_per_s_median": statistics.median(speeds), "audio_s_per_s_min": min(speeds),
                         "audio_s_per_s_max": max(speeds),
                         "cpu_s_median": statistics.median(row[name]["cpu_s"] for row in rounds)}
    result = {
        "what": "inference throughput, mtlser labelling vs transformers Wav2Vec2Model forward, same files",
        "device": args.device, "precision": args.precision, "size": args.size, "files": args.files,
        "audio_s": round(audio_s, 2), "batch_size": args.batch_size, "threads": args.threads, "repeats": args.repeats,
        "variants": summary,
        "ratio_vs_hf_file_order": _ratio(rounds, "hf_file_order"),
        "ratio_vs_hf_sorted": _ratio(rounds, "hf_sorted"),
        # The same from process CPU time: less sensitive to other processes' load on a shared machine.
        "cpu_ratio_vs_hf_file_order": _ratio(rounds, "hf_file_order", "cpu_s"),
        "cpu_ratio_vs_hf_sorted": _ratio(rounds, "hf_sorted", "cpu_s"),
        "rounds": rounds,
        "machine": environment(torch.device(args.device)),  # versions, CPU, GPU, git commit, date
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"mtlser / HF forward (file order): {result['ratio_vs_hf_file_order']:.2f}x, "
          f"(same sorted batches): {result['ratio_vs_hf_sorted']:.2f}x  -> {args.json}", file=sys.stderr)
    return 0


def _ratio(rounds: list[dict], baseline: str, clock: str = "wall_s") -> float:
    """Median over rounds of baseline time / mtlser time (> 1: mtlser is faster)."""
    return statistics.median(r[baseline][clock] / r["mtlser"][clock] for r in rounds)


if __name__ == "__main__":
    sys.exit(main())
