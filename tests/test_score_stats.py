"""mtlser.score.stats against scipy (and by hand) on fixed inputs."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from mtlser.score import stats

# Three seeds × four folds of a made-up UA: fold 3 is hard for every seed, seed 2 a bit better.
UA = {
    (0, "fold01"): 0.61, (0, "fold02"): 0.58, (0, "fold03"): 0.42, (0, "fold04"): 0.66,
    (1, "fold01"): 0.63, (1, "fold02"): 0.55, (1, "fold03"): 0.40, (1, "fold04"): 0.64,
    (2, "fold01"): 0.65, (2, "fold02"): 0.60, (2, "fold03"): 0.47, (2, "fold04"): 0.69,
}
DIFF = [0.012, -0.004, 0.021, 0.008, 0.015, -0.011, 0.006, 0.019]


def test_t_interval_matches_scipy():
    x = [0.61, 0.58, 0.42, 0.66, 0.55]
    ci = sps.ttest_1samp(x, 0).confidence_interval(0.95)
    assert stats.t_interval(x) == pytest.approx((ci.low, ci.high), abs=1e-12)
    ci90 = sps.ttest_1samp(x, 0).confidence_interval(0.90)
    assert stats.t_interval(x, 0.90) == pytest.approx((ci90.low, ci90.high), abs=1e-12)
    assert stats.t_interval([0.5]) is None


def test_paired_t_matches_scipy():
    a = np.array([0.60, 0.55, 0.41, 0.70, 0.52, 0.63, 0.58, 0.49])
    b = a + np.array(DIFF)
    assert stats.paired_t_p(b - a) == pytest.approx(sps.ttest_rel(b, a).pvalue, rel=1e-10)
    assert stats.paired_t_p([0.1]) is None
    assert stats.paired_t_p([0.02, 0.02, 0.02]) is None  # no spread: no t


def test_wilcoxon_matches_scipy():
    assert stats.wilcoxon_p(DIFF) == pytest.approx(sps.wilcoxon(DIFF).pvalue, rel=1e-12)
    # Exact distribution, 8 pairs, 6 positive: W- = ranks of 0.004 and 0.011 = 1 + 4 = 5.
    # P(W <= 5) for n = 8 is 10/256; two-sided 20/256.
    assert stats.wilcoxon_p(DIFF) == pytest.approx(20 / 256)
    assert stats.wilcoxon_p([0.0, 0.0]) is None


def test_sign_flip_matches_scipy_permutation_test():
    for d in (DIFF, [0.5, -0.2, 1.0, 0.3], [0.01, 0.02, 0.03], [0.2, -0.2]):
        ref = sps.permutation_test((np.array(d),), np.mean, permutation_type="samples",
                                   n_resamples=np.inf).pvalue
        assert stats.sign_flip_p(d) == pytest.approx(ref, rel=1e-12), d
    # By hand: three positive differences, only the all-positive and all-negative flips reach the sum.
    assert stats.sign_flip_p([0.01, 0.02, 0.03]) == pytest.approx(2 / 8)
    assert stats.sign_flip_p(np.ones(stats.MAX_EXACT_PERMUTATION_PAIRS + 1)) is None


def test_summarise_several_seeds():
    s = stats.summarise(UA)
    per_seed = [np.mean([v for (seed, _), v in UA.items() if seed == k]) for k in (0, 1, 2)]
    assert s["mean"] == pytest.approx(np.mean(per_seed))
    assert s["seed_std"] == pytest.approx(np.std(per_seed, ddof=1))
    fold_vars = [np.var([v for (seed, _), v in UA.items() if seed == k], ddof=1) for k in (0, 1, 2)]
    assert s["fold_std"] == pytest.approx(math.sqrt(np.mean(fold_vars)))
    ci = sps.ttest_1samp(per_seed, 0).confidence_interval(0.95)
    assert s["ci"] == pytest.approx([ci.low, ci.high])
    assert (s["num_seeds"], s["num_folds"]) == (3, 4)
    assert "seed means" in s["ci_rule"]


def test_summarise_one_seed_is_the_plain_fold_figures():
    one = {k: v for k, v in UA.items() if k[0] == 1}
    s = stats.summarise(one)
    x = list(one.values())
    assert s["mean"] == pytest.approx(np.mean(x))
    assert s["fold_std"] == pytest.approx(np.std(x, ddof=1))
    assert s["seed_std"] is None
    ci = sps.ttest_1samp(x, 0).confidence_interval(0.95)
    assert s["ci"] == pytest.approx([ci.low, ci.high])
    assert "folds" in s["ci_rule"] and "one seed" in s["ci_rule"]
    s1 = stats.summarise({(0, "fold01"): 0.5})
    assert s1["ci"] is None and s1["fold_std"] is None


def test_paired_and_verdict():
    b = {k: v + 0.03 + 0.002 * (k[0] - 1) for k, v in UA.items()}
    p = stats.paired(UA, b)
    assert p["pairs"] == 12 and p["up"] == 12 and p["down"] == 0
    assert p["diff"] == pytest.approx(0.03)
    d = [b[k] - UA[k] for k in sorted(UA)]
    assert p["t_p"] == pytest.approx(sps.ttest_1samp(d, 0).pvalue)
    assert p["wilcoxon_p"] == pytest.approx(sps.wilcoxon(d).pvalue)
    assert p["permutation_p"] == pytest.approx(2 / 2 ** 12)
    # CI over the three per-seed mean differences 0.028, 0.030, 0.032.
    ci = sps.ttest_1samp([0.028, 0.030, 0.032], 0).confidence_interval(0.95)
    assert p["ci"] == pytest.approx([ci.low, ci.high])
    line = stats.verdict("UA", p)
    assert line == (f"UA +3.00, 95 % CI [{100 * ci.low:+.2f}, {100 * ci.high:+.2f}]: "
                    "shown (higher) over 4 folds × 3 seeds")

    noisy = {k: v + (0.02 if k[1] != "fold03" else -0.05) for k, v in UA.items() if k[0] == 0}
    p1 = stats.paired({k: v for k, v in UA.items() if k[0] == 0}, noisy)
    assert p1["num_seeds"] == 1 and p1["diff"] == pytest.approx(0.0025)
    assert stats.verdict("UA", p1).endswith(": not shown over 4 folds × 1 seed")
    assert stats.verdict("UA", stats.paired(UA, {})) == "UA not compared: no (seed, fold) run in common"


def test_chance_levels():
    cm = [[5, 1, 0], [2, 2, 0], [0, 0, 0]]  # 6 and 4 references, the third class absent
    assert stats.chance(cm) == {"ua": 0.5, "wa": 0.6}
    assert stats.chance([[3, 0], [0, 1]]) == {"ua": 0.5, "wa": 0.75}


def test_off_folds():
    ua = {"fold01": 0.60, "fold02": 0.62, "fold03": 0.58, "fold04": 0.61, "fold05": 0.30}
    assert stats.off_folds(ua) == ["fold05"]
    # The others' mean 0.6025, std 0.0171: the line is at 0.5683.
    assert stats.off_folds({**ua, "fold05": 0.57}) == []
    assert stats.off_folds({**ua, "fold05": 0.56}) == ["fold05"]
    # Four folds: the std of three others is too rough to flag by.
    assert stats.off_folds({"fold01": 0.60, "fold02": 0.62, "fold03": 0.61, "fold04": 0.10}) == []


def test_t_figures_are_scipy_stats_own():
    """The t quantile and tail come from scipy.special (no scipy.stats import): the same bits as scipy.stats.t."""
    from scipy.stats import t as student_t

    from mtlser.score.stats import paired_t_p, t_interval

    rng = np.random.default_rng(0)
    for n in range(2, 30):
        x = rng.normal(0.5, 0.1, n)
        half = student_t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n)
        assert t_interval(x) == (float(x.mean()) - float(half), float(x.mean()) + float(half))
        d = rng.normal(0.01, 0.02, n)
        t = d.mean() / (d.std(ddof=1) / math.sqrt(n))
        assert paired_t_p(d) == float(2 * student_t.sf(abs(t), n - 1))
