"""The fast path keeps the maths: each switch against the plain computation, on CPU.

Tolerances (float32 unless stated), relative to the largest magnitude of the compared tensor
(for gradients floored at 1e-3 of the model's largest gradient):
    FFT positional conv vs grouped Conv1d          1e-10 in float64; 1e-5 in float32 (measured ~1e-6)
    padding-invariant CNN vs the utterance alone   1e-5 (measured ~1e-7)
    pad ladder vs padding to the longest           1e-5 on loss and every gradient
    cached CNN features vs the CNN in the step     1e-5 on loss and every gradient; a 2-epoch training run:
                                                   losses 1e-5, weights 1e-3 (relative L2, see the test)
    bf16 autocast vs fp32 (CPU)                    loss 2e-2; gradients cosine > 0.99
    (the HF baseline of bench/: bench/tests/test_bench_train.py)
Resume with the fast path on is bit-identical (torch.equal), as without it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mtlser.config import Config, from_dict
from mtlser.data.dataset import BatchSampler, collate, ladder_length, padding_share
from mtlser.model.fast_ops import _ValidGroupNorm, fft_pos_conv, valid_group_norm
from mtlser.model.ser_model import build_model
from tests.conftest import EMOTIONS, tiny_config_dict, write_wav

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

#: The base layout in miniature: 3 conv layers with a group norm first, post-LN, positional conv
#: kernel 128 in 16 groups (the shape the FFT path is for).
BASE_LIKE = {
    "extractor_mode": "group_norm",
    "extractor_conv_layer_config": [[16, 10, 5], [16, 8, 8], [16, 8, 8]],
    "encoder_embed_dim": 48,
    "encoder_pos_conv_kernel": 128,
    "encoder_pos_conv_groups": 16,
    "encoder_num_layers": 2,
    "encoder_num_heads": 4,
    "encoder_ff_interm_features": 96,
    "encoder_layer_norm_first": False,
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


#: (dtype, tolerance) of the model-level comparisons: float64 shows the maths is the same, float32 what
#: training sees (rounding differs: conv algorithms, FFT, summation order).
DTYPES = [pytest.param(torch.float64, 1e-9, id="float64"), pytest.param(torch.float32, 1e-4, id="float32")]


def model_for(seed: int = 0, dtype=torch.float32, **backbone):
    sections = tiny_config_dict(backbone={"custom": BASE_LIKE, **backbone},
                                loss={"lambda": 0.1, "ctc_reduction": "sum"}, data={"emotions": EMOTIONS})
    cfg = from_dict(Config, sections, "test")
    torch.manual_seed(seed)
    return build_model(cfg, 25).to(dtype).eval()


def items(seconds=(1.3, 0.7, 1.0, 0.45), seed: int = 1, dtype=torch.float32) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"utt": f"u{i}", "wav": 0.1 * torch.randn(int(s * 16000), generator=g, dtype=dtype), "emotion": i % 4,
             "target": torch.randint(1, 25, (4,), generator=g)} for i, s in enumerate(seconds)]


def cast(batch: dict, dtype) -> dict:
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in batch.items()}


def loss_and_grads(model, batch: dict, from_features: bool = False):
    model.zero_grad(set_to_none=True)
    x, lens = (batch["feats"], batch["feat_lens"]) if from_features else (batch["wavs"], batch["wav_lens"])
    loss, _, _ = model(x, lens, batch["emotions"], batch["targets"], batch["target_lens"], from_features=from_features)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(a, b, tol):
    """Loss and every gradient within tol, relative to each tensor's largest magnitude (floored at 1e-3
    of the model's largest gradient: some gradients are 0 in exact arithmetic, e.g. the key bias)."""
    (la, ga), (lb, gb) = a, b
    assert rel(la, lb) < tol, (float(la), float(lb))
    assert ga.keys() == gb.keys()
    floor = 1e-3 * max(float(g.abs().max()) for g in gb.values())
    errs = {k: float((ga[k] - gb[k]).abs().max()) / max(float(gb[k].abs().max()), floor) for k in gb}
    worst = max(errs, key=errs.get)
    assert errs[worst] < tol, (worst, errs[worst])


# ---------------------------------------------------------------- positional convolution by FFT

def _assert_fft_pos_conv_matches(pc, x, tol):
    """The FFT positional conv gives the grouped conv's output and every gradient, within ``tol``."""
    params = [x, *pc.parameters()]
    y0, y1 = pc(x), fft_pos_conv(x, pc)
    assert y1.shape == y0.shape == x.shape
    assert rel(y1, y0) < tol
    g = torch.randn_like(y0)
    for a, b in zip(torch.autograd.grad(y1, params, g), torch.autograd.grad(y0, params, g)):
        assert rel(a, b) < tol


@pytest.mark.parametrize("kernel,groups", [(128, 16), (7, 4)])
def test_fft_pos_conv_equals_grouped_conv_float64(kernel, groups):
    from torchaudio.models.wav2vec2.components import ConvolutionalPositionalEmbedding

    torch.manual_seed(0)
    pc = ConvolutionalPositionalEmbedding(64, kernel, groups).double()
    x = torch.randn(3, 77, 64, dtype=torch.float64, requires_grad=True)
    _assert_fft_pos_conv_matches(pc, x, 1e-10)


def test_fft_pos_conv_float32_at_base_size():
    from torchaudio.models.wav2vec2.components import ConvolutionalPositionalEmbedding

    torch.manual_seed(0)
    pc = ConvolutionalPositionalEmbedding(768, 128, 16)
    x = torch.randn(2, 150, 768, requires_grad=True)
    _assert_fft_pos_conv_matches(pc, x, 1e-5)


