"""Fine-tuning options of the backbone: time masking, LayerDrop, frozen CNN, warm-up freeze, learning-rate
scale, and probing (the whole backbone frozen, only fusion and heads trained).

Unit tests on a tiny randomly initialised backbone; the trainer tests run real optimizer steps on 8 one-second
utterances.
"""

from __future__ import annotations

import pytest
import torch
from tests.conftest import TINY_BACKBONE, tiny_config_dict

from mtlser.config import load_config
from mtlser.model.backbone import load_backbone
from mtlser.utils import MtlserError

NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, projection_dropout=0.0)


def tiny_backbone(**kw):
    torch.manual_seed(0)
    return load_backbone("wav2vec2", None, size="custom", custom=dict(TINY_BACKBONE["custom"]),
                         **{**NO_DROPOUT, **kw})


def padded_batch():
    """Two utterances of 8000 and 5000 samples: 25 and 15 frames at the tiny backbone's 320x downsampling."""
    g = torch.Generator().manual_seed(1)
    wavs = 0.3 * torch.randn(2, 8000, generator=g)
    wavs[1, 5000:] = 0.0
    return wavs, torch.tensor([8000, 5000])


# ----------------------------------------------------------------------------- time masking
def test_time_mask_covers_valid_frames_only_in_whole_spans():
    bb = tiny_backbone(mask_time_prob=0.3, mask_time_length=5)
    lens = torch.tensor([200, 150, 37, 4] * 16)  # the last: shorter than one span
    torch.manual_seed(0)
    mask = bb.time_mask(len(lens), 200, lens, torch.device("cpu"))  # (B, T)
    valid = torch.arange(200)[None, :] < lens[:, None]
    assert mask.shape == (64, 200)
    assert not (mask & ~valid).any(), "padding was masked"
    assert not mask[lens < 5].any(), "an utterance shorter than one span was masked"
    # Every masked run is at least one whole span: spans are never cut at the end of the valid frames.
    for row in mask[lens >= 5]:
        padded = torch.cat([torch.tensor([False]), row, torch.tensor([False])]).int()
        edges = padded.diff()
        runs = edges.eq(-1).nonzero().flatten() - edges.eq(1).nonzero().flatten()
        assert runs.numel() > 0 and int(runs.min()) >= 5
    # About mask_time_prob of the valid frames (fewer where spans overlap: 1 - exp(-0.3) ~ 0.26 for many spans).
    share = mask[valid & (lens >= 5)[:, None]].float().mean().item()
    assert 0.18 < share < 0.32, share


def test_time_mask_draws_from_torch_rng():
    bb = tiny_backbone(mask_time_prob=0.2, mask_time_length=3)
    lens = torch.tensor([60, 40])
    torch.manual_seed(7)
    a = bb.time_mask(2, 60, lens, torch.device("cpu"))
    torch.manual_seed(7)
    b = bb.time_mask(2, 60, lens, torch.device("cpu"))
    torch.manual_seed(8)
    c = bb.time_mask(2, 60, lens, torch.device("cpu"))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_time_masking_replaces_frames_in_training_only():
    bb = tiny_backbone(mask_time_prob=0.5, mask_time_length=2)
    seen = []
    bb.model.encoder.transformer.pos_conv_embed.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    wavs, lens = padded_batch()
    bb.eval()
    with torch.no_grad():
        eval1, frames = bb.extract_features(wavs, lens)
        eval2, _ = bb.extract_features(wavs, lens)
    clean = seen[-1]  # (B, T, D): the transformer input before positional convolution
    assert all(torch.equal(x, y) for x, y in zip(eval1, eval2)), "masking happened in eval mode"
    bb.train()
    torch.manual_seed(3)
    with torch.no_grad():
        trained, _ = bb.extract_features(wavs, lens)
    masked_input = seen[-1]
    is_mask = (masked_input == bb.mask_embedding).all(-1)  # (B, T)
    is_clean = (masked_input == clean).all(-1)
    valid = torch.arange(clean.shape[1])[None, :] < frames[:, None]
    assert (is_mask | is_clean).all(), "a frame is neither itself nor the mask embedding"
    assert is_mask.any(), "nothing was masked"
    assert not (is_mask & ~valid).any(), "a padded frame was masked"
    assert not torch.equal(trained[0], eval1[0])


def test_mask_embedding_exists_only_when_masking():
    assert tiny_backbone().mask_embedding is None
    assert tiny_backbone(mask_time_prob=0.1).mask_embedding.shape == (32,)


