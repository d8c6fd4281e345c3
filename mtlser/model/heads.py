"""The attribute (dimensional emotion) head and its losses (issue 21.2).

A regression head per attribute set on the same pooled fusion as the emotion head: one linear layer
from the pooled features to one value per declared attribute (mtlser.data.attributes), trained on
targets scaled to [0, 1] by the declared scale, so that attributes of different scales weigh the same
and the same learning rate suits every corpus. Predictions are mapped back to the declared scale.

Losses: ``ccc`` = mean over attributes of 1 - CCC (the concordance correlation coefficient over the
batch; the loss of the MSP-Podcast challenge baselines) | ``mse`` (mean squared error on the [0, 1] scale).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def ccc(pred: Tensor, gold: Tensor, dim: int = 0) -> Tensor:
    """Lin's concordance correlation coefficient along ``dim``:
    2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2), population moments."""
    mx, my = pred.mean(dim), gold.mean(dim)
    vx = ((pred - mx.unsqueeze(dim)) ** 2).mean(dim)
    vy = ((gold - my.unsqueeze(dim)) ** 2).mean(dim)
    cov = ((pred - mx.unsqueeze(dim)) * (gold - my.unsqueeze(dim))).mean(dim)
    # eps: a batch whose targets and predictions are all equal has 0/0; it then counts as no agreement.
    return 2 * cov / (vx + vy + (mx - my) ** 2 + 1e-8)


def attribute_loss(pred: Tensor, gold: Tensor, kind: str) -> Tensor:
    """L_attr over a batch: ``pred``, ``gold`` (B, K) on the [0, 1] scale; the mean over the K attributes."""
    if kind == "ccc":
        return (1 - ccc(pred, gold, dim=0)).mean()
    if kind == "mse":
        return ((pred - gold) ** 2).mean()
    raise ValueError(f"loss.attr_loss must be ccc or mse, got {kind!r}")


class AttributeHead(nn.Module):
    """Pooled features (B, D) -> attribute values (B, K) on the [0, 1] scale; ``to_scale`` maps them back."""

    def __init__(self, hidden_size: int, lows: list[float], highs: list[float]):
        super().__init__()
        self.linear = nn.Linear(hidden_size, len(lows))
        self.register_buffer("low", torch.tensor(lows, dtype=torch.float32), persistent=False)
        self.register_buffer("span", torch.tensor(highs, dtype=torch.float32) - self.low, persistent=False)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.linear(pooled)

    def to_unit(self, values: Tensor) -> Tensor:
        return (values - self.low.to(values.dtype)) / self.span.to(values.dtype)

    def to_scale(self, unit: Tensor) -> Tensor:
        # Clamped: a value off the declared scale is no prediction a reader of the scale can use.
        return self.low.to(unit.dtype) + unit.clamp(0, 1) * self.span.to(unit.dtype)


def balanced_class_weights(counts: list[int]) -> list[float]:
    """Class-balanced CE weights from training counts: n / (K * n_k) (scikit-learn's 'balanced');
    a class with no training utterance gets weight 0 (it never appears as a target)."""
    n, k = sum(counts), len(counts)
    return [n / (k * c) if c > 0 else 0.0 for c in counts]
