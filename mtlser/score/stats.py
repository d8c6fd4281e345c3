"""How much of a figure is the seed, the fold and chance: spreads, intervals, paired tests, chance levels.

Runs are keyed by (seed, fold): one trained model tested on one fold's held-out speakers. Over runs:

- ``fold_std``: the sample std over folds within a seed (root mean of the seeds' variances; with one
  seed, the plain sample std over folds, as RESULTS.md always gave it): how far speakers differ.
- ``seed_std``: the sample std of the per-seed means (each the mean over that seed's folds): how far a
  rerun with another seed would move the figure. Needs two seeds.
- the 95 % CI of the mean: Student's t over the per-seed means when there are two seeds or more
  (df = seeds − 1; the folds are fixed, the seed is the draw); with one seed, t over the folds
  (df = folds − 1), which says how far the test speakers scatter and nothing about a rerun.

A paired comparison of two experiments takes the (seed, fold) runs both have, each pair a model of A
and of B with the same seed tested on the same speakers: the mean difference and its CI by the same
rule as above (over per-seed mean differences, else over folds), a paired t-test and a Wilcoxon
signed-rank test over the pairs, and with few pairs an exact sign-flip permutation test, whose p is
exact where the t-test's normality cannot be checked. The verdict is read off the CI only: a
difference is shown when its 95 % CI excludes zero.

Chance per fold from its reference class counts: UA chance = 1/K (K classes present: always guessing
one class recalls it fully and the others not at all), WA chance = the majority class's share.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95
# Sign flips are enumerated up to this many pairs (2**16 = 65536 means); beyond it t and Wilcoxon suffice.
MAX_EXACT_PERMUTATION_PAIRS = 16

# A fold is flagged as off only against at least this many others (IEMOCAP's 5 sessions, 10 speakers).
MIN_OTHER_FOLDS = 4

Key = tuple  # (seed, fold)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student's t interval of the mean of ``values``; None with fewer than two values."""
    # scipy.special's t quantile is what scipy.stats.t.ppf computes (its t_gen._ppf), at a quarter of the
    # import time (scoring runs once per experiment): the same bits.
    from scipy.special import stdtrit

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    mean = float(x.mean())
    half = float(stdtrit(x.size - 1, 0.5 + confidence / 2) * x.std(ddof=1) / math.sqrt(x.size))
    return mean - half, mean + half


def paired_t_p(diff: Sequence[float]) -> float | None:
    """Two-sided p of the paired t-test (mean difference zero); None with under two pairs or no spread."""
    from scipy.special import stdtr  # scipy.stats.t.sf(x, df) is stdtr(df, -x) (t_gen._sf): see t_interval

    d = np.asarray(diff, dtype=float)
    if d.size < 2:
        return None
    sd = d.std(ddof=1)
    if sd == 0:
        # Every pair moved by the same amount: no spread to test against (t is 0/0 or infinite).
        return None
    t = d.mean() / (sd / math.sqrt(d.size))
    return float(2 * stdtr(d.size - 1, -abs(t)))


def wilcoxon_p(diff: Sequence[float]) -> float | None:
    """Two-sided p of the Wilcoxon signed-rank test (scipy's, zero differences dropped); None if all are zero."""
    from scipy.stats import wilcoxon

    d = np.asarray(diff, dtype=float)
    if d.size < 1 or not np.any(d != 0):
        return None
    return float(wilcoxon(d).pvalue)


def sign_flip_p(diff: Sequence[float]) -> float | None:
    """Exact two-sided permutation p: the share of the 2**n sign flips of the differences whose mean is at
    least as far from zero as the observed one. None above MAX_EXACT_PERMUTATION_PAIRS pairs or with none."""
    d = np.asarray(diff, dtype=float)
    n = d.size
    if n == 0 or n > MAX_EXACT_PERMUTATION_PAIRS:
        return None
    observed = abs(d.sum())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # (2**n, n)
    sums = np.abs(signs @ d)
    # A relative tolerance, so that flips equal to the observed sum up to rounding count as reaching it.
    reached = sums >= observed - 1e-12 * max(1.0, observed)
    return float(reached.mean())