def test_config_rejects_bad_masking_settings():
    with pytest.raises(MtlserError, match=r"mask_time_prob = 1\.5; expected a probability in \[0, 1\)"):
        load_config(None, tiny_config_dict(backbone={"mask_time_prob": 1.5}))
    with pytest.raises(MtlserError, match=r"backbone\.freeze = true .*mask_time_prob = 0\.1 would never mask"):
        load_config(None, tiny_config_dict(backbone={"freeze": True, "mask_time_prob": 0.1}))


# ----------------------------------------------------------------------------- LayerDrop
def test_layer_drop_skips_layers_in_training_only():
    bb = tiny_backbone(layer_drop=1.0)
    wavs, lens = padded_batch()
    bb.train()
    with torch.no_grad():
        states, _ = bb.extract_features(wavs, lens)
    # Every layer dropped: each state is the transformer input (the last one through the pre-LN final norm).
    assert all(torch.equal(s, states[0]) for s in states[1:-1])
    assert torch.allclose(states[-1], bb.model.encoder.transformer.layer_norm(states[0]))
    bb.eval()
    with torch.no_grad():
        states, _ = bb.extract_features(wavs, lens)
    assert not torch.allclose(states[1], states[0])


# ----------------------------------------------------------------------------- the trainer's options
@pytest.fixture
def trainer_for(tmp_path, make_data_dir):
    """A Trainer on 8 one-second utterances (2 batches of 4) with the tiny backbone, CE only."""
    from mtlser.train.trainer import Trainer

    data = tmp_path / "data"
    make_data_dir("data/train", n_spk=2, n_utt=4)
    make_data_dir("data/valid", n_spk=2, n_utt=2)

    def make(**backbone) -> Trainer:
        cfg = load_config(None, tiny_config_dict(backbone=backbone, loss={"lambda": 0.0}, optim={"lr": 1e-2}))
        return Trainer(cfg, data, token_list=["<blank>"], exp_dir=tmp_path / "exp")

    return make


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def optimized(trainer) -> dict[str, float]:
    """Parameter name -> learning rate, for every parameter in the optimizer."""
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    return {names[id(p)]: g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}


def test_freeze_feature_encoder(trainer_for):
    t = trainer_for(freeze_feature_encoder=True)
    in_opt = optimized(t)
    cnn = {n for n, _ in t.model.named_parameters() if ".feature_extractor." in n}
    assert cnn and not cnn & set(in_opt)
    before = snapshot(t.model)
    t.train_epoch()
    moved = changed(before, t.model)
    assert not {k for k in moved if ".feature_extractor." in k}
    assert {k for k in moved if ".encoder.transformer." in k}, "the transformer should train"


def test_backbone_lr_scale(trainer_for):
    t = trainer_for(lr_scale=0.1)
    lrs = optimized(t)
    assert all(lr == pytest.approx(1e-3) for n, lr in lrs.items() if n.startswith("backbone."))
    assert all(lr == pytest.approx(1e-2) for n, lr in lrs.items() if not n.startswith("backbone."))
    assert len([n for n in lrs if n.startswith("backbone.")]) == len(list(t.model.backbone.parameters()))
    assert "fusion.logits" in lrs and "emotion_head.weight" in lrs


def test_freeze_steps_then_thaw(trainer_for):
    t = trainer_for(freeze_steps=2)
    before = snapshot(t.model)
    t.train_epoch()  # steps 0 and 1: backbone frozen
    assert t.step == 2
    moved = changed(before, t.model)
    assert not {k for k in moved if k.startswith("backbone.")}
    assert {"fusion.logits", "emotion_head.weight"} <= moved
    before = snapshot(t.model)
    t.train_epoch()  # steps 2 and 3: everything trains
    assert {k for k in changed(before, t.model) if k.startswith("backbone.")}


def test_probing_trains_fusion_and_heads_only(trainer_for):
    t = trainer_for(freeze=True, freeze_steps=1)  # freeze_steps must not thaw a probing backbone
    backbone = t.model.backbone
    assert not {n for n in optimized(t) if n.startswith("backbone.")}, "backbone parameters in the optimizer"
    assert all(not p.requires_grad for p in backbone.parameters())
    t.model.train()
    assert not backbone.training, "a frozen backbone must stay in eval mode (no dropout)"
    before = snapshot(t.model)
    for _ in range(2):
        t.train_epoch()
    assert t.step == 4
    assert all(p.grad is None for p in backbone.parameters())
    moved = changed(before, t.model)
    assert not {k for k in moved if k.startswith("backbone.")}
    assert {"fusion.logits", "emotion_head.weight", "emotion_head.bias"} <= moved
