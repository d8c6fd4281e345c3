#!/usr/bin/env python3
"""Training throughput: Hugging Face transformers baselines vs mtlser's training path, interleaved.

Usage:
    python bench/train_throughput.py --device cpu  --json bench/results/cpu.json    # scaled model, ~5 min on 2 cores
    python bench/train_throughput.py --device cuda --json bench/results/cuda.json   # wav2vec2-base, random init
    python bench/train_throughput.py --device cpu --model base --steps 2 --variants baseline,mtlser --json ...
    python bench/train_throughput.py --device cuda --add fused=mtlser,backbone.cnn_norm_impl=fused --json ...
    python bench/train_throughput.py --device cuda --procs 4 --variants baseline,mtlser_cached --json ...

One run times training steps of the full objective (backbone + fusion + CE + lambda * CTC + Adam
step, batch 16) over the SAME utterances, drawn from an IEMOCAP-like duration distribution
(log-normal, mean ~4.5 s, cut at 20 s): the utterances of --steps batches of a bucketed epoch at
protocol size (4,400), spread evenly over its batch lengths, so that each path batches them as
it would a whole fold.

    baseline               transformers.Wav2Vec2Model + mtlser's heads, fp32, HF's default attention,
                           random batches padded to their longest utterance, audio preloaded
                           (bench/hf_baseline.py): a plain fine-tuning script
    baseline_tuned         the same with what a careful HF user sets by flags alone: bf16 autocast where
                           the device supports it (CUDA bf16; a CPU with native bf16 instructions), and
                           length-grouped batches (group_by_length: transformers' own grouping, with the
                           megabatches it would form over a whole fold)
    baseline_tuned_frozen  baseline_tuned + freeze_feature_encoder(): the comparison for mtlser_cached
    mtlser                 Trainer.train_step with the training stage's defaults (the paper's setting,
                           CNN trained), data loading as in stage 3 (audio read from disk)
    mtlser_cached          the same with backbone.freeze_feature_encoder: CNN output cached once (not
                           timed, reported as setup_s), epochs run the transformer only
    NAME (--add)           an mtlser or mtlser_cached variant with config overrides (levers, ablations)

Every variant lives in its own process for the whole run (its warm-up once, clean peak memory), and
the processes take turns: round 1 times A, B, C, ...; round 2 ..., C, B, A; and so on (--rounds, at
least 3 by default), each timed pass one epoch of the subset while the others wait. Load that drifts
during the run then falls on every variant alike instead of on whichever ran last. Reported per
variant: the median audio-seconds trained per second of wall time (padding not counted) with its
spread over the rounds, the process CPU time beside the wall time, padding, peak memory (GPU:
allocated; CPU: peak RSS), and ratios: ``ratio`` = the median over rounds of (variant / baseline)
in the same round, ``ratio_tuned`` the same against baseline_tuned (mtlser_cached and variants built
on it: against baseline_tuned_frozen). With --procs N an mtlser variant runs as N concurrent processes
and its figure is the AGGREGATE of N processes against one baseline process (folds sharing a GPU).

On CPU the model is scaled down by default (CPU_ARCH; --model base for wav2vec2-base), on a GPU it
is wav2vec2-base. Weights are random: speed does not depend on them. Timings on a shared machine
vary: only ratios of the same run mean anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import queue
import resource
import signal
import statistics
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
#: name -> (what runs, CNN frozen): the built-in variants.
VARIANTS = {
    "baseline": ("hf", False),
    "baseline_tuned": ("hf_tuned", False),
    "baseline_tuned_frozen": ("hf_tuned", True),
    "mtlser": ("mtlser", False),
    "mtlser_cached": ("mtlser", True),
}
#: The issue's targets on a GPU (checked when --device cuda): audio-s/s, x plain baseline, x tuned baseline.
TARGETS = {"mtlser": (3000.0, 10.0, 3.0), "mtlser_cached": (6000.0, 20.0, 3.0), "peak_longest_gib": 12.0}


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


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_rss_mib() -> float:
    """This process's peak resident memory: the kernel's VmHWM (Linux). Not ``ru_maxrss`` alone: a process started
    by fork + exec (multiprocessing's spawn, as the benchmarks' workers are) keeps in it the forking parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_gib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return peak_rss_mib() / 2 ** 10


