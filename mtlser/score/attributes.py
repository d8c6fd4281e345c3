"""Scores of issue 21: macro-/weighted F1 of the classes, and CCC, Pearson r and MAE per attribute.

F1 per class from the confusion matrix (rows = reference): 2 P R / (P + R), 0 where P + R is 0 (as
scikit-learn's zero_division=0). Macro-F1 is the mean over the classes present in the references
(the challenge metric); weighted F1 weighs each class by its reference count. CCC is Lin's
concordance correlation coefficient with population moments (the MSP-Podcast challenges' metric).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlser import expdir
from mtlser.data.attributes import UTT2ATTR, read_declaration, read_values
from mtlser.utils import MtlserError


def f1_scores(cm: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(F1 per class, macro-F1 over the classes with references, weighted F1)."""
    cm = np.asarray(cm, dtype=float)
    tp = np.diag(cm)
    ref_n, hyp_n = cm.sum(1), cm.sum(0)
    denom = ref_n + hyp_n  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = ref_n > 0
    macro = float(f1[present].mean()) if present.any() else 0.0
    weighted = float((f1 * ref_n).sum() / ref_n.sum()) if ref_n.sum() > 0 else 0.0
    return f1, macro, weighted


def ccc(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    denom = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / denom) if denom > 0 else 0.0


def ccc_from_sums(n: float, sx: float, sy: float, sxx: float, syy: float, sxy: float) -> float:
    """:func:`ccc` from the sums of x, y, x², y² and xy over n pairs: what ranks that each saw a share of the
    pairs can add up (the trainer's valid CCC under torchrun)."""
    if n <= 0:
        return 0.0
    mx, my = sx / n, sy / n
    vx, vy, cov = sxx / n - mx * mx, syy / n - my * my, sxy / n - mx * my
    denom = vx + vy + (mx - my) ** 2
    return float(2 * cov / denom) if denom > 0 else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    sx, sy = x.std(), y.std()
    return float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy)) if sx > 0 and sy > 0 else 0.0


def score_attributes(decode_dir: Path, ref_dir: Path, utts: list[str]) -> dict | None:
    """CCC, Pearson r and MAE per attribute and their means over ``utts``; None when the decode dir has no
    attribute predictions. Also draws ``attr_scatter.png`` (predicted vs true, a panel per attribute)."""
    hyp_path = decode_dir / expdir.UTT2ATTR_HYP
    if not hyp_path.is_file():
        return None
    if not (ref_dir / UTT2ATTR).is_file():
        raise MtlserError(f"{ref_dir / UTT2ATTR}: missing, but {hyp_path} holds attribute predictions; score "
                          "against the data dir that was decoded")
    attrs = read_declaration(ref_dir)
    ref, hyp = read_values(ref_dir, attrs), read_values_unchecked(hyp_path, len(attrs))
    lack = [u for u in utts if u not in hyp or u not in ref]
    if lack:
        raise MtlserError(f"{hyp_path}: no attribute values for {len(lack)} scored utterance(s), e.g. {lack[:3]}; "
                          "decode again")
    out: dict = {"attributes": [a.name for a in attrs], "ccc": {}, "pearson": {}, "mae": {}}
    for k, a in enumerate(attrs):
        r = [ref[u][k] for u in utts]
        h = [hyp[u][k] for u in utts]
        out["ccc"][a.name] = ccc(h, r)
        out["pearson"][a.name] = pearson(h, r)
        out["mae"][a.name] = float(np.mean(np.abs(np.subtract(h, r))))
    for m in ("ccc", "pearson", "mae"):
        out[f"mean_{m}"] = float(np.mean(list(out[m].values())))
    scatter_plot(decode_dir / ATTR_SCATTER, attrs, [ref[u] for u in utts], [hyp[u] for u in utts], out)
    return out


#: The scatter plot of a decode dir (predicted vs true per attribute).
ATTR_SCATTER = "attr_scatter.png"


def read_values_unchecked(path: Path, k: int) -> dict[str, list[float]]:
    """Predictions: k numbers a line (not checked against the scale: a prediction may leave it)."""
    from mtlser.data.datadir import read_table
    out = {}
    for lineno, (u, v) in enumerate(read_table(path).items(), 1):
        fields = v.split()
        try:
            vals = [float(x) for x in fields]
        except ValueError:
            vals = []
        if len(vals) != k:
            raise MtlserError(f"{path}:{lineno}: '{u}' needs {k} numbers, got '{v}'")
        out[u] = vals
    return out


def result_lines(res: dict) -> list[str]:
    lines = ["", "attribute    CCC     r       MAE"]
    for a in res["attributes"]:
        lines.append(f"{a:11s} {res['ccc'][a]:7.4f} {res['pearson'][a]:7.4f} {res['mae'][a]:7.4f}")
    lines.append(f"{'mean':11s} {res['mean_ccc']:7.4f} {res['mean_pearson']:7.4f} {res['mean_mae']:7.4f}")
    return lines


def scatter_plot(path: Path, attrs, ref: list[list[float]], hyp: list[list[float]], res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtlser.utils.fileio import atomic_open

    k = len(attrs)
    fig, axes = plt.subplots(1, k, figsize=(4 * k, 4), squeeze=False)
    ref_a, hyp_a = np.asarray(ref, float), np.asarray(hyp, float)
    for i, a in enumerate(attrs):
        ax = axes[0][i]
        ax.scatter(ref_a[:, i], hyp_a[:, i], s=12, alpha=0.6)
        ax.plot([a.low, a.high], [a.low, a.high], color="grey", lw=1, ls="--", label="predicted = true")
        pad = 0.03 * (a.high - a.low)  # points on the scale's ends stay whole
        ax.set_xlim(a.low - pad, a.high + pad)
        ax.set_ylim(a.low - pad, a.high + pad)
        ax.set_aspect("equal")
        ax.set_xlabel(f"true {a.name}")
        ax.set_ylabel(f"predicted {a.name}")
        ax.set_title(f"{a.name}: CCC {res['ccc'][a.name]:.3f}, r {res['pearson'][a.name]:.3f}, "
                     f"MAE {res['mae'][a.name]:.2f}", fontsize=9)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{path.parent.name}: {len(ref)} utterances", fontsize=10)
    fig.tight_layout()
    with atomic_open(path, "wb", encoding=None) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
