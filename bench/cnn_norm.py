#!/usr/bin/env python3
"""The CNN's first-layer norm + GELU alone: row by row, fused, and torch's batch-wide GroupNorm.

Usage:
    python bench/cnn_norm.py --device cpu --json bench/results/cnn_norm_cpu.json
    python bench/cnn_norm.py --device cuda --json bench/results/cnn_norm_cuda.json

Forward + backward of ``gelu(norm(x))`` on a padded batch (16 rows, lengths drawn uniformly in
[T/2, T], one row full), for the scaled CPU model's first layer (32 channels) and wav2vec2-base's
(512 channels), each implementation timed in turn (A B C, C B A, ...) over --repeats rounds;
medians and min-max reported. ``rows`` and ``fused`` compute the same padding-invariant maths
(backbone.cnn_norm_impl); ``batch`` is torch's GroupNorm over the padded batch (what HF computes,
for scale). Timings on a shared machine vary: compare the implementations of one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: (channels, frames): the first layer's output for 16 utterances of ~4.7 s (scaled) and ~1.9 s (base-sized).
SHAPES = [(32, 15000), (512, 6000)]


def main(argv: list[str] | None = None) -> int:
    import torch
    from torch import nn

    from mtlser.model.fast_ops import group_norm_gelu, valid_group_norm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the frame counts (e.g. 4 on a GPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    results = {}
    for channels, frames in SHAPES:
        frames = int(frames * args.scale)
        g = torch.Generator().manual_seed(0)
        norm = nn.GroupNorm(channels, channels).to(dev)
        x = torch.randn(16, channels, frames, generator=g).to(dev).requires_grad_()
        lens = torch.randint(frames // 2, frames + 1, (16,), generator=g)
        lens[0] = frames
        lens = lens.to(dev)
        grad = torch.randn(16, channels, frames, generator=g).to(dev)
        impls = {"rows": lambda: nn.functional.gelu(valid_group_norm(x, lens, norm)),
                 "fused": lambda: group_norm_gelu(x, lens, norm),
                 "batch": lambda: nn.functional.gelu(norm(x))}
        times: dict[str, list[float]] = {k: [] for k in impls}
        for name, f in impls.items():  # warm-up
            f().backward(grad)
        for r in range(args.repeats):
            for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
                sync()
                t0 = time.perf_counter()
                impls[name]().backward(grad)
                sync()
                times[name].append(time.perf_counter() - t0)
        key = f"{channels}x{frames}"
        results[key] = {name: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "all_s": ts}
                        for name, ts in times.items()}
        print(f"16 x {channels} x {frames}: " + ", ".join(
            f"{n} {v['median_s']:.3f} s ({v['min_s']:.3f}-{v['max_s']:.3f})" for n, v in results[key].items())
            + f"; rows / fused {results[key]['rows']['median_s'] / results[key]['fused']['median_s']:.2f}x",
            flush=True)
    from train_throughput import git_commit, machine

    out = {"settings": vars(args), "commit": git_commit(), "machine": machine(args.device), "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
