#!/usr/bin/env python3
"""Training throughput: a Hugging Face transformers baseline vs mtlser's training path (issue 5).

Usage:
    python bench/train_throughput.py --device cpu  --json bench/results/cpu.json    # scaled model, < 3 min
    python bench/train_throughput.py --device cuda --json bench/results/cuda.json   # wav2vec2-base, random init
    python bench/train_throughput.py --device cuda --procs 4 --variants mtlser_cached --json ...  # 4 folds at once
    python bench/train_throughput.py --device cuda --compile reduce-overhead --variants mtlser --json ...

One run times, side by side, training steps of the full objective (backbone +
fusion + CE + lambda * CTC + Adam step, batch 16) over the SAME utterances, drawn
from an IEMOCAP-like duration distribution (log-normal, mean ~4.5 s, cut at 20 s):
the utterances of --steps batches of a bucketed epoch at protocol size (4,400),
spread evenly over its batch lengths, so that each path batches them as it would
a whole fold (mtlser re-forms the bucketed batches, the baseline draws random ones).

    baseline       transformers.Wav2Vec2Model + mtlser's heads, fp32, HF's default attention, random
                   batches padded to their longest utterance, audio preloaded (bench/hf_baseline.py)
    mtlser         mtlser's Trainer.train_step with the training stage's defaults (the paper's setting,
                   CNN trained): bucketed batches on a padding ladder, bf16 on GPUs, memory-efficient
                   attention, FFT positional conv, padding-invariant CNN
    mtlser_cached  the same with backbone.freeze_feature_encoder: CNN output cached once (not timed), the
                   epochs run the transformer only (not the paper's setting)

Each variant runs in a fresh process (clean peak memory, no shared state): a
warm-up (on GPUs a whole pass, so every padded length has been seen), then one
timed pass over all utterances (an epoch of the subset), then one step on a
batch of 16 utterances of the maximum duration for the peak memory. Reported:
audio-seconds trained per second of wall time (padding not counted), step time,
peak memory (GPU: allocated; CPU: the process's peak RSS), padding share, ratios
to the baseline, and what the full protocol (10 folds x 100 epochs x ~4,400
utterances) would take. Times include data loading as each path does it.

On CPU the model is scaled down (see CPU_ARCH) so a run fits in ~3 minutes on 2
cores; on a GPU it is wav2vec2-base. Weights are random: speed does not depend
on them. Timings on a shared machine vary: compare variants of the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

#: A wav2vec2-shaped model small enough for a CPU run: the base layout (7 conv layers, 320x, post-LN,
#: positional conv kernel 128 in 16 groups) with fewer channels and layers.
CPU_ARCH = {
    "extractor_mode": "group_norm",
    "extractor_conv_layer_config": [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2,
    "encoder_embed_dim": 128,
    "encoder_pos_conv_kernel": 128,
    "encoder_pos_conv_groups": 16,
    "encoder_num_layers": 2,
    "encoder_num_heads": 4,
    "encoder_ff_interm_features": 512,
    "encoder_layer_norm_first": False,
}
EMOTIONS = ["ang", "hap", "sad", "neu"]
VARIANTS = ("baseline", "mtlser", "mtlser_cached")
#: The issue's targets on an H100 (checked when --device cuda).
TARGETS = {"mtlser": (3000.0, 10.0), "mtlser_cached": (6000.0, 20.0), "peak_longest_gib": 12.0}


def iemocap_like_durations(n: int, seed: int, mean: float = 4.5, sigma: float = 0.65, lo: float = 0.6,
                           hi: float = 20.0) -> np.ndarray:
    """Log-normal durations (s) with the given mean, cut to [lo, hi] (IEMOCAP: mean ~4.5 s, 0.6-34 s)."""
    rng = np.random.default_rng(seed)
    mu = math.log(mean) - sigma ** 2 / 2
    return np.clip(rng.lognormal(mu, sigma, n), lo, hi).round(3)


def stratified_subset(durations: np.ndarray, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """Durations of ``steps`` whole batches of a bucketed epoch at full size, evenly spread over its batch lengths.

    Timing these utterances shows each path its batches as at protocol scale: mtlser's sampler
    re-forms nearly the same low-padding batches from them, the baseline batches them at random.
    """
    from mtlser.data.dataset import BatchSampler

    batches = BatchSampler(durations, batch_size, "bucket", seed=seed).epoch_batches(0)
    batches = sorted((b for b in batches if len(b) == batch_size), key=lambda b: durations[b].max())
    picks = [batches[int((i + 0.5) * len(batches) / steps)] for i in range(steps)]
    return np.concatenate([durations[b] for b in picks])


def write_corpus(root: Path, durations: np.ndarray, seed: int, sr: int = 16000) -> tuple[Path, Path]:
    """A fold data dir (train/ valid/) of noise utterances with random labels and CTC targets; the token list."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    tokens = ["<blank>"] + [f"{c}{e}" for c in ("S", "F", "N", "L", "V", "Vs") for e in range(4)]
    token_list = root / "token_list"
    token_list.write_text("".join(t + "\n" for t in tokens))
    for split, durs in (("train", durations), ("valid", durations[:2])):
        d = root / "fold" / split
        (d / "wav").mkdir(parents=True)
        tables = {k: [] for k in ("wav.scp", "utt2emo", "utt2dur", "text_phncls")}
        for i, dur in enumerate(durs):
            utt = f"utt{i:05d}"
            n = int(dur * sr)
            path = d / "wav" / f"{utt}.wav"
            sf.write(path, (0.05 * rng.standard_normal(n)).astype(np.float32), sr, subtype="PCM_16")
            ntok = max(1, int(dur * 10))  # ~10 phone classes per second
            tables["wav.scp"].append(f"{utt} {path}")
            tables["utt2emo"].append(f"{utt} {EMOTIONS[rng.integers(4)]}")
            tables["utt2dur"].append(f"{utt} {dur:.3f}")
            tables["text_phncls"].append(f"{utt} " + " ".join(tokens[j] for j in rng.integers(1, len(tokens), ntok)))
        for name, lines in tables.items():
            (d / name).write_text("\n".join(lines) + "\n")
        (d / "emotions").write_text("".join(e + "\n" for e in EMOTIONS))  # the inventory stage 0 would write
    return root / "fold", token_list


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB


