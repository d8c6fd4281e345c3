"""The model: fusion, pooling, and the CE + lambda * CTC objective."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlser.config import from_dict, Config
from mtlser.model.ser_model import LayerFusion, SERModel, build_model, ctc_required_frames, mean_pool
from tests.conftest import EMOTIONS, tiny_config_dict


def tiny_model(lam: float = 0.1, reduction: str = "mean", vocab: int = 25) -> SERModel:
    cfg = from_dict(Config, tiny_config_dict(loss={"lambda": lam, "ctc_reduction": reduction},
                                             data={"emotions": EMOTIONS}), "test")
    torch.manual_seed(0)
    return build_model(cfg, vocab).eval()


def batch(B=3, seconds=(1.0, 0.8, 0.6), L=5, vocab=25):
    torch.manual_seed(1)
    lens = torch.tensor([int(s * 16000) for s in seconds[:B]])
    wavs = torch.randn(B, int(lens.max())) * 0.1
    for i, n in enumerate(lens):
        wavs[i, n:] = 0
    targets = torch.randint(1, vocab, (B, L))
    target_lens = torch.full((B,), L)
    emotions = torch.tensor([0, 1, 2][:B])
    return wavs, lens, emotions, targets, target_lens


def test_fusion_starts_uniform_and_sums_to_one():
    fusion = LayerFusion(13)
    w = fusion.weights
    assert torch.allclose(w, torch.full((13,), 1 / 13))
    states = [torch.full((2, 3, 4), float(i)) for i in range(13)]
    assert torch.allclose(fusion(states), torch.full((2, 3, 4), 6.0))  # mean of 0..12
    with torch.no_grad():
        fusion.logits.copy_(torch.randn(13))
    assert math.isclose(float(fusion.weights.detach().sum()), 1.0, rel_tol=1e-6)
    with pytest.raises(AssertionError, match="built for 13 hidden states but got 12"):
        fusion(states[:12])


def test_model_fuses_every_hidden_state_and_learns_the_weights():
    model = tiny_model()
    assert model.fusion.logits.numel() == model.backbone.num_layers + 1 == 3
    wavs, lens, emo, tg, tl = batch()
    loss, stats, bs = model.train()(wavs, lens, emo, tg, tl)
    loss.backward()
    assert bs == 3 and model.fusion.logits.grad is not None
    assert float(model.fusion.logits.grad.abs().sum()) > 0


def test_mean_pool_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    assert torch.allclose(mean_pool(x, torch.tensor([2, 3])), torch.tensor([[2.0], [4.0]]))
    assert torch.allclose(mean_pool(x, None), x.mean(1))


def test_ctc_required_frames_counts_repeats():
    t = torch.tensor([[1, 1, 2, 2, 2], [3, 4, 5, 0, 0]])
    assert ctc_required_frames(t, torch.tensor([5, 3])).tolist() == [5 + 3, 3]


@pytest.mark.parametrize("reduction", ["sum", "mean_batch", "mean"])
def test_objective_is_ce_plus_lambda_ctc(reduction):
    lam = 0.3
    model = tiny_model(lam, reduction)
    wavs, lens, emo, tg, tl = batch()
    with torch.no_grad():
        loss, stats, _ = model(wavs, lens, emo, tg, tl)
        fused, frame_lens = model.encode(wavs, lens)
        emo_logits, ctc_logits = model.heads(fused, frame_lens)
        ce = F.cross_entropy(emo_logits, emo)
        lp = F.log_softmax(ctc_logits, -1).transpose(0, 1)
        per_utt = F.ctc_loss(lp, tg, frame_lens, tl, blank=0, reduction="none")
    expected_ctc = {"sum": per_utt.sum(), "mean_batch": per_utt.mean(), "mean": (per_utt / tl).mean()}[reduction]
    assert math.isclose(stats["loss_ce"], float(ce), rel_tol=1e-5)
    assert math.isclose(stats["loss_ctc"], float(expected_ctc), rel_tol=1e-5)
    assert math.isclose(float(loss), float(ce + lam * expected_ctc), rel_tol=1e-5)


def test_lambda_zero_is_the_single_task_baseline():
    model = tiny_model(lam=0.0)
    assert model.ctc_head is None
    wavs, lens, emo, tg, tl = batch()
    with torch.no_grad():
        loss, stats, _ = model(wavs, lens, emo)
    assert "loss_ctc" not in stats and math.isclose(float(loss), stats["loss_ce"], rel_tol=1e-6)


def test_empty_and_infeasible_ctc_targets_are_skipped_not_nan():
    model = tiny_model(0.1, "sum").train()
    wavs, lens, emo, tg, tl = batch()
    tl = torch.tensor([0, 5, 5])  # utterance 0: transcript of non-verbal tags only
    # Utterance 2: more tokens than frames (0.6 s -> ~30 frames, 40 distinct tokens needed).
    tg = torch.cat([tg, torch.randint(1, 25, (3, 35))], dim=1)
    tl[2] = 40
    loss, stats, _ = model(wavs, lens, emo, tg, tl)
    assert torch.isfinite(loss)
    assert stats["ctc_skipped"] == 2
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    # When no utterance of the batch has a usable target, the CTC term is exactly zero.
    loss, stats, _ = model(wavs, lens, emo, tg, torch.zeros(3, dtype=torch.long))
    assert stats["loss_ctc"] == 0.0 and stats["ctc_skipped"] == 3
    assert math.isclose(float(loss), stats["loss_ce"], rel_tol=1e-6)


def test_predict_outputs():
    model = tiny_model()
    wavs, lens, *_ = batch()
    out = model.predict(wavs, lens)
    assert out["emo_probs"].shape == (3, 4)
    assert torch.allclose(out["emo_probs"].sum(-1), torch.ones(3))
    assert out["ctc_log_probs"].shape[0] == 3 and out["ctc_log_probs"].shape[2] == 25
    assert out["frame_lens"].tolist() == model.backbone.frame_lengths(lens).tolist()
