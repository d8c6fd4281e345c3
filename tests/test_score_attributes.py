"""Issue 21 scores cross-checked: F1 against scikit-learn, CCC and Pearson r against independent formulas."""

from __future__ import annotations

import numpy as np
import pytest

from mtlser.score.attributes import ccc, f1_scores, pearson
from mtlser.score.metrics import confusion_matrix


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_matches_scikit_learn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 4, 60)
    hyp = np.where(rng.random(60) < 0.5, ref, rng.integers(0, 4, 60))
    hyp[hyp == 3] = 2  # a class never predicted: its F1 is 0 (zero_division=0)
    f1, macro, weighted = f1_scores(confusion_matrix(ref, hyp, 4))
    labels = [0, 1, 2, 3]
    assert f1 == pytest.approx(metrics.f1_score(ref, hyp, labels=labels, average=None, zero_division=0))
    assert macro == pytest.approx(metrics.f1_score(ref, hyp, labels=labels, average="macro", zero_division=0))
    assert weighted == pytest.approx(metrics.f1_score(ref, hyp, labels=labels, average="weighted", zero_division=0))


def test_ccc_and_pearson_match_independent_formulas():
    rng = np.random.default_rng(3)
    x = rng.normal(4, 1, 80)
    y = 0.7 * x + rng.normal(0, 0.5, 80) + 0.4
    # numpy's corrcoef for r; CCC = r * 2 sx sy / (sx^2 + sy^2 + (mx - my)^2) (Lin 1989, eq. 2)
    r = np.corrcoef(x, y)[0, 1]
    assert pearson(x, y) == pytest.approx(r, rel=1e-9)
    sx, sy = x.std(), y.std()
    assert ccc(x, y) == pytest.approx(r * 2 * sx * sy / (sx ** 2 + sy ** 2 + (x.mean() - y.mean()) ** 2), rel=1e-9)
    assert ccc(x, x) == pytest.approx(1.0) and ccc(x, x + 1) < pearson(x, x + 1)
    assert ccc(x, np.full_like(x, 4.0)) == 0.0  # a constant prediction agrees with nothing