def _by_seed(values: Mapping[Key, float]) -> dict:
    seeds: dict = {}
    for (seed, fold), v in sorted(values.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        seeds.setdefault(seed, {})[fold] = float(v)
    return seeds


def interval_rule(num_seeds: int, num_folds: int) -> str:
    """What the CI is taken over, in words for a report."""
    if num_seeds >= 2:
        return f"t over the {num_seeds} seed means (df {num_seeds - 1})"
    if num_folds >= 2:
        return f"t over the {num_folds} folds (df {num_folds - 1}; one seed: a rerun's spread is not in it)"
    return "none (one seed, one fold)"


def summarise(values: Mapping[Key, float]) -> dict:
    """Mean, fold std, seed std and 95 % CI of one metric over (seed, fold) runs (see the module docstring)."""
    if not values:
        raise ValueError("summarise: no runs")
    seeds = _by_seed(values)
    seed_means = np.array([np.mean(list(f.values())) for f in seeds.values()])
    folds = sorted({fold for f in seeds.values() for fold in f})
    fold_vars = [np.var(list(f.values()), ddof=1) for f in seeds.values() if len(f) > 1]
    out = {
        "mean": float(seed_means.mean()),
        "fold_std": float(math.sqrt(np.mean(fold_vars))) if fold_vars else None,
        "seed_std": float(seed_means.std(ddof=1)) if len(seed_means) > 1 else None,
        "num_seeds": len(seeds),
        "num_folds": len(folds),
        "seed_means": {str(s): float(m) for s, m in zip(seeds, seed_means)},
        "ci_rule": interval_rule(len(seeds), len(folds)),
    }
    if len(seeds) >= 2:
        ci = t_interval(seed_means)
    else:
        ci = t_interval(list(next(iter(seeds.values())).values()))
    out["ci"] = list(ci) if ci else None
    return out


def paired(a: Mapping[Key, float], b: Mapping[Key, float]) -> dict:
    """B − A over the (seed, fold) runs both have: mean difference, CI, up/down counts and p values."""
    common = sorted(set(a) & set(b), key=lambda k: (str(k[0]), str(k[1])))
    diffs = {k: float(b[k]) - float(a[k]) for k in common}
    d = np.array(list(diffs.values()))
    out = {"pairs": len(common), "up": int((d > 0).sum()), "down": int((d < 0).sum()),
           "num_seeds": len({k[0] for k in common}), "num_folds": len({k[1] for k in common}),
           "diff": None, "ci": None, "ci_rule": interval_rule(0, 0),
           "t_p": None, "wilcoxon_p": None, "permutation_p": None}
    if not common:
        return out
    s = summarise(diffs)
    out.update(diff=s["mean"], ci=s["ci"], ci_rule=s["ci_rule"], t_p=paired_t_p(d), wilcoxon_p=wilcoxon_p(d),
               permutation_p=sign_flip_p(d))
    return out


def verdict(metric: str, p: dict, scale: float = 100.0) -> str:
    """One quotable line, e.g. 'UA +1.20, 95 % CI [-0.40, 2.80]: not shown over 10 folds × 3 seeds'."""
    over = (f"{p['num_folds']} fold{'s' if p['num_folds'] != 1 else ''} × "
            f"{p['num_seeds']} seed{'s' if p['num_seeds'] != 1 else ''}")
    if p["diff"] is None:
        return f"{metric} not compared: no (seed, fold) run in common"
    head = f"{metric} {scale * p['diff']:+.2f}"
    if p["ci"] is None:
        return f"{head}, no CI (one seed, one fold): not shown over {over}"
    lo, hi = p["ci"]
    shown = lo > 0 or hi < 0
    word = ("shown (higher)" if lo > 0 else "shown (lower)") if shown else "not shown"
    return f"{head}, 95 % CI [{scale * lo:+.2f}, {scale * hi:+.2f}]: {word} over {over}"


def chance(confusion: Sequence[Sequence[int]]) -> dict:
    """Chance levels of one fold from its reference class counts (confusion rows): UA 1/K, WA majority share."""
    counts = np.asarray(confusion).sum(axis=1)
    n = int(counts.sum())
    present = int((counts > 0).sum())
    return {"ua": 1.0 / present if present else None, "wa": float(counts.max() / n) if n else None}


def off_folds(values: Mapping[str, float], k: float = 2.0) -> list[str]:
    """Folds more than k sample stds below the mean of the other folds. Each fold is measured against the
    rest, so that it does not widen the std it is measured by (with it included, one fold of five can lie
    at most 1.8 std below the mean); with fewer than MIN_OTHER_FOLDS others their std is too rough to
    flag anything by."""
    if len(values) < MIN_OTHER_FOLDS + 1:
        return []
    out = []
    for fold, v in values.items():
        rest = np.array([x for f, x in values.items() if f != fold])
        if v < rest.mean() - k * rest.std(ddof=1):
            out.append(fold)
    return sorted(out)