def _padding(batch: dict) -> tuple[float, float]:
    """(valid, padded) elements along time of a collated batch."""
    if "feats" in batch:
        lens, T = batch["feat_lens"], batch["feats"].shape[1]
    else:
        lens, T = batch["wav_lens"], batch["wavs"].shape[1]
    return float(lens.sum()), float(len(lens) * T)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); without them bf16 autocast is emulated."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def tuned_hf_precision(device: str) -> str:
    """bf16 where the device supports it (what HF's Trainer(bf16=True) would be set to), else fp32."""
    import torch

    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


class HFRunner:
    """A Hugging Face fine-tuning loop: plain (fp32, random batches) or tuned by flags (see module doc)."""

    def __init__(self, spec: dict, cfg, tokens: list[str], data_dir: Path, tuned: bool, frozen: bool):
        import torch
        from hf_baseline import build_baseline

        from mtlser.data.dataset import BatchSampler, SERDataset
        from mtlser.model.backbone import build_backbone

        self.spec, self.tokens, self.device, self.tuned = spec, tokens, spec["device"], tuned
        kw = build_backbone(cfg.backbone).arch_kwargs  # the same architecture and dropouts as mtlser's
        self.model, _ = build_baseline(kw, len(EMOTIONS), len(tokens), cfg.loss.lambda_, cfg.loss.ctc_reduction,
                                       seed=cfg.train.seed)
        if frozen:
            self.model.backbone.model.freeze_feature_encoder()  # HF's own switch: no CNN gradients or graph
        self.model.to(self.device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                    weight_decay=cfg.optim.weight_decay)
        ds = SERDataset(data_dir / "train", token_list=tokens, emotions=EMOTIONS)
        self.items = [ds[i] for i in range(len(ds))]  # preloaded: the baseline pays no audio reading
        self.durations = ds.durations
        self.batch_size = cfg.data.batch_size
        self.seed = cfg.train.seed
        self.random = BatchSampler(ds.durations, cfg.data.batch_size, batching="random", seed=cfg.train.seed)
        self.precision = tuned_hf_precision(self.device) if tuned else "fp32"
        self.info = {"hf_attn_implementation": self.model.backbone.model.config._attn_implementation,
                     "precision": self.precision, "batching": "group_by_length" if tuned else "random",
                     "freeze_feature_encoder": frozen, "params_m": sum(p.numel() for p in params) / 1e6}

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        import torch

        if not self.tuned:
            return self.random.epoch_batches(epoch)
        from transformers.trainer_pt_utils import get_length_grouped_indices

        # HF's Trainer with group_by_length (LengthGroupedSampler): random "megabatches" sorted by length, cut
        # into batches by the DataLoader; megabatches as large as they would be over a whole fold (HF takes
        # min(utterances / (4 x batch), 50) batches), as the subset stands in for one.
        mult = max(1, min(self.spec["protocol_utterances"] // (4 * self.batch_size), 50))
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        order = get_length_grouped_indices(self.durations, self.batch_size, mega_batch_mult=mult, generator=g)
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def batches(self, epoch: int):
        from mtlser.data.dataset import collate

        for b in self.epoch_batches(epoch):
            yield collate([self.items[i] for i in b])

    def step(self, batch: dict) -> None:
        import torch

        from mtlser.data.dataset import batch_to

        batch = batch_to(batch, self.device)
        amp = torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16,
                             enabled=self.precision == "bf16")
        with amp:
            loss, _, _ = self.model(batch["wavs"], batch["wav_lens"], batch["emotions"], batch["targets"],
                                    batch["target_lens"])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def timed_epoch(self, epoch: int) -> dict:
        audio = valid = padded = 0.0
        steps = 0
        for batch in self.batches(epoch):
            v, p = _padding(batch)
            valid, padded = valid + v, padded + p
            audio += float(batch["num_samples"].sum()) / 16000
            self.step(batch)
            steps += 1
        return {"audio_s": audio, "steps": steps, "padding_share": 1 - valid / padded}

    def longest(self) -> None:
        from mtlser.data.dataset import collate

        self.step(collate(_longest_items(self.spec, self.tokens)))


class MtlserRunner:
    """mtlser's training stage: Trainer.train_epoch over the subset (data loading, step, statistics)."""

    def __init__(self, spec: dict, cfg, tokens: list[str], data_dir: Path, cached: bool):
        from mtlser.train.trainer import Trainer

        self.spec, self.cfg, self.tokens, self.cached = spec, cfg, tokens, cached
        t0 = time.perf_counter()
        self.trainer = Trainer(cfg, data_dir, tokens, Path(spec["exp_dir"]))
        setup_s = time.perf_counter() - t0  # includes building the CNN cache for mtlser_cached
        self.trainer.model.train()
        self.info = {"setup_s": setup_s, "precision": self.trainer.precision,
                     "params_m": sum(p.numel() for p in self.trainer.model.parameters()) / 1e6}

    def batches(self, epoch: int):
        self.trainer.sampler.set_epoch(epoch)
        yield from self.trainer.train_loader

    def step(self, batch: dict) -> None:
        self.trainer.train_step(batch)

    def timed_epoch(self, epoch: int) -> dict:
        from mtlser.data.dataset import padding_share

        tr = self.trainer
        tr.epoch = epoch
        stats = tr.train_epoch()  # as stage 3 runs it: loader, steps, statistics (read once per log interval)
        durations = tr.train_set.durations
        return {"audio_s": float(sum(durations)), "steps": len(tr.sampler.epoch_batches(epoch)),
                "padding_share": padding_share(tr.sampler.epoch_batches(epoch), durations, self.cfg.data.pad_ladder),
                "loss": stats.get("loss")}

    def longest(self) -> None:
        from mtlser.data.dataset import collate

        backbone = self.trainer.model.backbone if self.cached else None
        self.trainer.train_step(collate(_longest_items(self.spec, self.tokens, backbone),
                                        pad_ladder=self.cfg.data.pad_ladder))
        self.trainer.loss_check.read({})


def worker(spec: dict, commands, results, setup_lock=None) -> None:
    """One variant's process: set up and warm up (holding setup_lock if given: one process at a time), then
    run the parent's commands until "exit"."""
    import traceback

    name, index = spec["name"], spec["index"]
    # Ended by the parent (a time limit): unwind, so that data-loading workers are shut down with this process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with setup_lock if setup_lock is not None else contextlib.nullcontext():
            results.put({"name": name, "index": index, **_setup(spec)})
        runner = _RUNNER
        while True:
            cmd, arg = commands.get()
            if cmd == "exit":
                break
            device = spec["device"]
            _sync(device)
            _peak_reset(device)
            if cmd == "time":
                c0, ch0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                out = runner.timed_epoch(arg)
                _sync(device)
                elapsed = time.perf_counter() - t0
                ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # data-loading workers, once they are joined
                cpu = time.process_time() - c0 + (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
                out.update(time_s=elapsed, cpu_s=cpu, peak_gib=_peak_gib(device))
            else:  # "longest": one step on the peak-memory batch
                t0 = time.perf_counter()
                runner.longest()
                _sync(device)
                out = {"longest_step_s": time.perf_counter() - t0, "peak_longest_gib": _peak_gib(device)}
            results.put({"name": name, "index": index, **out})
    except BaseException as e:  # report instead of hanging the parent
        results.put({"name": name, "index": index, "error": f"{type(e).__name__}: {e}",
                     "trace": traceback.format_exc()})


_RUNNER = None


def _setup(spec: dict) -> dict:
    """Build this process's runner and warm it up; returns what the setup reports."""
    import logging

    import torch

    global _RUNNER
    logging.basicConfig(level=logging.WARNING)
    if sys.platform.startswith("linux"):
        # This process was spawned, which makes spawn its default too; stage 3 (python -m mtlser.train) forks
        # its DataLoader workers, as Linux does by default: so do the variants with data.num_workers.
        mp.set_start_method("fork", force=True)
    torch.set_num_threads(spec["threads"])
    from mtlser.config import load_config
    from mtlser.text.tokenize import read_token_list

    cfg = load_config(None, spec["overrides"])
    tokens = read_token_list(spec["token_list"])
    data_dir = Path(spec["data_dir"])
    kind, frozen = spec["kind"], spec["frozen"]
    if kind == "mtlser":
        _RUNNER = MtlserRunner(spec, cfg, tokens, data_dir, cached=frozen)
    else:
        _RUNNER = HFRunner(spec, cfg, tokens, data_dir, tuned=kind == "hf_tuned", frozen=frozen)
    # Warm-up: on GPUs a whole pass (every padded length planned/compiled once), on CPUs a few steps.
    t0 = time.perf_counter()
    for i, batch in enumerate(_RUNNER.batches(0)):
        if spec["warmup_steps"] >= 0 and i >= spec["warmup_steps"]:
            break
        _RUNNER.step(batch)
    if kind == "mtlser":
        _RUNNER.trainer.loss_check.read({})
    _sync(spec["device"])
    return {"pid": os.getpid(), "warmup_s": time.perf_counter() - t0, **_RUNNER.info}


def git_commit() -> str:
    """The checkout's commit (mtlser.expdir.git_commit: MTLSER_COMMIT where the tree has no .git)."""
    from mtlser.expdir import git_commit

    return git_commit()["git_commit"]


def machine(device: str) -> dict:
    """The environment record of mtlser.expdir (the one a model dir's env.json holds), with the GPU's memory
    and the transformers version the baselines run on."""
    import torch

    from mtlser.expdir import environment

    info = environment(torch.device(device))
    if device.startswith("cuda"):
        info["gpu_mem_gib"] = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


class Fleet:
    """The variants' processes: started together, then driven one variant at a time."""

    def __init__(self, specs: list[dict], serial_setup: bool = False):
        self.ctx = mp.get_context("spawn")
        self.results = self.ctx.Queue()
        # One warm-up at a time where memory is short (several wav2vec2-base variants on a CPU machine).
        # Kept on self: the children unpickle it after start(), and a collected lock's semaphore is gone.
        self.setup_lock = self.ctx.Lock() if serial_setup else None
        self.commands: dict[str, list] = {}
        self.procs = []
        for spec in specs:
            q = self.ctx.Queue()
            self.commands.setdefault(spec["name"], []).append(q)
            # Not daemonic: a variant with data.num_workers starts DataLoader workers of its own. stop() ends them.
            p = self.ctx.Process(target=worker, args=(spec, q, self.results, self.setup_lock))
            p.start()
            self.procs.append((spec["name"], p))

    def _collect(self, n: int) -> list[dict]:
        out = []
        while len(out) < n:
            try:
                r = self.results.get(timeout=5)
            except queue.Empty:
                # A process killed from outside (the kernel's OOM killer: wav2vec2-base variants take several
                # GiB each) reports nothing: without this check the run would wait for it forever.
                dead = [(name, p) for name, p in self.procs if p.exitcode is not None]
                if dead:
                    name, p = dead[0]
                    why = " (SIGKILL: out of memory? run fewer --variants)" if p.exitcode == -signal.SIGKILL else ""
                    raise SystemExit(f"{name} (process {p.pid}) died with exit code {p.exitcode}{why}")
                continue
            if "error" in r:
                print(r["trace"], file=sys.stderr)
                raise SystemExit(f"{r['name']} (process {r['index']}) failed: {r['error']}")
            out.append(r)
        return sorted(out, key=lambda r: r["index"])

    def ready(self) -> dict[str, list[dict]]:
        by_name: dict[str, list[dict]] = {}
        for r in self._collect(len(self.procs)):
            by_name.setdefault(r["name"], []).append(r)
        return by_name

    def run(self, name: str, cmd: str, arg=None) -> list[dict]:
        """One command to every process of a variant at once (--procs: they run concurrently)."""
        for q in self.commands[name]:
            q.put((cmd, arg))
        return self._collect(len(self.commands[name]))

    def stop(self, graceful: bool = True) -> None:
        """Ask every process to exit (graceful), or end them at once (the run was cut short)."""
        if graceful:
            for qs in self.commands.values():
                for q in qs:
                    q.put(("exit", None))
        for _, p in self.procs:
            if graceful:
                p.join(timeout=60)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)


def summarize(passes: dict[str, list[dict]], baseline_of: dict[str, tuple[str | None, str | None]],
              compare: str | None = None) -> dict:
    """Per-variant medians, spread and paired ratios from the timed passes of every round.

    Args:
        passes: variant -> one dict per round (audio_s, time_s, cpu_s; already aggregated over --procs).
        baseline_of: variant -> (plain baseline, tuned baseline) to compare it with (None: not run).
        compare: also every variant against this one (``ratio_vs_<compare>``), e.g. a lever against mtlser.
    """
    out: dict[str, dict] = {}
    for name, rounds in passes.items():
        rates = [r["audio_s"] / r["time_s"] for r in rounds]
        cpu_rates = [r["audio_s"] / r["cpu_s"] for r in rounds if r["cpu_s"] > 0]
        med = statistics.median(rates)
        out[name] = {
            "audio_s_per_s": med, "audio_s_per_s_rounds": rates, "audio_s_per_s_min": min(rates),
            "audio_s_per_s_max": max(rates), "spread": (max(rates) - min(rates)) / med,
            "audio_s_per_cpu_s": statistics.median(cpu_rates) if cpu_rates else math.nan,
            "cpu_per_wall": statistics.median(r["cpu_s"] / r["time_s"] for r in rounds),
            "step_time_s": statistics.median(r["time_s"] / r["steps"] for r in rounds),
        }
        out[name]["audio_s_per_cpu_s_rounds"] = cpu_rates
    for name, (plain, tuned) in baseline_of.items():
        pairs = [("ratio", plain), ("ratio_tuned", tuned)] + ([(f"ratio_vs_{compare}", compare)] if compare else [])
        for key, base in pairs:
            if base is None or base not in out or name == base:
                continue
            paired = [a / b for a, b in zip(out[name]["audio_s_per_s_rounds"], out[base]["audio_s_per_s_rounds"])]
            out[name][key] = statistics.median(paired)
            out[name][f"{key}_rounds"] = paired
            out[name][f"{key}_vs"] = base
            out[name][f"{key}_of_medians"] = out[name]["audio_s_per_s"] / out[base]["audio_s_per_s"]
            # The same in CPU time: what each step costs the processor, less at the mercy of other users' load
            # (a process that waits for a core accrues wall time, not CPU time).
            cpu = [a / b for a, b in zip(out[name]["audio_s_per_cpu_s_rounds"], out[base]["audio_s_per_cpu_s_rounds"])]
            if cpu:
                out[name][f"{key}_cpu"] = statistics.median(cpu)
    return out


def _set(tree: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_added(text: str) -> tuple[str, str, dict]:
    """``NAME=BASE,key=value,...`` (BASE: mtlser or mtlser_cached) -> (name, base, {key: value})."""
    import yaml

    name, _, rest = text.partition("=")
    base, *pairs = rest.split(",")
    if not name or base not in ("mtlser", "mtlser_cached") or any("=" not in kv for kv in pairs):
        raise argparse.ArgumentTypeError(f"--add {text!r}: expected NAME=mtlser|mtlser_cached,key=value,...")
    return name, base, {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in pairs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--add", action="append", default=[], type=parse_added, metavar="NAME=BASE,KEY=VALUE,...",
                        help="an extra variant: BASE (mtlser or mtlser_cached) with config overrides, e.g. "
                             "--add fused=mtlser,backbone.cnn_norm_impl=fused,train.defer_host_sync=true")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per variant, interleaved (default 3)")
    parser.add_argument("--model", choices=["scaled", "base"], help="scaled (CPU_ARCH; default on cpu) or "
                        "wav2vec2-base (default on cuda)")
    parser.add_argument("--arch-json", help="the scaled model's wav2vec2_model arguments instead of CPU_ARCH (JSON; "
                        "the tests run a tiny one)")
    parser.add_argument("--steps", type=int, help="timed batches per pass (the subset has steps x batch size "
                        "utterances); default 64 on cuda, 10 on cpu")
    parser.add_argument("--warmup-steps", type=int, help="warm-up batches; -1 = a whole pass (default on cuda), "
                        "default 1 on cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per process (default 2)")
    parser.add_argument("--procs", type=int, default=1,
                        help="run each mtlser variant as N concurrent processes (folds sharing one GPU); its "
                             "figure is then the aggregate of N processes against one baseline process")
    parser.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead"],
                        help="train.compile for the mtlser variants")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every mtlser variant, e.g. --opt train.sdpa_backend=default")
    parser.add_argument("--max-duration", type=float, default=20.0, help="longest utterance (s)")
    parser.add_argument("--longest", action=argparse.BooleanOptionalAction,
                        help="also time one batch of 16 longest utterances per mtlser variant for the peak memory "
                             "(default: on cuda)")
    parser.add_argument("--compare", metavar="VARIANT", help="also report every variant's paired ratio to this one "
                        "(ratio_vs_VARIANT), e.g. --compare mtlser for levers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--protocol", default="10,100,4400", help="folds,epochs,training utterances per fold")
    args = parser.parse_args(argv)
    # A time limit's SIGTERM unwinds like an error: the variants' processes are ended, the last JSON stays.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import yaml

    from mtlser.data.dataset import BatchSampler, padding_share

    loadavg_start = os.getloadavg()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        parser.error(f"unknown variants {bad}; expected some of {list(VARIANTS)}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.compare and args.compare not in names + [n for n, _, _ in args.add]:
        parser.error(f"--compare {args.compare}: not one of the variants run")
    cuda = args.device == "cuda"
    model = args.model or ("base" if cuda else "scaled")
    steps = args.steps or (64 if cuda else 10)
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

    common: dict = {"train": {"device": args.device, "num_threads": args.threads, "compile": args.compile},
                    "data": {"batch_size": batch_size}}
    arch = json.loads(args.arch_json) if args.arch_json else CPU_ARCH
    if model == "scaled":
        common["backbone"] = {"size": "custom", "custom": arch}
    mtlser_over: dict = json.loads(json.dumps(common))  # (the baselines ignore train.compile)
    for kv in args.opt:
        key, _, value = kv.partition("=")
        _set(mtlser_over, key, yaml.safe_load(value))

    # name -> (kind, frozen, overrides, processes, (plain baseline, tuned baseline))
    plan: dict[str, tuple] = {}
    for name in names:
        kind, frozen = VARIANTS[name]
        tuned_base = "baseline_tuned_frozen" if frozen else "baseline_tuned"
        if kind == "mtlser":
            plan[name] = (kind, frozen, mtlser_over, args.procs, ("baseline", tuned_base))
        else:
            plan[name] = (kind, frozen, common, 1, ("baseline", None))
    for name, base, extra in args.add:
        if name in plan:
            parser.error(f"--add {name}: that name is taken")
        over = json.loads(json.dumps(mtlser_over))
        for key, value in extra.items():
            _set(over, key, value)
        frozen = base == "mtlser_cached"
        plan[name] = ("mtlser", frozen, over, args.procs,
                      ("baseline", "baseline_tuned_frozen" if frozen else "baseline_tuned"))

    protocol_audio = folds * epochs * n_protocol * float(durations[:n_protocol].mean())
    settings = {"device": args.device, "model": "wav2vec2-base" if model == "base" else "scaled (CPU_ARCH)",
                "arch_custom": arch if model == "scaled" else None, "batch_size": batch_size, "steps": steps,
                "repeats": args.rounds, "order": "interleaved, reversed every other round", "warmup_steps": warmup,
                "threads": args.threads, "procs": args.procs, "compile": args.compile, "opts": args.opt,
                "compare": args.compare,
                "added": [f"{n}={b},{','.join(f'{k}={v}' for k, v in e.items())}" for n, b, e in args.add],
                "utterances": len(subset), "subset_mean_s": float(subset.mean()), "max_duration_s": args.max_duration,
                "seed": args.seed, "commit": git_commit(),
                "protocol": {"folds": folds, "epochs": epochs, "utterances": n_protocol, "audio_s": protocol_audio}}

    def report(setup: dict, passes: dict, per_process: dict, longest: dict, rounds_done: int) -> dict:
        summary = summarize(passes, {name: p[4] for name, p in plan.items()}, args.compare)
        variants: dict[str, dict] = {}
        for name, (kind, frozen, over, n, _) in plan.items():
            s, first = summary[name], setup[name][0]
            v = {"kind": kind, "cnn_frozen": frozen, **{k: first[k] for k in first if k not in ("name", "index")},
                 **s, "padding_share": passes[name][0]["padding_share"],
                 "peak_gib": max(p["peak_gib"] for p in passes[name]),
                 "cpu_s_rounds": [p["cpu_s"] for p in passes[name]],
                 "time_s_rounds": [p["time_s"] for p in passes[name]],
                 "protocol_hours": protocol_audio / s["audio_s_per_s"] / 3600}
            if kind == "mtlser":
                v["overrides"] = {k: val for k, val in _flat(over).items() if _flat(common).get(k) != val}
            if n > 1:
                v["procs"] = n
                v["figure"] = f"aggregate of {n} concurrent processes (vs one baseline process)"
                v["per_process"] = [[{k: x[k] for k in ("audio_s", "time_s", "cpu_s")} for x in rs]
                                    for rs in per_process[name]]
            if name in longest:
                v.update({k: longest[name][k] for k in ("longest_step_s", "peak_longest_gib")})
            variants[name] = v
        out = {"complete": rounds_done == args.rounds and (bool(longest) or not want_longest),
               "settings": settings,
               "machine": dict(machine_info, loadavg_start=loadavg_start, loadavg_end=os.getloadavg()),
               "padding_share_protocol": {"random": pad_random, "bucket": pad_bucket, "bucket_ladder": pad_ladder},
               "repeats": rounds_done, "variants": variants}
        for key, name in (("ratio", "mtlser"), ("ratio_cached", "mtlser_cached")):
            for suffix in ("", "_tuned", "_cpu", "_tuned_cpu"):
                if f"ratio{suffix}" in variants.get(name, {}):
                    out[f"{key}{suffix}"] = variants[name][f"ratio{suffix}"]
        if cuda:
            out["targets"] = target_checks(variants, args.max_duration)
        return out

    def write(out: dict) -> None:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = path.with_name(f".{path.name}.tmp")
        tmp_path.write_text(json.dumps(out, indent=1) + "\n")
        os.replace(tmp_path, path)

    machine_info = machine(args.device)
    want_longest = args.longest if args.longest is not None else cuda
    with tempfile.TemporaryDirectory(prefix="mtlser_bench_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        data_dir, token_list = write_corpus(tmp, subset, args.seed)
        print(f"corpus: {len(subset)} utterances, {subset.sum() / 60:.1f} min (mean {subset.mean():.2f} s, "
              f"max {subset.max():.1f} s), written in {time.perf_counter() - t0:.1f} s", flush=True)
        base_spec = {"device": args.device, "threads": args.threads, "data_dir": str(data_dir),
                     "token_list": str(token_list), "warmup_steps": warmup, "batch_size": batch_size,
                     "max_duration": args.max_duration, "protocol_utterances": n_protocol}
        specs = []
        for name, (kind, frozen, over, n, _) in plan.items():
            over = json.loads(json.dumps(over))
            if kind == "mtlser" and frozen:
                over.setdefault("backbone", {})["freeze_feature_encoder"] = True
                over["data"]["cnn_cache_dir"] = str(tmp / "cnn_cache")
            for i in range(n):
                specs.append(dict(base_spec, name=name, index=i, kind=kind, frozen=frozen, overrides=over,
                                  exp_dir=str(tmp / f"exp_{name}_{i}")))
        print(f"starting {len(specs)} processes (set-up and warm-up of {', '.join(plan)}"
              f"{'' if cuda else ', one at a time'}) ...", flush=True)
        t0 = time.perf_counter()
        fleet = Fleet(specs, serial_setup=not cuda)
        graceful = False
        try:
            setup = fleet.ready()
            print(f"ready in {time.perf_counter() - t0:.0f} s", flush=True)
            passes: dict[str, list[dict]] = {name: [] for name in plan}
            per_process: dict[str, list[list[dict]]] = {name: [] for name in plan}
            order = list(plan)
            for r in range(args.rounds):
                for name in (order if r % 2 == 0 else order[::-1]):
                    rs = fleet.run(name, "time", r + 1)  # epoch r + 1 of the subset (epoch 0 warmed up)
                    per_process[name].append(rs)
                    # --procs: N processes over the same span: their audio over the slowest one's time
                    passes[name].append({"audio_s": sum(x["audio_s"] for x in rs),
                                         "time_s": max(x["time_s"] for x in rs),
                                         "cpu_s": sum(x["cpu_s"] for x in rs), "steps": rs[0]["steps"],
                                         "padding_share": rs[0]["padding_share"],
                                         "peak_gib": max(x["peak_gib"] for x in rs)})
                    rate = passes[name][-1]["audio_s"] / passes[name][-1]["time_s"]
                    print(f"round {r + 1}/{args.rounds} {name:<24}{rate:>9.1f} audio-s/s", flush=True)
                write(report(setup, passes, per_process, {}, r + 1))  # so far, in case the run is cut short
            longest: dict[str, dict] = {}
            if want_longest:
                for name, (kind, *_rest) in plan.items():
                    if kind == "mtlser":
                        longest[name] = fleet.run(name, "longest")[0]
            graceful = True
        finally:
            fleet.stop(graceful)
    out = report(setup, passes, per_process, longest, args.rounds)
    print_table(out, n_protocol)
    write(out)
    print(f"wrote {args.json}")
    return 0


def target_checks(variants: dict, max_duration: float) -> list[str]:
    """The issue's GPU targets, PASS/FAIL per mtlser variant."""
    checks = []
    for name, v in variants.items():
        if v["kind"] != "mtlser":
            continue
        goal, x_plain, x_tuned = TARGETS["mtlser_cached" if v["cnn_frozen"] else "mtlser"]
        if "ratio" in v and "ratio_tuned" in v:
            ok = v["audio_s_per_s"] >= goal and v["ratio"] >= x_plain and v["ratio_tuned"] >= x_tuned
            checks.append(f"{name}: >= {goal:.0f} audio-s/s, >= {x_plain:.0f}x plain, >= {x_tuned:.0f}x tuned: "
                          f"{'PASS' if ok else 'FAIL'}")
        if "peak_longest_gib" in v:
            ok = v["peak_longest_gib"] <= TARGETS["peak_longest_gib"]
            checks.append(f"{name}: peak at 16 x {max_duration:.0f} s <= {TARGETS['peak_longest_gib']:.0f} GiB: "
                          f"{'PASS' if ok else 'FAIL'} ({v['peak_longest_gib']:.2f})")
    return checks


def print_table(out: dict, n_protocol: int) -> None:
    cuda = out["settings"]["device"] == "cuda"
    mem = "peak GiB (GPU)" if cuda else "peak RSS GiB"
    print(f"\n{'variant':<24}{'audio-s/s':>10}{'min-max':>15}{'/cpu-s':>8}{'step s':>8}{'pad':>6}{mem:>15}"
          f"{'ratio':>7}{'tuned':>7}{'cpu:ratio':>10}{'tuned':>7}")
    for name, v in out["variants"].items():
        label = name + (f" x{v['procs']} (aggr.)" if "procs" in v else "")
        def x(key: str) -> str:
            return f"{v[key]:6.2f}x" if key in v else ""

        print(f"{label:<24}{v['audio_s_per_s']:>10.1f}{v['audio_s_per_s_min']:>7.1f}-{v['audio_s_per_s_max']:<7.1f}"
              f"{v['audio_s_per_cpu_s']:>8.1f}{v['step_time_s']:>8.3f}{100 * v['padding_share']:>5.1f}%"
              f"{v.get('peak_longest_gib', v['peak_gib']):>15.2f}{x('ratio'):>7}{x('ratio_tuned'):>7}"
              f"{x('ratio_cpu'):>10}{x('ratio_tuned_cpu'):>7}")
    print(f"{out['repeats']} interleaved rounds; audio-s/s: median (min-max over rounds); /cpu-s: audio-s per "
          f"process CPU second; ratio: median over rounds of (variant / baseline in the same round); tuned: the "
          f"same vs baseline_tuned (cached variants: vs baseline_tuned_frozen); cpu: the same ratios in CPU time")
    compare = out["settings"].get("compare")
    if compare:
        print(f"vs {compare} (median over rounds, wall / CPU time): " + ", ".join(
            f"{n} {v[f'ratio_vs_{compare}']:.2f}x / {v.get(f'ratio_vs_{compare}_cpu', math.nan):.2f}x"
            for n, v in out["variants"].items() if f"ratio_vs_{compare}" in v))
    pad = out["padding_share_protocol"]
    print(f"padding at protocol size ({n_protocol} utterances): random {100 * pad['random']:.1f}%, bucket "
          f"{100 * pad['bucket']:.1f}%, bucket + ladder 1.05 {100 * pad['bucket_ladder']:.1f}%; full protocol "
          f"{out['settings']['protocol']['audio_s'] / 3600:.0f} h of audio")
    for line in out.get("targets", []):
        print(line)
    m = out["machine"]
    print(f"machine: {m['gpu'] if 'gpu_mem_gib' in m else m['cpu']}; load average at start "
          f"{m['loadavg_start'][0]:.2f}, at end "
          f"{m['loadavg_end'][0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