# ---------------------------------------------------------------- padding-invariant CNN

def test_valid_group_norm_is_each_row_alone():
    torch.manual_seed(0)
    gn = nn.GroupNorm(8, 8).double()
    nn.init.normal_(gn.weight)
    nn.init.normal_(gn.bias)
    x = torch.randn(3, 8, 50, dtype=torch.float64)
    lens = torch.tensor([50, 31, 7])
    y = valid_group_norm(x, lens, gn)
    for i, n in enumerate(lens.tolist()):
        assert rel(y[i:i + 1, :, :n], gn(x[i:i + 1, :, :n])) < 1e-12
        assert not y[i, :, n:].any()  # padded frames are 0
    assert torch.equal(valid_group_norm(x, None, gn), gn(x))
    xs = torch.randn(3, 4, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w, b: _ValidGroupNorm.apply(a, [9, 5, 1], w, b, 2, 1e-5), (xs, w, b))


def test_padded_batch_gives_each_utterance_what_it_gets_alone():
    its = items()
    batch = collate(its)
    for invariant, expect_equal in ((True, True), (False, False)):
        model = model_for(padding_invariant_cnn=invariant)
        with torch.no_grad():
            out = model.predict(batch["wavs"], batch["wav_lens"])
            for i, it in enumerate(its):
                alone = model.predict(it["wav"][None], torch.tensor([len(it["wav"])]))
                d = rel(out["emo_probs"][i], alone["emo_probs"][0])
                # Without the switch, GroupNorm statistics over the padded batch change the result.
                assert (d < 1e-5) if expect_equal else (d > 1e-4 or i == 0), (invariant, i, d)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_pad_ladder_keeps_loss_and_gradients(dtype, tol):
    its = items(dtype=dtype)
    model = model_for(dtype=dtype)
    plain = loss_and_grads(model, cast(collate(its), dtype))
    padded = cast(collate(its, pad_ladder=1.3), dtype)
    assert padded["wavs"].shape[1] > collate(its)["wavs"].shape[1]
    assert_same(loss_and_grads(model, padded), plain, tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_fft_pos_conv_keeps_loss_and_gradients_in_the_model(dtype, tol):
    batch = cast(collate(items()), dtype)
    fast = model_for(dtype=dtype, pos_conv_impl="fft")
    plain = model_for(dtype=dtype, pos_conv_impl="conv")
    plain.load_state_dict(fast.state_dict())
    assert_same(loss_and_grads(fast, batch), loss_and_grads(plain, batch), tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_cached_cnn_features_keep_loss_and_gradients(dtype, tol):
    its = items(dtype=dtype)
    model = model_for(dtype=dtype)
    for p in model.backbone.feature_extractor.parameters():
        p.requires_grad_(False)
    uncached = loss_and_grads(model, cast(collate(its, pad_ladder=1.05), dtype))
    feats = []
    with torch.no_grad():  # what mtlser.data.cnn_cache stores: each utterance alone
        for it in its:
            x, _ = model.backbone.cnn(it["wav"][None], torch.tensor([len(it["wav"])]))
            feats.append(dict(it, feats=x[0], num_samples=len(it["wav"])))
    for f in feats:
        del f["wav"]
    frames_of = lambda n: int(model.backbone.frame_lengths(torch.tensor(n)))  # noqa: E731
    batch = cast(collate(feats, pad_ladder=1.05, frames_of=frames_of), dtype)
    assert batch["feats"].ndim == 3 and batch["num_samples"].tolist() == [len(it["wav"]) for it in its]
    assert batch["feats"].shape[1] == model.backbone.frame_lengths(torch.tensor(collate(its, 1.05)["wavs"].shape[1]))
    assert_same(loss_and_grads(model, batch, from_features=True), uncached, tol)


def test_bf16_autocast_is_close_to_fp32():
    batch = collate(items())
    model = model_for()
    ref = loss_and_grads(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(batch["wavs"], batch["wav_lens"], batch["emotions"], batch["targets"], batch["target_lens"])[0]
    model.zero_grad(set_to_none=True)
    loss.backward()
    assert rel(loss.detach().float(), ref[0]) < 2e-2
    g16 = torch.cat([p.grad.flatten().float() for _, p in model.named_parameters()])
    g32 = torch.cat([ref[1][n].flatten() for n, _ in model.named_parameters()])
    assert float(torch.nn.functional.cosine_similarity(g16, g32, dim=0)) > 0.99


# ---------------------------------------------------------------- batching and padding

def test_ladder_lengths():
    seen = set()
    for n in range(1, 400_000, 997):
        v = ladder_length(n, 1.05, 320)
        assert v >= n and v % 320 == 0 and (v < 16000 or v <= n * 1.05 + 320), (n, v)
        seen.add(v)
    assert 60 < len(seen) < 120  # shapes repeat: ~100 lengths up to 25 s
    assert ladder_length(12345, 1.0, 320) == 12345


def test_padding_under_ten_percent_on_iemocap_like_durations():
    from train_throughput import iemocap_like_durations

    d = iemocap_like_durations(4400, seed=1)
    assert 4.3 < d.mean() < 4.7 and d.max() <= 20.0
    random = BatchSampler(d, 16, "random", seed=1)
    bucket = BatchSampler(d, 16, "bucket", seed=1)
    assert random.padding_share(0) > 0.4
    for epoch in range(3):
        assert bucket.padding_share(epoch) < 0.06
        assert padding_share(bucket.epoch_batches(epoch), d, 1.05) < 0.10


# ---------------------------------------------------------------- the CNN feature cache and the trainer

def fold_dir(tmp_path: Path, n_train: int = 12, n_valid: int = 4) -> tuple[Path, list[str]]:
    """A fold data dir with utterances of varied length and CTC targets; the token list."""
    tokens = ["<blank>"] + [f"T{i}" for i in range(24)]
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("valid", n_valid)):
        d = tmp_path / "fold" / split
        d.mkdir(parents=True)
        lines = {k: [] for k in ("wav.scp", "utt2emo", "utt2dur", "text_phncls")}
        for i in range(n):
            utt, dur = f"{split}{i:03d}", round(float(rng.uniform(0.4, 1.6)), 3)
            wav = write_wav(tmp_path / "wav" / f"{utt}.wav", dur, seed=i + (100 if split == "valid" else 0))
            lines["wav.scp"].append(f"{utt} {wav}")
            lines["utt2emo"].append(f"{utt} {['ang', 'hap', 'sad', 'neu'][i % 4]}")
            lines["utt2dur"].append(f"{utt} {dur}")
            lines["text_phncls"].append(f"{utt} " + " ".join(f"T{j}" for j in rng.integers(0, 24, 4)))
        for name, ls in lines.items():
            (d / name).write_text("\n".join(ls) + "\n")
        (d / "emotions").write_text("ang\nhap\nsad\nneu\n")  # the inventory stage 0 would write
    return tmp_path / "fold", tokens


def test_cnn_cache_build_and_reuse(tmp_path):
    from mtlser.data.cnn_cache import build_cache, fingerprint
    from mtlser.data.dataset import read_audio

    data, _ = fold_dir(tmp_path, 4, 2)
    model = model_for()
    utts = [tuple(line.split(" ", 1)) for line in (data / "train" / "wav.scp").read_text().split("\n") if line]
    cache = build_cache(model.backbone, utts[:2], tmp_path / "cache", torch.device("cpu"))
    cache = build_cache(model.backbone, utts, tmp_path / "cache", torch.device("cpu"))  # adds the missing two
    assert len(cache) == 4 and len(list(cache.root.glob("shard_*.tsv"))) == 2
    cache = build_cache(model.backbone, utts, tmp_path / "cache", torch.device("cpu"))  # nothing to do
    assert len(list(cache.root.glob("shard_*.tsv"))) == 2
    utt, rx = utts[3]
    wav = torch.from_numpy(read_audio(rx))
    with torch.no_grad():
        ref, _ = model.backbone.cnn(wav[None], torch.tensor([len(wav)]))
    feats, samples = cache.get(utt)
    assert samples == len(wav) and torch.equal(torch.from_numpy(np.array(feats)), ref[0])
    before = fingerprint(model.backbone, 16000)
    with torch.no_grad():
        next(model.backbone.feature_extractor.parameters()).add_(1e-3)
    assert fingerprint(model.backbone, 16000) != before  # another CNN never reads this cache


def train(tmp_path: Path, data_dir: Path, tokens: list[str], name: str, stop_after: int = 0,
          **sections) -> tuple[dict, list[dict]]:
    """Train a tiny model; with stop_after=N the run ends, unfinished, after epoch N's checkpoint (a preemption)."""
    from mtlser.train.trainer import Trainer

    sections.setdefault("train", {})
    sections["train"] = {"epochs": 2, "log_interval": 1000, **sections["train"]}
    cfg = from_dict(Config, tiny_config_dict(backbone={"custom": BASE_LIKE, "dropout": 0.1,
                                                       **sections.pop("backbone", {})}, **sections), "test")
    if stop_after:
        cfg.train.stop_after_epoch = stop_after
    trainer = Trainer(cfg, data_dir, tokens, tmp_path / name)
    if stop_after:
        trainer.fit()
        assert trainer.epoch == stop_after and not trainer.finished
        return {}, []
    trainer.fit()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}, trainer.history


def test_trainer_cached_matches_uncached_and_resumes_bit_identically(tmp_path):
    data, tokens = fold_dir(tmp_path)
    cache_dir = str(tmp_path / "cnn_cache")
    frozen = {"freeze_feature_encoder": True}
    w_plain, h_plain = train(tmp_path, data, tokens, "uncached", backbone=frozen,
                             data={"batch_size": 4, "cache_cnn_features": False})
    w_cached, h_cached = train(tmp_path, data, tokens, "cached", backbone=frozen,
                               data={"batch_size": 4, "cnn_cache_dir": cache_dir})
    for a, b in zip(h_plain, h_cached):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5 * abs(b["train_loss"])
        assert abs(a["valid_loss"] - b["valid_loss"]) < 1e-5 * abs(b["valid_loss"])
    for k in w_plain:
        # Relative L2: Adam turns float32 rounding in near-zero gradients into lr-sized steps (measured: < 2e-5,
        # 6e-4 for the positional conv's weight-norm direction).
        assert float((w_cached[k] - w_plain[k]).norm()) <= 1e-3 * float(w_plain[k].norm()), k
    # Stop after one epoch, then resume for the second: the same bits as straight through.
    train(tmp_path, data, tokens, "resumed", stop_after=1, backbone=frozen,
          data={"batch_size": 4, "cnn_cache_dir": cache_dir})
    w_resumed, _ = train(tmp_path, data, tokens, "resumed", backbone=frozen,
                         data={"batch_size": 4, "cnn_cache_dir": cache_dir})
    assert all(torch.equal(w_resumed[k], w_cached[k]) for k in w_cached)


def test_trainer_fast_path_resumes_bit_identically(tmp_path):
    data, tokens = fold_dir(tmp_path)
    w_full, _ = train(tmp_path, data, tokens, "full", data={"batch_size": 4})
    train(tmp_path, data, tokens, "resumed", stop_after=1, data={"batch_size": 4})
    w_resumed, _ = train(tmp_path, data, tokens, "resumed", data={"batch_size": 4})
    assert all(torch.equal(w_resumed[k], w_full[k]) for k in w_full)


def test_cache_refuses_random_crops(tmp_path):
    from mtlser.utils import MtlserError

    data, tokens = fold_dir(tmp_path, 4, 2)
    with pytest.raises(MtlserError, match="max_duration"):
        train(tmp_path, data, tokens, "x", backbone={"freeze_feature_encoder": True},
              data={"max_duration": 1.0, "cnn_cache_dir": str(tmp_path / "c")})


# ---------------------------------------------------------------- the CNN-trained path (issue 11)

def test_group_norm_gelu_is_valid_group_norm_then_gelu():
    from mtlser.model.fast_ops import _GroupNormGELU, _group_norm_gelu_composed, group_norm_gelu

    torch.manual_seed(0)
    for groups in (4, 2):
        gn = nn.GroupNorm(groups, 4).double()
        nn.init.normal_(gn.weight)
        nn.init.normal_(gn.bias)
        x = torch.randn(3, 4, 50, dtype=torch.float64)
        lens = torch.tensor([50, 31, 0])  # a full row, a padded one, an empty one
        ref = nn.functional.gelu(valid_group_norm(x, lens, gn))
        assert rel(group_norm_gelu(x, lens, gn), ref) < 1e-12
        assert rel(group_norm_gelu(x, None, gn), nn.functional.gelu(gn(x))) < 1e-12  # over the whole batch
        channels_last = x.transpose(1, 2).contiguous().transpose(1, 2)
        assert rel(group_norm_gelu(channels_last, lens, gn), ref) < 1e-12
        xs = torch.randn(3, 4, 7, dtype=torch.float64, requires_grad=True)
        w = torch.randn(4, dtype=torch.float64, requires_grad=True)
        b = torch.randn(4, dtype=torch.float64, requires_grad=True)
        mask = (torch.arange(7)[None, :] < torch.tensor([7, 5, 0])[:, None]).double()[:, None, :]
        for m in (mask, None):
            assert torch.autograd.gradcheck(lambda a, w, b: _GroupNormGELU.apply(a, m, w, b, groups, 1e-5), (xs, w, b))
            # the composition torch.compile traces: the same values and gradients
            g = torch.randn(3, 4, 7, dtype=torch.float64)
            fa = torch.autograd.grad(_GroupNormGELU.apply(xs, m, w, b, groups, 1e-5), (xs, w, b), g)
            fb = torch.autograd.grad(_group_norm_gelu_composed(xs, m, w, b, groups, 1e-5), (xs, w, b), g)
            assert all(rel(p, q) < 1e-12 for p, q in zip(fa, fb))
        assert torch.autograd.gradcheck(lambda a: _GroupNormGELU.apply(a, mask, None, None, groups, 1e-5), (xs,))


#: The CNN levers, each and together; (padding_invariant_cnn, the levers).
CNN_LEVERS = [
    pytest.param(True, {"cnn_norm_impl": "fused"}, id="fused"),
    pytest.param(True, {"cnn_channels_last": True}, id="channels_last"),
    pytest.param(True, {"cnn_norm_impl": "fused", "cnn_channels_last": True, "cnn_precision": "fp32"}, id="all"),
    pytest.param(False, {"cnn_norm_impl": "fused", "cnn_channels_last": True}, id="all_batch_norm"),
]


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("invariant,levers", CNN_LEVERS)
def test_cnn_levers_keep_loss_and_gradients(dtype, tol, invariant, levers):
    batch = cast(collate(items(), pad_ladder=1.05), dtype)
    plain = model_for(dtype=dtype, padding_invariant_cnn=invariant)
    fast = model_for(dtype=dtype, padding_invariant_cnn=invariant, **levers)
    fast.load_state_dict(plain.state_dict())
    assert (fast.backbone.cnn_norm_impl, fast.backbone.cnn_channels_last) != ("rows", False)
    assert_same(loss_and_grads(fast, batch), loss_and_grads(plain, batch), tol)


def test_cnn_fp32_under_bf16_autocast():
    """backbone.cnn_precision fp32: under bf16 autocast the CNN computes what it computes without autocast."""
    batch = collate(items())
    model = model_for(cnn_precision="fp32")
    with torch.no_grad():
        ref, _ = model.backbone.cnn(batch["wavs"], batch["wav_lens"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fp32, _ = model.backbone.cnn(batch["wavs"], batch["wav_lens"])
            model.backbone.cnn_precision = "autocast"
            bf16, _ = model.backbone.cnn(batch["wavs"], batch["wav_lens"])
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert rel(fp32, ref) < 1e-6 < rel(bf16.float(), ref)


def test_compile_one_graph_per_padded_length():
    """train.compile_scope backbone with the fused CNN norm: CNN and transformer are one graph per padded
    length (no break at the CNN: it reads nothing on the host), compiled once and reused, with the eager
    maths. (The transformer scope is the same function without the CNN.)"""
    from mtlser.train.compile import compile_backbone

    torch._dynamo.reset()
    short, long_ = collate(items(seconds=(0.5, 0.4)), pad_ladder=1.05), collate(items(seconds=(1.0, 0.8)), 1.05)
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    eager, compiled = model_for(cnn_norm_impl="fused"), model_for(cnn_norm_impl="fused")
    compile_backbone(compiled.backbone, "default", "backbone", backend=count)
    for batch in (short, long_, short):
        assert_same(loss_and_grads(compiled, batch), loss_and_grads(eager, batch), 1e-4)
    assert len(graphs) == 2, len(graphs)  # one per length, the repeated length reused
    # train.compile_dynamic: one graph for both lengths (with the direct positional conv, whose shapes are
    # all the length's; the FFT's transform size is a Python value of it)
    torch._dynamo.reset()
    graphs.clear()
    eager, compiled = model_for(pos_conv_impl="conv"), model_for(pos_conv_impl="conv")
    compile_backbone(compiled.backbone, "default", "transformer", dynamic=True, backend=count)
    for batch in (short, long_, short):
        assert_same(loss_and_grads(compiled, batch), loss_and_grads(eager, batch), 1e-4)
    assert len(graphs) == 1, len(graphs)
    torch._dynamo.reset()


def test_deferred_host_sync_gives_the_same_loss_gradients_and_statistics():
    """train.defer_host_sync: statistics stay tensors, CTC masks instead of selecting; same numbers, also
    with an utterance without CTC target and one too short for its target."""
    its = items(dtype=torch.float64)
    its[1]["target"] = torch.tensor([], dtype=torch.long)
    its[3]["target"] = torch.randint(1, 25, (60,))  # 0.45 s: fewer frames than tokens
    batch = collate(its)
    for reduction in ("sum", "mean_batch", "mean"):
        model = model_for(dtype=torch.float64)
        model.ctc_reduction = reduction
        model.train(False)
        plain = loss_and_grads(model, batch)
        _, stats_plain, _ = model(batch["wavs"], batch["wav_lens"], batch["emotions"], batch["targets"],
                                  batch["target_lens"])
        model.defer_sync = True
        assert_same(loss_and_grads(model, batch), plain, 1e-12)
        _, stats, _ = model(batch["wavs"], batch["wav_lens"], batch["emotions"], batch["targets"],
                            batch["target_lens"])
        assert all(isinstance(v, torch.Tensor) for v in stats.values())
        assert stats_plain["ctc_skipped"] == 2.0
        assert {k: float(v) for k, v in stats.items()} == pytest.approx(stats_plain, rel=1e-12)


class HostSyncs(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts what makes a GPU step wait for the host: reading a value (.item(), bool(), float()),
    .tolist()/.cpu()/.numpy(), and data-dependent shapes (nonzero, boolean-mask indexing). On CPU every
    tensor is a host tensor, so count only inside the regions that run on the device (``active``)."""

    SYNC_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
                torch.ops.aten.masked_select.default}
    INDEX_OPS = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default}

    def __init__(self, monkeypatch):
        super().__init__()
        self.active = False
        self.calls: list[str] = []
        for name in ("tolist", "cpu", "numpy"):
            original = getattr(torch.Tensor, name)

            def counted(t, *a, __name=name, __original=original, **kw):
                if self.active:
                    self.calls.append(__name)
                return __original(t, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.active:
            bool_index = func in self.INDEX_OPS and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []) if i is not None)
            if func in self.SYNC_OPS or bool_index:
                self.calls.append(str(func))
        return func(*args, **(kwargs or {}))

    def counting(self, fn):
        def wrapped(*a, **kw):
            self.active = True
            try:
                return fn(*a, **kw)
            finally:
                self.active = False
        return wrapped


def sync_counting_trainer(tmp_path, monkeypatch, name, **train):
    """A trainer whose device regions (step without the optimizer's host-side step counts, accumulation,
    reads of the statistics) count host syncs."""
    from mtlser.train import trainer as trainer_mod

    data, tokens = fold_dir(tmp_path)
    cfg = from_dict(Config, tiny_config_dict(backbone={"custom": BASE_LIKE}, data={"batch_size": 4},
                                             train={"epochs": 1, **train}), "test")
    counter = HostSyncs(monkeypatch)

    class CountInSteps(trainer_mod.TrainerCallback):
        """Counting on from the first line of each training step to its last."""

        def before_step(self, trainer, batch):
            counter.active = True
            return batch

        def after_step(self, trainer, stats):
            counter.active = False

    trainer = trainer_mod.Trainer(cfg, data, tokens, tmp_path / name, callbacks=[CountInSteps()])
    # torch's Adam keeps its step counts on the host (non-capturable): reading them is no device sync.
    for obj, attr in ((trainer.optimizer, "step"), (trainer.scheduler, "step")):
        fn = getattr(obj, attr)

        def host_side(*a, __fn=fn, **kw):
            active, counter.active = counter.active, False
            try:
                return __fn(*a, **kw)
            finally:
                counter.active = active

        monkeypatch.setattr(obj, attr, host_side)
    monkeypatch.setattr(trainer.loss_check, "read", counter.counting(trainer.loss_check.read))
    monkeypatch.setattr(trainer_mod, "accumulate", counter.counting(trainer_mod.accumulate))
    return trainer, counter


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step")  # the counting wrapper around it
@pytest.mark.parametrize("levers,per_step", [
    pytest.param({}, None, id="per_step"),
    pytest.param({"defer_host_sync": True}, 0, id="deferred_rows_cnn"),
])
def test_host_syncs_per_step(tmp_path, monkeypatch, levers, per_step):
    trainer, counter = sync_counting_trainer(tmp_path, monkeypatch, "exp", log_interval=2, **levers)
    if per_step == 0:
        trainer.model.backbone.cnn_norm_impl = "fused"  # the row-by-row norm reads the lengths on the host
    with counter:
        batch = next(iter(trainer.train_loader))
        trainer.train_step(batch)
        first = list(counter.calls)
        counter.calls.clear()
        stats = trainer.train_epoch()  # the epoch's other 2 batches (steps 2, 3): reads at step 2 and at the end
    if per_step is None:
        # today's step: losses, accuracy, CTC usable/skipped, finite check, the norm's lengths
        assert len(first) >= 8, first  # measured: 13
    else:
        assert first == [], first
        assert counter.calls == ["tolist"] * 2, counter.calls  # one read per log interval, one at the end
    assert math.isfinite(stats["loss"]) and stats["ctc_skipped"] == 0.0


def test_deferred_host_sync_training_is_the_same(tmp_path):
    data, tokens = fold_dir(tmp_path)
    w_plain, h_plain = train(tmp_path, data, tokens, "plain", data={"batch_size": 4})
    w_defer, h_defer = train(tmp_path, data, tokens, "deferred", data={"batch_size": 4},
                             train={"defer_host_sync": True, "log_interval": 2})
    timing = ("train_time_s", "train_audio_s_per_s", "fusion_weights")
    for a, b in zip(h_plain, h_defer):
        assert a.keys() == b.keys() and a["fusion_weights"] == b["fusion_weights"]
        assert {k: a[k] for k in a if k not in timing} == pytest.approx({k: b[k] for k in b if k not in timing},
                                                                         rel=1e-6)
    for k in w_plain:
        assert float((w_defer[k] - w_plain[k]).norm()) <= 1e-5 * float(w_plain[k].norm()), k


@pytest.mark.parametrize("deferred", [False, True])
def test_nonfinite_loss_names_step_and_utterances(tmp_path, deferred):
    from mtlser.train.trainer import Trainer, TrainerCallback
    from mtlser.utils import MtlserError

    data, tokens = fold_dir(tmp_path)
    cfg = from_dict(Config, tiny_config_dict(backbone={"custom": BASE_LIKE}, data={"batch_size": 4},
                                             train={"epochs": 1, "defer_host_sync": deferred, "log_interval": 50}),
                    "test")

    class Poison(TrainerCallback):
        def before_step(self, trainer, batch):
            return dict(batch, wavs=batch["wavs"] * float("nan")) if trainer.step == 1 else batch

    trainer = Trainer(cfg, data, tokens, tmp_path / "exp", callbacks=[Poison()])
    with pytest.raises(MtlserError, match=r"non-finite loss nan at step 1 \(utterances \['train"):
        trainer.train_epoch()


def test_data_loading_workers_give_the_same_training(tmp_path):
    data, tokens = fold_dir(tmp_path)
    w_main, h_main = train(tmp_path, data, tokens, "main", data={"batch_size": 4})
    w_workers, h_workers = train(tmp_path, data, tokens, "workers", data={"batch_size": 4, "num_workers": 2})
    assert [h["train_loss"] for h in h_main] == [h["train_loss"] for h in h_workers]
    assert all(torch.equal(w_main[k], w_workers[k]) for k in w_main)


# ---------------------------------------------------------------- GPU only (run in a GPU session)

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
#: For the GPU tests: BASE_LIKE with attention heads of 64 dims, as in wav2vec2-base (kernels have size limits).
GPU_LIKE = {**BASE_LIKE, "encoder_embed_dim": 128, "encoder_num_heads": 2, "encoder_ff_interm_features": 256}


def gpu_model(**backbone):
    sections = tiny_config_dict(backbone={"custom": GPU_LIKE, **backbone}, loss={"lambda": 0.1, "ctc_reduction": "sum"},
                                data={"emotions": EMOTIONS})
    torch.manual_seed(0)
    return build_model(from_dict(Config, sections, "test"), 25).eval().cuda()


def on_gpu(batch: dict) -> dict:
    return {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@needs_gpu
@pytest.mark.parametrize("cnn_precision", ["autocast", "fp32"])
def test_memory_efficient_attention_takes_our_padding_mask_on_gpu(cnn_precision):
    """The kernel train.sdpa_backend efficient asks for runs with our additive padding mask under bf16
    autocast (only that kernel allowed: a refusal is an error, not a silent fall-back), and agrees with math."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batch = on_gpu(collate(items()))
    model = gpu_model(cnn_precision=cnn_precision)
    results = []
    for backend in (SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION):
        with sdpa_kernel([backend]), torch.autocast("cuda", dtype=torch.bfloat16):
            model.zero_grad(set_to_none=True)
            loss = model(batch["wavs"], batch["wav_lens"], batch["emotions"], batch["targets"], batch["target_lens"])[0]
        loss.backward()
        results.append((loss.detach().float(), {n: p.grad.float() for n, p in model.named_parameters()}))
    assert rel(results[1][0], results[0][0]) < 2e-2
    g0 = torch.cat([g.flatten() for g in results[0][1].values()])
    g1 = torch.cat([g.flatten() for g in results[1][1].values()])
    assert float(torch.nn.functional.cosine_similarity(g0, g1, dim=0)) > 0.99


@needs_gpu
@pytest.mark.parametrize("levers", [
    pytest.param({}, id="defaults"),
    pytest.param({"cnn_norm_impl": "fused", "cnn_channels_last": True}, id="fused_channels_last"),
    pytest.param({"cnn_norm_impl": "fused", "cnn_channels_last": True, "cnn_precision": "fp32"}, id="cnn_fp32"),
])
def test_bf16_path_is_close_to_fp32_on_gpu(levers, record_property):
    """The training precision on GPUs (bf16 autocast), with the CNN levers, against the float32 computation
    (TF32 off) on the same weights: loss within 2e-2, gradients cosine > 0.99; the levers themselves keep
    float32 results within 1e-4 of the plain CNN."""
    batch = on_gpu(collate(items(), pad_ladder=1.05))
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        plain = gpu_model()
        model = gpu_model(**levers)
        ref = loss_and_grads(plain, batch)
        assert_same(loss_and_grads(model, batch), ref, 1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch["wavs"], batch["wav_lens"], batch["emotions"], batch["targets"], batch["target_lens"])[0]
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    model.zero_grad(set_to_none=True)
    loss.backward()
    g16 = torch.cat([p.grad.flatten().float() for _, p in model.named_parameters()])
    g32 = torch.cat([ref[1][n].flatten() for n, _ in model.named_parameters()])
    cos = float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))
    record_property("loss_rel_bf16", rel(loss.detach().float(), ref[0]))
    record_property("grad_cosine_bf16", cos)
    assert rel(loss.detach().float(), ref[0]) < 2e-2 and cos > 0.99


@needs_gpu
def test_group_norm_gelu_on_gpu():
    """The fused norm + GELU on CUDA (float32 and bf16 input) against the row-by-row reference in float64."""
    from mtlser.model.fast_ops import group_norm_gelu

    torch.manual_seed(0)
    gn = nn.GroupNorm(64, 64).cuda()
    nn.init.normal_(gn.weight)
    nn.init.normal_(gn.bias)
    x = torch.randn(4, 64, 3000, device="cuda", requires_grad=True)
    lens = torch.tensor([3000, 2100, 700, 1], device="cuda")
    g = torch.randn(4, 64, 3000, device="cuda")
    gn64 = nn.GroupNorm(64, 64).double().cuda()
    gn64.load_state_dict(gn.state_dict())
    x64 = x.detach().double().requires_grad_()
    ref = nn.functional.gelu(valid_group_norm(x64, lens, gn64))
    ref_grads = torch.autograd.grad(ref, (x64, gn64.weight, gn64.bias), g.double())
    out = group_norm_gelu(x, lens, gn)
    assert rel(out, ref) < 1e-5
    assert all(rel(a, b) < 1e-4 for a, b in zip(torch.autograd.grad(out, (x, gn.weight, gn.bias), g), ref_grads))
    assert rel(group_norm_gelu(x.bfloat16(), lens, gn).float(), ref) < 2e-2


@needs_gpu
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step")
def test_host_syncs_per_step_on_gpu(tmp_path, record_property):
    """torch's sync debug mode counts the steps' synchronizing CUDA calls: deferred, no more remain than
    torch's CTC loss makes on its own (it copies the length tensors to the host); per step, about a dozen."""
    import contextlib
    import warnings

    from mtlser.train.trainer import Trainer

    @contextlib.contextmanager
    def counting(out: list):
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")
        out.extend(str(w.message) for w in caught if "synchroniz" in str(w.message))

    log_probs = torch.randn(50, 4, 25, device="cuda").log_softmax(-1).requires_grad_()
    targets = torch.randint(1, 25, (4, 5), device="cuda")
    lens = (torch.full((4,), 50, device="cuda"), torch.full((4,), 5, device="cuda"))
    nn.functional.ctc_loss(log_probs, targets, *lens, reduction="none").sum().backward()  # warm-up
    ctc = []
    with counting(ctc):
        nn.functional.ctc_loss(log_probs, targets, *lens, reduction="none").sum().backward()
    record_property("syncs_ctc_loss_alone", len(ctc))
    data, tokens = fold_dir(tmp_path, n_train=16)
    counts = {}
    for deferred in (False, True):
        cfg = from_dict(Config, tiny_config_dict(
            backbone={"custom": GPU_LIKE, "cnn_norm_impl": "fused" if deferred else "rows"},
            data={"batch_size": 4}, train={"epochs": 1, "device": "cuda", "defer_host_sync": deferred}), "test")
        trainer = Trainer(cfg, data, tokens, tmp_path / f"exp{deferred}")
        batches = list(trainer.train_loader)  # pinned, as the loader gives them
        trainer.train_step(batches[0])  # warm-up: allocations, lazy initialisation
        syncs = []
        with counting(syncs):
            for batch in batches[1:]:
                trainer.train_step(batch)
        counts[deferred] = len(syncs) / (len(batches) - 1)
        record_property(f"syncs_per_step_{'deferred' if deferred else 'plain'}", counts[deferred])
    assert counts[True] <= len(ctc) < counts[False], (counts, len(ctc))
    assert counts[False] - len(ctc) >= 8, (counts, len(ctc))


# ---------------------------------------------------------------- several folds on one GPU

def test_local_jobs_share_gpus_round_robin_and_split_the_cores(tmp_path):
    from mtlser.launch.jobs import job_env, main

    env = job_env(3, 4, ["0"], base={})
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert [job_env(s, 4, ["0", "1"], base={})["CUDA_VISIBLE_DEVICES"] for s in (1, 2, 3, 4)] == ["0", "1", "0", "1"]
    assert "CUDA_VISIBLE_DEVICES" not in job_env(1, 4, [], base={})
    assert job_env(1, 2, [], base={"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7"  # the user's choice stays
    code = "import os; print('GPU', os.environ['CUDA_VISIBLE_DEVICES'], 'THREADS', os.environ['OMP_NUM_THREADS'])"
    rc = main(["--backend", "local", "--max-jobs-run", "2", "--gpus", "5", "JOB=1:2", str(tmp_path / "log.JOB"),
               sys.executable, "-c", code])
    assert rc == 0
    for j in (1, 2):
        assert "GPU 5 THREADS" in (tmp_path / f"log.{j}").read_text()


@pytest.mark.parametrize("mode,conv_bias", [("group_norm", False), ("group_norm", True), ("layer_norm", True)])
def test_cnn_as_matmuls_computes_the_feature_extractor(mode, conv_bias):
    """The CNN as matrix products over strided windows (CPU bf16 inference): in float32 what torchaudio's
    FeatureExtractor computes on an unpadded batch, for both extractor modes (the first layer's GroupNorm folded
    into its matrix); with bf16 matrices, bf16 features within bf16's rounding, the same under autocast (the
    first layer, on the waveform, in float32 either way)."""
    from torchaudio.models.wav2vec2.components import _get_feature_extractor

    from mtlser.model.fast_ops import CnnMatrices, cnn_as_matmuls

    torch.manual_seed(0)
    shapes = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2
    extractor = _get_feature_extractor(mode, shapes, conv_bias).eval()
    for module in extractor.modules():
        if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):  # not the identity affine of a fresh norm
            nn.init.normal_(module.weight, 1.0, 0.3)
            nn.init.normal_(module.bias, 0.0, 0.3)
    wavs = torch.randn(2, 9000) * 0.1 + 0.05  # a DC offset: the folded norm's mean must remove it
    with torch.inference_mode():
        ref, _ = extractor(wavs, None)
        got = cnn_as_matmuls(CnnMatrices(extractor, torch.float32), wavs)
        matrices = CnnMatrices(extractor, torch.bfloat16)
        half = cnn_as_matmuls(matrices, wavs)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as the predictor runs it: the first layer stays fp32
            under_autocast = cnn_as_matmuls(matrices, wavs)
    assert torch.equal(under_autocast, half)
    assert got.shape == ref.shape == (2, 27, 32) and got.dtype == torch.float32
    assert rel(got, ref) < 1e-5
    assert half.dtype == torch.bfloat16 and 1e-5 < rel(half.float(), ref) < 3e-2


@pytest.mark.parametrize("kernel,groups", [(16, 4), (15, 2)])
def test_pos_conv_as_matmuls_computes_the_positional_convolution(kernel, groups):
    """The positional convolution per group as one matrix product of K-frame windows (CPU bf16 inference): in
    float32 what torchaudio's module computes (weight norm, even and odd kernels, padded frames in the batch);
    in bf16 within its rounding."""
    from torchaudio.models.wav2vec2.components import ConvolutionalPositionalEmbedding

    from mtlser.model.fast_ops import PosConvAsMatmuls

    torch.manual_seed(0)
    module = ConvolutionalPositionalEmbedding(32, kernel, groups).eval()
    x = torch.randn(2, 23, 32)
    x[1, 17:] = 0.0
    with torch.inference_mode():
        ref = module(x)
        got = PosConvAsMatmuls(module, torch.float32)(x)
        half = PosConvAsMatmuls(module, torch.bfloat16)(x)
    assert got.shape == ref.shape == (2, 23, 32)
    assert rel(got, ref) < 1e-5
    assert half.dtype == torch.bfloat16 and rel(half.float(), ref) < 3e-2


def test_packed_linear_without_onednn_packing_computes_the_same(monkeypatch):
    """PackedLinear where oneDNN cannot prepack (another CPU, a torch without it): F.linear (+ GELU) in bf16,
    the answer of the packed product within bf16's rounding."""
    import mtlser.model.fast_ops as fast_ops

    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    with torch.inference_mode():
        ref = torch.nn.functional.gelu(linear(x))
        packed = fast_ops.PackedLinear.of(linear, torch.bfloat16, activation="gelu")
        monkeypatch.setattr(fast_ops, "can_prepack_bf16", lambda: False)
        plain = fast_ops.PackedLinear.of(linear, torch.bfloat16, activation="gelu")
        assert plain.packed is None and plain.weight.dtype == torch.bfloat16
        a, b = packed(x), plain(x)
    assert a.dtype == b.dtype == torch.bfloat16
    assert rel(a.float(), ref) < 2e-2 and rel(b.float(), ref) < 2e-2


def test_padded_rows_is_a_short_ladder():
    """Prepacked products run on a ladder of row counts (oneDNN compiles a kernel per shape): never fewer rows
    than given, at most 12.5 % more above 64, and 1-20 s recordings' CNN layers meet few distinct sizes."""
    from mtlser.model.fast_ops import padded_rows

    assert all(padded_rows(m) >= m for m in range(1, 5000))
    assert all(padded_rows(m) <= 1.125 * m for m in range(65, 70000))
    assert padded_rows(padded_rows(777)) == padded_rows(777)
    layer2_rows = {padded_rows((n - 400) // 320 * 32) for n in range(16000, 320000, 97)}
    assert len(layer2_rows) < 50
