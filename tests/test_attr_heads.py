"""Attribute head and objective (issue 21.2): CCC against an independent formula, the loss switches,
and a model without attributes unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlser.model.heads import AttributeHead, attribute_loss, balanced_class_weights, ccc


def ccc_reference(x, y):
    # Lin (1989) written from sample moments with numpy: rho_c = 2 s_xy / (s_x^2 + s_y^2 + (xbar - ybar)^2)
    x, y = np.asarray(x, float), np.asarray(y, float)
    sxy = np.cov(x, y, bias=True)[0, 1]
    return 2 * sxy / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_ccc_matches_an_independent_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(size=50) + 0.3
    got = float(ccc(torch.tensor(x), torch.tensor(y)))
    assert got == pytest.approx(ccc_reference(x, y), rel=1e-6)
    assert float(ccc(torch.tensor(x), torch.tensor(x))) == pytest.approx(1.0, rel=1e-6)
    # a shifted copy correlates perfectly but does not agree: CCC < Pearson r = 1
    assert float(ccc(torch.tensor(x), torch.tensor(x + 1.0))) < 0.9


def test_losses_and_scale():
    head = AttributeHead(4, [1.0, -1.0], [7.0, 1.0])
    gold = torch.tensor([[1.0, -1.0], [7.0, 1.0], [4.0, 0.0]])
    unit = head.to_unit(gold)
    assert torch.allclose(unit, torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]]))
    assert torch.allclose(head.to_scale(unit), gold)
    assert float(attribute_loss(unit, unit, "ccc")) == pytest.approx(0.0, abs=1e-6)
    assert float(attribute_loss(unit, unit, "mse")) == 0.0
    assert float(attribute_loss(unit * 0 + 0.5, unit, "mse")) == pytest.approx((0.25 + 0.25) / 3)
    with pytest.raises(ValueError, match="ccc or mse"):
        attribute_loss(unit, unit, "l1")


def test_balanced_class_weights():
    assert balanced_class_weights([10, 30, 0]) == pytest.approx([40 / 30, 40 / 90, 0.0])


AV = [("arousal", 1.0, 7.0), ("valence", 1.0, 7.0)]


def model_with(seed=0, attributes=AV, **loss):
    from mtlser.config import Config, from_dict
    from mtlser.model.ser_model import build_model
    from tests.conftest import EMOTIONS, tiny_config_dict
    cfg = from_dict(Config, tiny_config_dict(loss={"lambda": 0.0, **loss}, data={"emotions": EMOTIONS}), "test")
    torch.manual_seed(seed)
    return build_model(cfg, 25, attributes=attributes)


@pytest.mark.parametrize("attr_loss", ["ccc", "mse"])
def test_model_with_attribute_head_trains_it(attr_loss):
    model = model_with(attr_weight=0.5, attr_loss=attr_loss)
    torch.manual_seed(2)
    wavs, lens = torch.randn(4, 8000) * 0.1, torch.tensor([8000, 7000, 6000, 8000])
    emotions = torch.tensor([0, 1, 2, 0])
    attrs = torch.tensor([[1.0, 7.0], [4.0, 4.0], [7.0, 1.0], [2.0, 3.0]])
    loss, stats, _ = model.loss_and_logits(wavs, lens, emotions, attributes=attrs)
    assert float(loss) == pytest.approx(stats["loss_ce"] + 0.5 * stats["loss_attr"], rel=1e-5)
    loss.backward()
    assert model.attr_head.linear.weight.grad.abs().sum() > 0
    out = model.predict(wavs, lens)
    assert out["attributes"].shape == (4, 2)
    assert bool(((out["attributes"] >= 1) & (out["attributes"] <= 7)).all())
    # ce_weight 0: the attribute term alone (a dimensional-only objective)
    model.ce_weight = 0.0
    loss, stats, _ = model.loss_and_logits(wavs, lens, emotions, attributes=attrs)
    assert float(loss) == pytest.approx(0.5 * stats["loss_attr"], rel=1e-5)


def test_no_attributes_draws_the_same_weights():
    a = model_with(seed=1, attributes=None)
    b = model_with(seed=1, attributes=AV)
    sb = b.state_dict()
    for name, p in a.state_dict().items():
        assert torch.equal(p, sb[name]), name
    assert set(sb) - set(a.state_dict()) == {"attr_head.linear.weight", "attr_head.linear.bias"}
    assert a.predict(torch.randn(1, 8000) * 0.1, None)["attributes"] is None
