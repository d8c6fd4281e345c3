"""The fast path keeps the maths: each switch against the plain computation, on CPU.

Tolerances (float32 unless stated), relative to the largest magnitude of the compared tensor
(for gradients floored at 1e-3 of the model's largest gradient):
    FFT positional conv vs grouped Conv1d          1e-10 in float64; 1e-5 in float32 (measured ~1e-6)
    padding-invariant CNN vs the utterance alone   1e-5 (measured ~1e-7)
    pad ladder vs padding to the longest           1e-5 on loss and every gradient
    cached CNN features vs the CNN in the step     1e-5 on loss and every gradient; a 2-epoch training run:
                                                   losses 1e-5, weights 1e-3 (relative L2, see the test)
    bf16 autocast vs fp32 (CPU)                    loss 2e-2; gradients cosine > 0.99
    HF baseline vs mtlser's plain path             1e-5 on loss and every gradient (same weights)
Resume with the fast path on is bit-identical (torch.equal), as without it.
"""

from __future__ import annotations

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


# ---------------------------------------------------------------- the benchmark compares like with like

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


class Interrupted(Exception):
    pass


def train(tmp_path: Path, data_dir: Path, tokens: list[str], name: str, stop_after: int = 0,
          **sections) -> tuple[dict, list[dict]]:
    """Train a tiny model; with stop_after=N the process 'dies' right after epoch N's checkpoint."""
    from mtlser.train.trainer import Trainer

    sections.setdefault("train", {})
    sections["train"] = {"epochs": 2, "log_interval": 1000, **sections["train"]}
    cfg = from_dict(Config, tiny_config_dict(backbone={"custom": BASE_LIKE, "dropout": 0.1,
                                                       **sections.pop("backbone", {})}, **sections), "test")
    trainer = Trainer(cfg, data_dir, tokens, tmp_path / name)
    if stop_after:
        save = trainer.save_checkpoint

        def save_then_die():
            save()
            if trainer.epoch >= stop_after:
                raise Interrupted

        trainer.save_checkpoint = save_then_die
        with pytest.raises(Interrupted):
            trainer.fit()
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


# ---------------------------------------------------------------- GPU only (run in a GPU session)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_memory_efficient_attention_matches_math_on_gpu():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batch = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in collate(items()).items()}
    model = model_for().cuda()
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


# ---------------------------------------------------------------- several folds on one GPU

def test_local_jobs_share_gpus_round_robin_and_split_the_cores(tmp_path):
    from mtlser.utils.launch import job_env, main

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
