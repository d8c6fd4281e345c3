#!/usr/bin/env python3
"""How much a model's labels move under small perturbations, beside what bf16 and int8 change (issue 22).

Usage:
    python bench/label_sensitivity.py --json bench/results/label_sensitivity_base.json   # base size, 60 files
    python bench/label_sensitivity.py --model-dir egs/mini/exp/agree/fold01 --json /tmp/mini.json

A label-agreement figure measured on a model says as much about the model as about the mode: a model whose
labels hang on small differences changes them under any rounding. This puts the modes beside perturbations
of known size, on the same files, against fp32 (torch, each batch as mtlser-infer runs it):

    weights x (1 + r N(0, 1))   every backbone weight matrix (2-D or more; the heads exact), for each r of --weight-noise
                                (bf16 rounds a value by up to 2^-9 = 0.2 %; int8 per channel by up to ~0.4 % of the
                                channel's largest weight, several % of a small weight)
    audio + s N(0, 1)           white noise of standard deviation s on the waveform, for each s of --audio-noise
    torch bf16                  mtlser's bf16 (CPUs with native bf16 only)
    onnx int8                   mtlser's int8 (the exported graph, onnxruntime's dynamic quantisation)

Without --model-dir the model is bench/infer_throughput.py's: random weights at --size, the emotion head's biases
centred on the first 8 files (--balanced-head there) so that labels vary. Files: bench/infer_throughput.py's
synthetic 1-20 s files (--files, --seed); with --model-dir, --data-dir's wav.scp instead when given. Reported per
row: the share of files whose label equals fp32's and the largest probability difference. Seeded: the same
arguments give the same figures on the same machine type (bf16 and int8 kernels may differ on another CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mtlser.expdir import environment  # noqa: E402  (the repo on sys.path first)

BATCH = 8


def probabilities(predictor, wavs: list[np.ndarray], order: list[int]) -> np.ndarray:
    """(N, E) emotion probabilities, batches of BATCH in ``order`` (sorted by length, as mtlser-infer batches)."""
    out = np.zeros((len(wavs), len(predictor.emotions)), dtype=np.float32)
    for k in range(0, len(order), BATCH):
        rows = order[k:k + BATCH]
        out[rows] = predictor.predict_arrays([wavs[i] for i in rows])[0]
    return out


def compare(probs: np.ndarray, ref: np.ndarray) -> dict:
    return {"label_agreement": round(float(np.mean(probs.argmax(1) == ref.argmax(1))), 4),
            "max_abs_diff": float(np.abs(probs - ref).max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["base", "scaled"], default="base", help="the random model's size")
    p.add_argument("--model-dir", help="a trained model (dir or pack) instead of the random one")
    p.add_argument("--data-dir", help="with --model-dir: label its wav.scp instead of synthetic files")
    p.add_argument("--files", type=int, default=60, help="synthetic files of 1-20 s (default 60)")
    p.add_argument("--weight-noise", default="0.001,0.008", help="relative weight noise levels (comma list)")
    p.add_argument("--audio-noise", default="0.0001", help="audio noise standard deviations (comma list)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)

    import soundfile as sf
    import torch

    from infer_throughput import balance_head, build_predictor, write_files
    from mtlser.infer import SERPredictor
    from mtlser.infer.backends import OnnxPredictor, native_bf16
    from mtlser.infer.onnx_graph import graph_bytes

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mtlser-sensitivity-") as tmp:
        if args.data_dir:
            paths = [line.split(maxsplit=1)[1].strip() for line in
                     (Path(args.data_dir) / "wav.scp").read_text().splitlines() if line.strip()]
        else:
            paths = [str(x) for x in write_files(Path(tmp) / "wav", args.files, 0, 0, args.seed)]
        if args.model_dir:
            predictor = SERPredictor.from_pretrained(args.model_dir)
        else:
            predictor = build_predictor(args.size)
            balance_head(predictor, [Path(x) for x in paths[:8]])
        wavs = [sf.read(x, dtype="float32")[0] for x in paths]
    order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
    ref = probabilities(predictor, wavs, order)
    rows = {}
    model = predictor.models[0]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(args.seed)
    for rel in [float(x) for x in args.weight_noise.split(",") if x]:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.ndim >= 2 and "head" not in name:
                    param.mul_(1 + rel * torch.randn(param.shape, generator=g))
        rows[f"weights x (1 + {rel:g} N(0,1))"] = compare(probabilities(predictor, wavs, order), ref)
        model.load_state_dict(saved)
    rng = np.random.default_rng(args.seed)
    for std in [float(x) for x in args.audio_noise.split(",") if x]:
        noisy = [w + std * rng.standard_normal(len(w)).astype(np.float32) for w in wavs]
        rows[f"audio + {std:g} N(0,1)"] = compare(probabilities(predictor, noisy, order), ref)
    bf16, how = native_bf16()
    if bf16:
        predictor.precision = "bf16"
        rows["torch bf16"] = compare(probabilities(predictor, wavs, order), ref)
        predictor.precision = "fp32"
    rows["onnx int8"] = compare(probabilities(OnnxPredictor(graph_bytes(predictor), "in memory", "int8",
                                                            args.threads), wavs, order), ref)
    result = {"what": "label agreement with fp32 under perturbations of known size and under bf16/int8",
              "model": args.model_dir or f"random weights, {args.size} size, balanced head",
              "files": len(wavs), "seed": args.seed, "native_bf16": {"available": bf16, "how": how},
              "reference_label_counts": np.bincount(ref.argmax(1), minlength=len(predictor.emotions)).tolist(),
              "rows": rows, "machine": environment()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    for name, row in rows.items():
        print(f"{name:32s} labels = fp32 {100 * row['label_agreement']:5.1f} %   max |dp| {row['max_abs_diff']:.2e}",
              file=sys.stderr)
    print(f"-> {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
