"""The benchmarks of bench/ (train_throughput, hf_baseline, cnn_norm, gpu_session.sh) measure what they claim:
the HF baseline is mtlser's plain path, the tuned baseline is what its flags give, rounds interleave and
pair, a dead variant stops the run, the GPU session needs nothing the GPU machine lacks.

Tolerance: HF baseline vs mtlser's plain path 1e-5 on loss and every gradient (same weights).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mtlser.data.dataset import collate
from tests.test_speed import BASE_LIKE, DTYPES, assert_same, cast, items, loss_and_grads

ROOT = Path(__file__).resolve().parents[2]

@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_hf_baseline_is_mtlser_plain_path(dtype, tol):
    pytest.importorskip("transformers")
    import copy

    from hf_baseline import build_baseline
    from torchaudio.models.wav2vec2.utils import import_huggingface_model

    from mtlser.model.backbone import Backbone, architecture
    from mtlser.model.ser_model import SERModel

    kw = architecture("wav2vec2", "custom", BASE_LIKE)
    kw.update(encoder_dropout=0.0, encoder_attention_dropout=0.0, encoder_projection_dropout=0.0)
    baseline, ta_model = build_baseline(kw, 4, 25, ctc_weight=0.1, ctc_reduction="sum")
    mine = SERModel(Backbone("wav2vec2", kw, model=ta_model), 4, 25, ctc_weight=0.1, ctc_reduction="sum")
    heads = {k: v for k, v in baseline.state_dict().items() if not k.startswith("backbone.")}
    mine.load_state_dict(heads, strict=False)
    baseline.to(dtype).eval(), mine.to(dtype).eval()

    def baseline_loss_and_grads(batch):
        """HF's gradients under torchaudio's parameter names (torchaudio's own HF import mapping)."""
        loss, grads = loss_and_grads(baseline, batch)
        hf_grads = copy.deepcopy(baseline.backbone.model)
        for name, p in hf_grads.named_parameters():
            p.data = grads.pop(f"backbone.model.{name}")
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # the imported model is built in the default dtype
        try:
            ta_grads = import_huggingface_model(hf_grads).state_dict()
        finally:
            torch.set_default_dtype(default)
        grads.update({f"backbone.model.{k}": v for k, v in ta_grads.items()})
        return loss, grads

    padded = cast(collate(items()), dtype)
    assert_same(loss_and_grads(mine, padded), baseline_loss_and_grads(padded), tol)
    # The fast path differs from HF only where HF normalises over padding: on an unpadded batch it agrees.
    mine.backbone.padding_invariant_cnn, mine.backbone.pos_conv_impl = True, "fft"
    unpadded = cast(collate(items(seconds=(0.9, 0.9, 0.9))), dtype)
    assert_same(loss_and_grads(mine, unpadded), baseline_loss_and_grads(unpadded), tol)


def test_benchmark_summary_pairs_rounds_and_picks_the_tuned_baseline():
    from train_throughput import summarize

    def rounds(*rates, cpu=0.5):
        return [{"audio_s": 100.0, "time_s": 100.0 / r, "cpu_s": cpu * 100.0 / r, "steps": 10} for r in rates]

    passes = {"baseline": rounds(10, 5, 10), "baseline_tuned": rounds(20, 10, 20),
              "baseline_tuned_frozen": rounds(40, 20, 40), "mtlser": rounds(30, 20, 31),
              "mtlser_cached": rounds(80, 40, 80)}
    plan = {"baseline": ("baseline", None), "baseline_tuned": ("baseline", None),
            "baseline_tuned_frozen": ("baseline", None), "mtlser": ("baseline", "baseline_tuned"),
            "mtlser_cached": ("baseline", "baseline_tuned_frozen")}
    out = summarize(passes, plan)
    assert out["mtlser"]["audio_s_per_s"] == 30 and out["mtlser"]["audio_s_per_s_min"] == 20
    # paired per round: 3, 4, 3.1 -> 3.1 (the load dip of round 2 cancels); of medians: 30 / 10 = 3
    assert out["mtlser"]["ratio"] == pytest.approx(3.1) and out["mtlser"]["ratio_of_medians"] == pytest.approx(3)
    assert out["mtlser"]["ratio_tuned"] == pytest.approx(1.55) and out["mtlser"]["ratio_tuned_vs"] == "baseline_tuned"
    assert out["mtlser_cached"]["ratio_tuned_vs"] == "baseline_tuned_frozen"
    assert out["mtlser_cached"]["ratio_tuned"] == pytest.approx(2.0)
    assert "ratio" not in out["baseline"] and out["baseline_tuned"]["ratio"] == pytest.approx(2.0)
    assert out["mtlser"]["audio_s_per_cpu_s"] == pytest.approx(60) and out["mtlser"]["cpu_per_wall"] == 0.5
    assert out["mtlser"]["ratio_cpu"] == pytest.approx(3.1) and out["mtlser"]["ratio_tuned_cpu"] == pytest.approx(1.55)
    lever = summarize(passes, plan, compare="mtlser")["mtlser_cached"]
    assert lever["ratio_vs_mtlser"] == pytest.approx(80 / 31) and lever["ratio_vs_mtlser_cpu"] == pytest.approx(80 / 31)


def test_tuned_hf_baseline_is_what_the_flags_give(tmp_path):
    """baseline_tuned(_frozen): HF's length-grouped batches over every utterance once, less padding than
    random batches; freeze_feature_encoder() leaves the CNN out of training; bf16 only where the device
    has it (this CPU: native bf16 instructions or not)."""
    pytest.importorskip("transformers")
    from train_throughput import HFRunner, cpu_has_native_bf16, iemocap_like_durations, write_corpus

    from mtlser.config import load_config
    from mtlser.data.dataset import padding_share
    from mtlser.text.tokenize import read_token_list

    data_dir, token_list = write_corpus(tmp_path, iemocap_like_durations(64, seed=1, mean=1.0, hi=3.0), seed=1)
    cfg = load_config(None, {"backbone": {"size": "custom", "custom": BASE_LIKE}, "train": {"device": "cpu"}})
    spec = {"device": "cpu", "batch_size": 16, "max_duration": 3.0, "protocol_utterances": 4400}
    tuned = HFRunner(spec, cfg, read_token_list(token_list), data_dir, tuned=True, frozen=True)
    plain = HFRunner(spec, cfg, read_token_list(token_list), data_dir, tuned=False, frozen=False)
    assert tuned.precision == ("bf16" if cpu_has_native_bf16() else "fp32") and plain.precision == "fp32"
    for epoch in (1, 2):
        batches = tuned.epoch_batches(epoch)
        assert sorted(i for b in batches for i in b) == list(range(64)) and {len(b) for b in batches} == {16}
        assert padding_share(batches, tuned.durations) < padding_share(plain.epoch_batches(epoch), plain.durations)
    cnn = tuned.model.backbone.model.feature_extractor
    assert not any(p.requires_grad for p in cnn.parameters())
    before = {n: p.detach().clone() for n, p in tuned.model.named_parameters()}
    tuned.step(next(tuned.batches(1)))
    changed = {n for n, p in tuned.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and not any("feature_extractor" in n for n in changed)


@pytest.mark.slow
def test_benchmark_runs_interleaved_rounds_end_to_end(tmp_path):
    """The benchmark's CPU path end to end on a tiny model: 2 interleaved rounds, an added variant, one JSON."""
    import json
    import subprocess

    arch = {k: v for k, v in BASE_LIKE.items()}
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--device", "cpu",
                          "--json", str(out), "--variants", "baseline,mtlser", "--steps", "1", "--rounds", "2",
                          "--warmup-steps", "0", "--threads", "1", "--arch-json", json.dumps(arch),
                          "--protocol", "1,1,64",
                          "--add", "fused=mtlser,backbone.cnn_norm_impl=fused,train.defer_host_sync=true"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["complete"] and res["repeats"] == 2 and res["settings"]["arch_custom"] == arch
    assert set(res["variants"]) == {"baseline", "mtlser", "fused"}
    for name, v in res["variants"].items():
        assert len(v["audio_s_per_s_rounds"]) == 2 and v["audio_s_per_s"] > 0 and v["audio_s_per_cpu_s"] > 0, name
    assert res["variants"]["fused"]["overrides"] == {"backbone.cnn_norm_impl": "fused",
                                                     "train.defer_host_sync": True}
    assert len(res["variants"]["fused"]["ratio_rounds"]) == 2 and "ratio" in res
    # interleaved: round 1 in the listed order, round 2 reversed
    lines = [line.split()[2] for line in run.stdout.splitlines() if line.startswith("round ")]
    assert lines == ["baseline", "mtlser", "fused", "fused", "mtlser", "baseline"], lines


def test_benchmark_stops_when_a_variant_dies_without_reporting():
    """A variant's process killed from outside (the OOM killer took wav2vec2-base variants on the shared
    machine) sends nothing: the benchmark names it and stops instead of waiting forever."""
    import multiprocessing as mp
    import os
    import re
    import signal
    import threading

    from train_throughput import Fleet

    ctx = mp.get_context("fork")
    fleet = Fleet.__new__(Fleet)  # its processes only: no variant to build
    fleet.results = ctx.Queue()
    victim = ctx.Process(target=lambda: os.kill(os.getpid(), signal.SIGKILL))
    victim.start()
    fleet.procs = [("baseline_tuned", victim)]
    raised = []

    def collect():
        try:
            fleet._collect(1)
        except SystemExit as e:
            raised.append(str(e))

    waiting = threading.Thread(target=collect, daemon=True)  # a daemon: a regression hangs this thread only
    waiting.start()
    waiting.join(timeout=60)
    assert not waiting.is_alive(), "still waiting for a process that is gone"
    assert len(raised) == 1 and re.fullmatch(
        r"baseline_tuned \(process \d+\) died with exit code -9 \(SIGKILL: out of memory\? .*\)", raised[0]), raised


def test_cnn_norm_benchmark_times_each_implementation_interleaved(tmp_path):
    """bench/cnn_norm.py (a step of bench/gpu_session.sh) at a hundredth of its frame counts: every
    implementation timed once per round, medians and the run's setting in one JSON."""
    import json

    from cnn_norm import main

    assert main(["--device", "cpu", "--json", str(tmp_path / "n.json"), "--repeats", "2", "--scale", "0.01"]) == 0
    out = json.loads((tmp_path / "n.json").read_text())
    assert sorted(out["results"]) == ["32x150", "512x60"] and out["settings"]["repeats"] == 2
    for timings in out["results"].values():
        assert sorted(timings) == ["batch", "fused", "rows"]
        assert all(len(t["all_s"]) == 2 and t["min_s"] <= t["median_s"] <= t["max_s"] for t in timings.values())
    assert "bench/cnn_norm.py --device cuda" in (ROOT / "bench" / "gpu_session.sh").read_text()


def test_gpu_session_needs_nothing_the_gpu_machine_lacks():
    """What bench/gpu_session.sh runs there (the GPU tests, the benchmark and its variants' code) imports
    only the machine's packages and the carried wheels: mtlser's other requirements (the G2P stack, the
    synthesiser) are blocked in a subprocess that imports all of it."""
    import re
    import subprocess

    lines = (ROOT / "bench" / "gpu_wheels.txt").read_text().splitlines()
    there = {n for line in lines if line.startswith("# preinstalled:") for n in line.split(":", 1)[1].split()}
    carried = {line.split("==")[0] for line in lines if line.strip() and not line.startswith("#")}
    required = {re.split(r"[=<>]", line)[0] for line in (ROOT / "tools" / "requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    missing = sorted(required - there - carried)
    assert {"g2p_en", "nltk", "espeakng-loader"} <= set(missing), missing  # the list is read right
    modules = [{"pyyaml": "yaml"}.get(n, n.replace("-", "_")) for n in missing]
    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {modules!r}:
            raise ImportError("not on the GPU machine: " + name)
sys.meta_path.insert(0, Block())
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "bench")!r}]
import train_throughput, hf_baseline, cnn_norm, tests.test_speed, mtlser.train.trainer, mtlser.data.cnn_cache
import mtlser.train.compile, mtlser.text.tokenize
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
