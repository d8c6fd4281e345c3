#!/usr/bin/env python3
"""CPU inference throughput: mtlser (torch fp32/bf16, onnx fp32/int8) vs what a transformers user runs (issue 22).

Usage:
    python bench/infer_throughput.py --json bench/results/infer_cpu.json              # base size, 2 threads
    python bench/infer_throughput.py --size scaled --files 20 --long 2 --long-s 30 --json /tmp/quick.json

One run writes --files WAV files of 1-20 s (IEMOCAP-like log-normal durations, mean ~4.5 s) and
--long recordings of --long-s seconds, builds one model with random weights (speed does not
depend on them; fusion and emotion head drawn far from uniform so that labels differ between
files) at wav2vec2-base size, exports it to transformers (mtlser.export.hf's mapping; one input
per call is checked exact) and to ONNX (mtlser.export.onnx, checked), and times on the same files:

    pipeline_default     transformers pipeline("audio-classification", top_k=None), one file per call
    pipeline_bs<N>       the same pipeline given every file at once with batch_size=N (--pipeline-batch-sizes)
    transformers_direct  AutoFeatureExtractor + AutoModelForAudioClassification on batches of --batch-size
                         sorted by duration (padded, attention mask), softmax: a hand-written transformers loop
    mtlser_torch_fp32    mtlser.infer.runner.label with SERPredictor (mtlser-infer's path and defaults: windows
                         of 20 s side by side for longer recordings, batches by duration)
    mtlser_torch_bf16    the same at bf16 (only on CPUs with native bf16; its bf16 copy: mtlser.infer.backends)
    mtlser_onnx_fp32     the same path on onnxruntime (the exported graph)
    mtlser_onnx_int8     the graph with onnxruntime's dynamic int8 quantisation

Every variant reads the files itself (soundfile; timed). Each variant runs in a fresh worker
process per round (its peak RSS is its own; the model loaded and one untimed warm-up pass over the
first --warmup-files files before the timed pass), and the rounds run interleaved in alternating
order (A B C, C B A, ...) so that a shared machine's load drift reaches all alike; the JSON is
rewritten after every round ("complete": false until the last). Reported per variant: medians over rounds of audio-seconds per wall-second and per CPU-second (the
worker's process CPU time, all threads), peak RSS, and the share of files whose label equals
mtlser_torch_fp32's; ratios are medians of per-round time ratios. A long recording's label is
mtlser's mean over its windows, while the transformers variants take it whole, so their labels
of the long recordings may differ by definition (the short files' agreement is given apart).

--hour S also labels one synthetic recording of S seconds with mtlser_onnx_int8 in a fresh
worker and reports its peak RSS (windows are read from the file one batch at a time).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mtlser.expdir import environment  # noqa: E402  (the repo on sys.path first)
from mtlser.infer.output import HOP_S, WINDOW_S  # noqa: E402  (mtlser-infer's defaults)

#: A smaller wav2vec2 shape for a quick look and the test (--size scaled): bench/train_throughput.py's CPU model.
SCALED = "scaled"
EMOTIONS = ["ang", "hap", "sad", "neu"]
TOKENS = ["<blank>"] + [f"{c}{e}" for c in ("S", "F", "N", "L", "V", "Vs") for e in range(4)]
REFERENCE = "mtlser_torch_fp32"


def arch_kwargs(size: str) -> dict:
    from mtlser.model.architectures import architecture

    if size == SCALED:
        from train_throughput import CPU_ARCH

        return architecture("wav2vec2", "custom", dict(CPU_ARCH))
    return architecture("wav2vec2", size)


def build_predictor(size: str, seed: int = 0):
    """An mtlser SERPredictor with random weights (fusion logits ~ N(0, 1), emotion head ~ N(0, 0.5))."""
    import torch

    from mtlser.config import load_config
    from mtlser.infer import SERPredictor
    from mtlser.model.backbone import conv_layers_as_lists
    from mtlser.model.ser_model import build_model

    kw = arch_kwargs(size)
    cfg = load_config(None, {"backbone": {"size": "custom", "custom": conv_layers_as_lists(kw)}})
    torch.manual_seed(seed)
    model = build_model(cfg, vocab_size=len(TOKENS), num_emotions=len(EMOTIONS)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.fusion.logits.copy_(torch.randn(model.fusion.logits.shape, generator=g))
        model.emotion_head.weight.copy_(0.5 * torch.randn(model.emotion_head.weight.shape, generator=g))
        model.emotion_head.bias.copy_(0.5 * torch.randn(model.emotion_head.bias.shape, generator=g))
    arch = {"arch": "wav2vec2", "arch_kwargs": kw}
    meta = {"emotions": EMOTIONS, "tokens": TOKENS, "sample_rate": 16000, "location": size, "info": arch,
            "config": cfg}
    return SERPredictor(model, meta)


def write_hf(predictor, out: Path) -> dict:
    """The transformers export of the predictor's model (mtlser.export.hf's mapping), and its exactness check."""
    import transformers

    from mtlser.export.hf import _CLASSES, compare, hf_config, hf_state

    model, meta = predictor.model, predictor.metas[0]
    hf = getattr(transformers, _CLASSES["wav2vec2"][1])(hf_config(model, meta)).eval()
    hf.load_state_dict(hf_state(model, hf, "wav2vec2"), strict=True)
    hf.save_pretrained(str(out))
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False,
                                          return_attention_mask=True).save_pretrained(str(out))
    return compare(predictor, out)


def balance_head(predictor, paths: list[Path]) -> None:
    """Shift the emotion head's biases so that every class has the same mean log-probability over ``paths``
    (--balanced-head); the model builders (build_predictor) then rebuild it from the saved weights."""
    import soundfile as sf
    import torch

    probs = np.concatenate([predictor.predict_arrays([sf.read(str(p), dtype="float32")[0]])[0] for p in paths])
    with torch.no_grad():
        predictor.model.emotion_head.bias -= torch.from_numpy(np.log(probs).mean(axis=0)).float()


def write_files(root: Path, n: int, n_long: int, long_s: float, seed: int) -> list[Path]:
    import soundfile as sf
    from train_throughput import iemocap_like_durations

    rng = np.random.default_rng(seed)
    durations = list(iemocap_like_durations(n, seed, lo=1.0, hi=20.0)) + [long_s + 7.0 * i for i in range(n_long)]
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, dur in enumerate(durations):
        t = np.arange(int(dur * 16000)) / 16000
        f0 = 100 + 80 * rng.random() + 30 * np.sin(2 * np.pi * t / (3 + 5 * rng.random()))
        x = (0.1 + 0.2 * rng.random()) * np.sin(2 * np.pi * f0 * t) + (0.01 + 0.05 * rng.random()) * \
            rng.standard_normal(len(t))
        paths.append(root / f"{'long' if i >= n else 'utt'}{i:04d}.wav")
        sf.write(paths[-1], x.astype(np.float32), 16000, subtype="PCM_16")
    return paths


def synth_hour(path: Path, seconds: float) -> None:
    """A long recording written block by block (never whole in memory)."""
    import soundfile as sf

    rng = np.random.default_rng(7)
    block = 16000 * 60
    with sf.SoundFile(str(path), "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        done = 0
        while done < seconds * 16000:
            n = int(min(block, seconds * 16000 - done))
            t = (done + np.arange(n)) / 16000
            f0 = 140 + 60 * np.sin(2 * np.pi * t / 97)
            f.write((0.2 * np.sin(2 * np.pi * f0 * t) + 0.03 * rng.standard_normal(n)).astype(np.float32))
            done += n


# ---------------------------------------------------------------- the variants, each in its own worker process

def make_runner(variant: str, spec: dict):
    """A function labelling spec['paths'] -> list of labels (one per file), for ``variant``."""
    import soundfile as sf
    import torch

    torch.set_num_threads(spec["threads"])
    paths = spec["paths"]
    if variant.startswith("pipeline") or variant == "transformers_direct":
        import transformers

        if variant == "transformers_direct":
            fe = transformers.AutoFeatureExtractor.from_pretrained(spec["hf_dir"])
            model = transformers.AutoModelForAudioClassification.from_pretrained(spec["hf_dir"]).eval()
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

            def run():
                wavs = [sf.read(p, dtype="float32")[0] for p in paths]
                order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
                out = [None] * len(wavs)
                with torch.inference_mode():
                    for k in range(0, len(order), spec["batch_size"]):
                        b = order[k:k + spec["batch_size"]]
                        inputs = fe([wavs[i] for i in b], sampling_rate=16000, return_tensors="pt", padding=True)
                        probs = model(**inputs).logits.softmax(-1)
                        for i, row in zip(b, probs.argmax(-1).tolist()):
                            out[i] = labels[row]
                return out
            return run
        classify = transformers.pipeline("audio-classification", model=spec["hf_dir"], top_k=None, device="cpu")
        bs = 1 if variant == "pipeline_default" else int(variant.split("bs")[1])

        def best(result):
            return max(result, key=lambda r: r["score"])["label"]

        def run():
            if bs == 1:
                return [best(classify(sf.read(p, dtype="float32")[0])) for p in paths]
            return [best(r) for r in classify([sf.read(p, dtype="float32")[0] for p in paths], batch_size=bs)]
        return run

    from mtlser.infer.audio import Recording
    from mtlser.infer.backends import OnnxPredictor
    from mtlser.infer.runner import label

    _, backend, precision = variant.split("_")
    if backend == "onnx":
        predictor = OnnxPredictor(Path(spec["onnx"]).read_bytes(), spec["onnx"], precision, spec["threads"])
    else:
        from safetensors.torch import load_file

        predictor = build_predictor(spec["size"])
        predictor.model.load_state_dict(load_file(spec["weights"]))
        predictor.precision = precision

    def run():
        recordings = [Recording(Path(p).name, p) for p in paths]
        done = label(predictor, recordings, window=WINDOW_S, hop=HOP_S, batch_size=spec["batch_size"],
                     progress=False)
        bad = [d for d in done if d.error]
        assert not bad, f"{bad[0].recording.id}: {bad[0].error}"
        return [d.result["emotion"] for d in done]
    return run


def worker(variant: str, spec: dict, conn) -> None:
    from train_throughput import peak_rss_mib

    try:
        run = make_runner(variant, spec)
        conn.send("ready")
        while True:
            cmd = conn.recv()
            if cmd == "stop":
                conn.send({"peak_rss_mib": peak_rss_mib()})
                return
            if cmd == "warmup":  # the first files only: allocators, kernels, onnxruntime's arenas
                keep = list(spec["paths"])
                spec["paths"][:] = keep[:spec["warmup_files"]]
                try:
                    run()
                finally:
                    spec["paths"][:] = keep
                conn.send({})
                continue
            wall0, cpu0 = time.perf_counter(), time.process_time()
            labels = run()
            conn.send({"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0, "labels": labels,
                       "peak_rss_mib": peak_rss_mib()})
    except BaseException as e:  # the parent reports it and stops
        conn.send({"error": f"{type(e).__name__}: {e}"})


class Worker:
    def __init__(self, ctx, variant: str, spec: dict):
        self.variant = variant
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker, args=(variant, spec, child), daemon=True)
        self.proc.start()
        self._expect(self.conn.recv())

    def _expect(self, msg):
        if isinstance(msg, dict) and "error" in msg:
            raise SystemExit(f"{self.variant}: {msg['error']}")
        return msg

    def run(self, cmd: str = "run") -> dict:
        self.conn.send(cmd)
        return self._expect(self.conn.recv())

    def stop(self) -> dict:
        self.conn.send("stop")
        out = self._expect(self.conn.recv())
        self.proc.join(timeout=60)
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["base", SCALED], default="base")
    p.add_argument("--files", type=int, default=100, help="files of 1-20 s (default 100)")
    p.add_argument("--long", type=int, default=2, help="long recordings (default 2)")
    p.add_argument("--long-s", type=float, default=120.0, help="seconds of the first long recording (default 120; "
                   "each next one 7 s longer)")
    p.add_argument("--batch-size", type=int, default=16, help="mtlser's and transformers_direct's batch size "
                   "(default 16, mtlser-infer's; mtlser's batches also stop at 60 s of padded audio, as there)")
    p.add_argument("--pipeline-batch-sizes", default="4,16", help="pipeline batch sizes to time (comma list)")
    p.add_argument("--variants", help="comma list (default: all that run here)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (each runs every variant once)")
    p.add_argument("--warmup-files", type=int, default=8, help="files of the untimed warm-up pass (default 8)")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime CPU threads")
    p.add_argument("--hour", type=float, default=0.0, help="also label one recording of this many seconds "
                   "(mtlser_onnx_int8) and report its peak RSS (default 0: not run)")
    p.add_argument("--balanced-head", action="store_true",
                   help="centre the random emotion head's biases on the first --warmup-files files (each class's "
                        "mean log-probability equal), so that labels vary between files and the label agreement "
                        "with fp32 can show a difference (a random head may give every file one class)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", required=True, help="write the results here")
    args = p.parse_args(argv)

    import torch
    from safetensors.torch import save_file

    from mtlser.infer.onnx_graph import graph_bytes
    from mtlser.infer.backends import native_bf16

    torch.set_num_threads(args.threads)
    bf16, bf16_how = native_bf16()
    variants = (["pipeline_default"] + [f"pipeline_bs{b}" for b in args.pipeline_batch_sizes.split(",") if b]
                + ["transformers_direct", REFERENCE] + (["mtlser_torch_bf16"] if bf16 else [])
                + ["mtlser_onnx_fp32", "mtlser_onnx_int8"])
    if args.variants:
        variants = [v for v in args.variants.split(",") if v]
        if REFERENCE not in variants:
            variants.insert(0, REFERENCE)

    def write(rounds, labels, rss, hour, complete):
        n_short = args.files
        ref = labels[REFERENCE]
        summary = {}
        for v in variants:
            walls = [row[v]["wall_s"] for row in rounds]
            cpus = [row[v]["cpu_s"] for row in rounds]
            same = [a == b for a, b in zip(labels[v], ref)]
            summary[v] = {"audio_s_per_wall_s": round(audio_s / statistics.median(walls), 2),
                          "audio_s_per_cpu_s": round(audio_s / statistics.median(cpus), 2),
                          "wall_s_median": round(statistics.median(walls), 2), "wall_s_min": round(min(walls), 2),
                          "wall_s_max": round(max(walls), 2), "cpu_s_median": round(statistics.median(cpus), 2),
                          "peak_rss_mib": round(rss[v], 1),
                          "label_agreement_with_fp32": round(float(np.mean(same)), 4),
                          "label_agreement_short_files": round(float(np.mean(same[:n_short])), 4)}
        ratios = {}
        for v in variants:
            if v.startswith("mtlser"):
                ratios[v] = {b: {k: round(statistics.median(row[b][f"{k}_s"] / row[v][f"{k}_s"] for row in rounds), 2)
                                 for k in ("wall", "cpu")} for b in variants if not b.startswith("mtlser")}
        pipelines = [v for v in variants if v.startswith("pipeline_bs")]
        best_batch = min(pipelines, key=lambda v: summary[v]["wall_s_median"]) if pipelines else None
        result = {
            "what": "CPU inference throughput: mtlser backends vs transformers pipeline/direct, same files, "
                    "interleaved",
            "size": args.size, "files": args.files, "long": args.long,
            "durations_s": [round(d, 2) for d in durations],
            "audio_s": round(audio_s, 2), "batch_size": args.batch_size, "threads": args.threads,
            "repeats": len(rounds), "complete": complete, "balanced_head": args.balanced_head,
            "window_s": WINDOW_S, "hop_s": HOP_S,
            "native_bf16": {"available": bf16, "how": bf16_how},
            "reference_label_counts": {e: ref.count(e) for e in EMOTIONS},
            "hf_export_check": hf_check, "variants": summary, "best_pipeline_batch": best_batch,
            "ratios_time_baseline_over_mtlser": ratios, "hour_recording": hour, "rounds": rounds,
            # The shared environment record (mtlser.expdir: versions, CPU model, git commit, date), plus what only
            # this benchmark needs.
            "machine": {**environment(), "cpus": _cpus(), "onnxruntime": _version("onnxruntime"),
                        "transformers": _version("transformers"), "load_average_at_end": list(_loadavg())},
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        return summary

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="mtlser-bench-") as tmp:
        tmp = Path(tmp)
        predictor = build_predictor(args.size)
        paths = write_files(tmp / "wav", args.files, args.long, args.long_s, args.seed)
        if args.balanced_head:
            balance_head(predictor, paths[:max(args.warmup_files, 2)])
        hf_check = write_hf(predictor, tmp / "hf")
        (tmp / "model.onnx").write_bytes(graph_bytes(predictor))
        save_file(predictor.model.state_dict(), str(tmp / "weights.safetensors"))
        import soundfile as sf

        durations = [sf.info(str(p)).duration for p in paths]
        audio_s = sum(durations)
        spec = {"paths": [str(x) for x in paths], "hf_dir": str(tmp / "hf"), "onnx": str(tmp / "model.onnx"),
                "weights": str(tmp / "weights.safetensors"), "size": args.size, "threads": args.threads,
                "batch_size": args.batch_size, "warmup_files": args.warmup_files}
        rounds: list[dict] = []
        labels: dict[str, list[str]] = {}
        rss = {v: 0.0 for v in variants}
        for r in range(1, args.repeats + 1):
            row = {}
            # Alternate orders (A B C, C B A, ...): a variant is not always the one after the same neighbour. Each
            # variant runs in a fresh worker per round (model loaded, an untimed warm-up pass, then the timed pass):
            # eight base-size models held at once would not fit in the machine's memory, and every round starts
            # alike.
            for v in (variants if r % 2 else variants[::-1]):
                w = Worker(ctx, v, spec)
                w.run("warmup")
                out = w.run()
                rss[v] = max(rss[v], w.stop()["peak_rss_mib"])
                labels[v] = out.pop("labels")
                row[v] = out
                print(f"  {v}: {audio_s / out['wall_s']:.2f} audio-s/s ({out['wall_s']:.0f} s)",
                      file=sys.stderr, flush=True)
            rounds.append(row)
            print(f"round {r}: " + ", ".join(f"{v} {audio_s / row[v]['wall_s']:.1f}" for v in variants)
                  + " audio-s/s", file=sys.stderr, flush=True)
            # A run cut short keeps the rounds it measured.
            write(rounds, labels, rss, None, complete=False)
        hour = None
        if args.hour > 0:
            synth_hour(tmp / "hour.wav", args.hour)
            w = Worker(ctx, "mtlser_onnx_int8", dict(spec, paths=[str(tmp / "hour.wav")]))
            out = w.run()
            hour = {"seconds": args.hour, "variant": "mtlser_onnx_int8", "wall_s": round(out["wall_s"], 1),
                    "cpu_s": round(out["cpu_s"], 1), **w.stop(), "file_mib": (tmp / "hour.wav").stat().st_size / 2**20}
    summary = write(rounds, labels, rss, hour, complete=True)
    for v in variants:
        s = summary[v]
        print(f"{v:22s} {s['audio_s_per_wall_s']:8.2f} audio-s/wall-s {s['audio_s_per_cpu_s']:8.2f} audio-s/cpu-s "
              f"rss {s['peak_rss_mib']:7.0f} MiB  labels = fp32 {100 * s['label_agreement_with_fp32']:.1f} %",
              file=sys.stderr)
    print(f"-> {args.json}", file=sys.stderr)
    return 0


def _version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _loadavg():
    import os

    return os.getloadavg() if hasattr(os, "getloadavg") else ()


if __name__ == "__main__":
    sys.exit(main())