def _padding(batch: dict) -> tuple[float, float]:
    """(valid, padded) elements along time of a collated batch."""
    if "feats" in batch:
        lens, T = batch["feat_lens"], batch["feats"].shape[1]
    else:
        lens, T = batch["wav_lens"], batch["wavs"].shape[1]
    return float(lens.sum()), float(len(lens) * T)


def _longest_items(spec: dict, tokens: list[str], backbone=None) -> list[dict]:
    """16 utterances of the maximum duration (the peak-memory batch), as the dataset would give them."""
    import torch

    g = torch.Generator().manual_seed(0)
    n = int(spec["max_duration"] * 16000)
    items = []
    for i in range(spec["batch_size"]):
        wav = 0.05 * torch.randn(n, generator=g)
        item = {"utt": f"long{i}", "emotion": i % 4,
                "target": torch.randint(1, len(tokens), (int(spec["max_duration"] * 10),), generator=g)}
        if backbone is not None:  # cached features: what the cache would hold
            with torch.no_grad():
                x, _ = backbone.cnn(wav[None].to(next(backbone.parameters()).device), torch.tensor([n]).to(
                    next(backbone.parameters()).device))
            item.update(feats=x[0].float().cpu(), num_samples=n)
        else:
            item["wav"] = wav
        items.append(item)
    return items


def worker(spec: dict, queue, barrier=None) -> None:
    """Time one variant in this (fresh) process and put its result dict on the queue."""
    try:
        queue.put(_run_variant(spec, barrier))
    except BaseException as e:  # report instead of hanging the parent
        import traceback

        queue.put({"variant": spec["variant"], "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})


def _run_variant(spec: dict, barrier) -> dict:
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(spec["threads"])
    from mtlser.config import load_config
    from mtlser.data.dataset import BatchSampler, SERDataset, batch_to, collate
    from mtlser.text.tokenize import read_token_list

    device = spec["device"]
    cfg = load_config(None, spec["overrides"])
    tokens = read_token_list(spec["token_list"])
    data_dir = Path(spec["data_dir"])
    variant = spec["variant"]
    result = {"variant": variant, "pid": os.getpid()}
    t_setup = time.perf_counter()

    if variant == "baseline":
        from hf_baseline import build_baseline

        from mtlser.model.backbone import build_backbone

        kw = build_backbone(cfg.backbone).arch_kwargs  # the same architecture and dropouts as mtlser's
        model, _ = build_baseline(kw, len(EMOTIONS), len(tokens), cfg.loss.lambda_, cfg.loss.ctc_reduction,
                                  seed=cfg.train.seed)
        model.to(device).train()
        result["hf_attn_implementation"] = model.backbone.model.config._attn_implementation
        opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                               weight_decay=cfg.optim.weight_decay)
        ds = SERDataset(data_dir / "train", token_list=tokens, emotions=EMOTIONS)
        items = [ds[i] for i in range(len(ds))]  # preloaded: the baseline pays no audio reading
        sampler = BatchSampler(ds.durations, cfg.data.batch_size, batching="random", seed=cfg.train.seed)

        def batches(epoch):
            for b in sampler.epoch_batches(epoch):
                yield collate([items[i] for i in b])

        def step(batch):
            batch = batch_to(batch, device)
            loss, _, _ = model(batch["wavs"], batch["wav_lens"], batch["emotions"], batch["targets"],
                               batch["target_lens"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        longest = lambda: collate(_longest_items(spec, tokens))  # noqa: E731
    else:
        from mtlser.train.trainer import Trainer

        t0 = time.perf_counter()
        trainer = Trainer(cfg, data_dir, tokens, Path(spec["exp_dir"]))
        result["setup_s"] = time.perf_counter() - t0  # includes building the CNN cache for mtlser_cached
        trainer.model.train()
        result["precision"] = trainer.precision

        def batches(epoch):
            trainer.sampler.set_epoch(epoch)
            yield from trainer.train_loader

        def step(batch):
            trainer.train_step(batch)

        cached = variant == "mtlser_cached"
        longest = lambda: collate(_longest_items(spec, tokens, trainer.model.backbone if cached else None),  # noqa
                                  pad_ladder=cfg.data.pad_ladder)

    net = model if variant == "baseline" else trainer.model
    result["params_m"] = sum(p.numel() for p in net.parameters()) / 1e6
    # Warm-up: on GPUs a whole pass (every padded length planned/compiled once), on CPUs a few steps.
    t0 = time.perf_counter()
    for i, batch in enumerate(batches(0)):
        if spec["warmup_steps"] >= 0 and i >= spec["warmup_steps"]:
            break
        step(batch)
    _sync(device)
    result["warmup_s"] = time.perf_counter() - t0
    if barrier is not None:
        barrier.wait()  # concurrent processes (--procs) time the same span
    _peak_reset(device)
    audio = valid = padded = 0.0
    n_steps = 0
    t0 = time.perf_counter()
    for batch in batches(1):
        v, p = _padding(batch)
        valid, padded = valid + v, padded + p
        audio += float(batch["num_samples"].sum()) / 16000
        step(batch)
        n_steps += 1
    _sync(device)
    elapsed = time.perf_counter() - t0
    result.update(steps=n_steps, time_s=elapsed, audio_s=audio, audio_s_per_s=audio / elapsed,
                  step_time_s=elapsed / n_steps, padding_share=1 - valid / padded, peak_gib=_peak_gib(device))
    if spec["longest"]:
        # The longest batch last: on CPUs the peak RSS of the process is then the peak of everything.
        _peak_reset(device)
        t0 = time.perf_counter()
        step(longest())
        _sync(device)
        result.update(longest_step_s=time.perf_counter() - t0, peak_longest_gib=_peak_gib(device))
    result["total_s"] = time.perf_counter() - t_setup
    return result


def run_processes(specs: list[dict]) -> list[dict]:
    """Run the specs as concurrent fresh processes (one spec = one process); results in spec order."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(len(specs)) if len(specs) > 1 else None
    procs = [ctx.Process(target=worker, args=(s, queue, barrier)) for s in specs]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    by_pid = {r.get("pid"): r for r in results}
    ordered = [by_pid.get(p.pid) for p in procs]
    return [r if r is not None else results[i] for i, r in enumerate(ordered)]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def machine(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_mem_gib"] = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, help="timed batches (the subset has steps x batch size utterances); "
                        "default 80 on cuda, 10 on cpu")
    parser.add_argument("--warmup-steps", type=int, help="warm-up batches; -1 = a whole pass (default on cuda), "
                        "default 1 on cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per process (default 2)")
    parser.add_argument("--procs", type=int, default=1,
                        help="run each mtlser variant as N concurrent processes (folds sharing one GPU)")
    parser.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead"],
                        help="train.compile for the mtlser variants")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for the mtlser variants, e.g. --opt train.sdpa_backend=default")
    parser.add_argument("--max-duration", type=float, default=20.0, help="longest utterance (s)")
    parser.add_argument("--longest", action=argparse.BooleanOptionalAction,
                        help="also time one batch of 16 longest utterances for the peak memory (default: on cuda)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--protocol", default="10,100,4400", help="folds,epochs,training utterances per fold")
    args = parser.parse_args(argv)

    import yaml

    from mtlser.data.dataset import BatchSampler, padding_share

    loadavg_start = os.getloadavg()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        parser.error(f"unknown variants {bad}; expected some of {VARIANTS}")
    cuda = args.device == "cuda"
    steps = args.steps or (80 if cuda else 10)
    warmup = args.warmup_steps if args.warmup_steps is not None else (-1 if cuda else 1)
    folds, epochs, n_protocol = (int(x) for x in args.protocol.split(","))
    batch_size = 16

    durations = iemocap_like_durations(max(n_protocol, steps * batch_size), args.seed, hi=args.max_duration)
    subset = stratified_subset(durations[:n_protocol], steps, batch_size, args.seed)
    # Padding at the protocol's size (one fold's epoch), without running anything.
    pad_random = BatchSampler(durations[:n_protocol], batch_size, "random", seed=args.seed).padding_share(0)
    bucket = BatchSampler(durations[:n_protocol], batch_size, "bucket", seed=args.seed)
    pad_bucket = bucket.padding_share(0)
    pad_ladder = padding_share(bucket.epoch_batches(0), durations[:n_protocol], 1.05)

    overrides: dict = {"train": {"device": args.device, "num_threads": args.threads, "compile": args.compile},
                       "data": {"batch_size": batch_size}}
    if not cuda:
        overrides["backbone"] = {"size": "custom", "custom": CPU_ARCH}
    for kv in args.opt:
        key, _, value = kv.partition("=")
        node = overrides
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="mtlser_bench_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        data_dir, token_list = write_corpus(tmp, subset, args.seed)
        print(f"corpus: {len(subset)} utterances, {subset.sum() / 60:.1f} min (mean {subset.mean():.2f} s, "
              f"max {subset.max():.1f} s), written in {time.perf_counter() - t0:.1f} s", flush=True)
        base_spec = {"device": args.device, "threads": args.threads, "data_dir": str(data_dir),
                     "token_list": str(token_list), "warmup_steps": warmup, "batch_size": batch_size,
                     "max_duration": args.max_duration,
                     "longest": args.longest if args.longest is not None else cuda}
        for v in variants:
            over = json.loads(json.dumps(overrides))
            if v == "baseline":
                over["train"]["compile"] = "none"
            if v == "mtlser_cached":
                over.setdefault("backbone", {})["freeze_feature_encoder"] = True
                over["data"]["cnn_cache_dir"] = str(tmp / "cnn_cache")
            n = args.procs if v != "baseline" else 1
            specs = [dict(base_spec, variant=v, overrides=over, exp_dir=str(tmp / f"exp_{v}_{i}")) for i in range(n)]
            print(f"running {v}{f' x {n} processes' if n > 1 else ''} ...", flush=True)
            rs = run_processes(specs)
            for r in rs:
                if "error" in r:
                    print(r["trace"], file=sys.stderr)
                    raise SystemExit(f"{v} failed: {r['error']}")
            r = dict(rs[0])
            if n > 1:
                r["procs"] = n
                r["per_process"] = rs
                r["audio_s_per_s"] = sum(x["audio_s"] for x in rs) / max(x["time_s"] for x in rs)
            results[v] = r

    protocol_audio = folds * epochs * n_protocol * float(durations[:n_protocol].mean())
    base = results.get("baseline", {}).get("audio_s_per_s")
    for v, r in results.items():
        r["protocol_hours"] = protocol_audio / r["audio_s_per_s"] / 3600
        if base and v != "baseline":
            r["ratio"] = r["audio_s_per_s"] / base
    out = {
        "settings": {"device": args.device, "model": "wav2vec2-base" if cuda else "scaled (CPU_ARCH)",
                     "arch_custom": None if cuda else CPU_ARCH, "batch_size": batch_size, "steps": steps,
                     "warmup_steps": warmup, "threads": args.threads, "procs": args.procs, "compile": args.compile,
                     "opts": args.opt, "utterances": len(subset), "subset_mean_s": float(subset.mean()),
                     "max_duration_s": args.max_duration, "seed": args.seed, "commit": git_commit(),
                     "protocol": {"folds": folds, "epochs": epochs, "utterances": n_protocol,
                                  "audio_s": protocol_audio}},
        "machine": dict(machine(args.device), loadavg_start=loadavg_start, loadavg_end=os.getloadavg()),
        "padding_share_protocol": {"random": pad_random, "bucket": pad_bucket, "bucket_ladder": pad_ladder},
        **results,
    }
    if "mtlser" in results and base:
        out["ratio"] = results["mtlser"]["ratio"]
    if "mtlser_cached" in results and base:
        out["ratio_cached"] = results["mtlser_cached"]["ratio"]

    mem = "peak GiB (GPU alloc)" if cuda else "peak RSS GiB"
    print(f"\n{'variant':<15}{'audio-s/s':>10}{'step s':>9}{'padding':>9}{mem:>21}{'longest':>9}{'ratio':>7}"
          f"{'protocol h':>12}")
    for v, r in results.items():
        print(f"{v:<15}{r['audio_s_per_s']:>10.1f}{r['step_time_s']:>9.3f}{100 * r['padding_share']:>8.1f}%"
              f"{r['peak_gib']:>21.2f}{r.get('peak_longest_gib', math.nan):>9.2f}{r.get('ratio', 1.0):>6.2f}x"
              f"{r['protocol_hours']:>12.1f}")
    print(f"padding at protocol size ({n_protocol} utterances): random {100 * pad_random:.1f}%, bucket "
          f"{100 * pad_bucket:.1f}%, bucket + ladder 1.05 {100 * pad_ladder:.1f}%")
    print(f"full protocol: {folds} folds x {epochs} epochs x {n_protocol} utterances = {protocol_audio / 3600:.0f} h "
          f"of audio; hours above are for one process at the measured rate, training steps only "
          f"(validation adds ~3-4 %)")
    if cuda:
        checks = []
        for v in ("mtlser", "mtlser_cached"):
            if v in results and base:
                goal, ratio = TARGETS[v]
                ok = results[v]["audio_s_per_s"] >= goal and results[v]["ratio"] >= ratio
                checks.append(f"{v} >= {goal:.0f} audio-s/s and >= {ratio:.0f}x: {'PASS' if ok else 'FAIL'}")
            if v in results and "peak_longest_gib" in results[v]:
                ok = results[v]["peak_longest_gib"] <= TARGETS["peak_longest_gib"]
                checks.append(f"{v} peak at the longest batch <= {TARGETS['peak_longest_gib']:.0f} GiB: "
                              f"{'PASS' if ok else 'FAIL'}")
        out["targets"] = checks
        print("\n".join(checks))
    print(f"machine: {out['machine'].get('gpu', out['machine']['cpu'])}; load average at start "
          f"{out['machine']['loadavg_start'][0]:.2f}, at end {out['machine']['loadavg_end'][0]:.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
