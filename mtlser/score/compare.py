"""Compare experiments: a WA/UA table (lambda, CTC targets) with paired tests over folds against the first
experiment, per-fold WA/UA, and published figures beside ours when a reference file is given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mtlser import expdir
from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_write_text


def _exp_setup(exp_dir: Path) -> dict:
    """What distinguishes experiments in a comparison: lambda and CTC targets, from fold01's resolved config."""
    out: dict = {}
    configs = expdir.fold_files(exp_dir, expdir.CONFIG_YAML)
    if configs:
        cfg = expdir.read_config(configs[0].parent)
        out["lambda"] = (cfg.get("loss") or {}).get("lambda")
        out["ctc_reduction"] = (cfg.get("loss") or {}).get("ctc_reduction")
        out["token_type"] = (cfg.get("data") or {}).get("token_type")
    folds_dir = expdir.experiment_folds_dir(exp_dir)
    protocol = expdir.read_protocol(folds_dir) if folds_dir is not None else {}
    if protocol:
        out["protocol"] = protocol.get("protocol")
    return out


def load_reference(path: str | Path) -> dict:
    """Published figures to show beside ours, matched by lambda (YAML: source, rows of lambda/wa/ua in %)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MtlserError(f"{path}: reference file not found")
    ref = yaml.safe_load(path.read_text()) or {}
    if not isinstance(ref.get("rows"), list) or not ref.get("source"):
        raise MtlserError(f"{path}: expected keys 'source' (who reported the figures) and 'rows' "
                          "(a list of {lambda, wa, ua} in percent), optionally 'setup' ({protocol, token_type})")
    rows = {}
    for i, row in enumerate(ref["rows"], 1):
        if not isinstance(row, dict) or "lambda" not in row:
            raise MtlserError(f"{path}: row {i} has no 'lambda'")
        rows[float(row["lambda"])] = {k: row.get(k) for k in ("wa", "ua")}
    setup = ref.get("setup") or {}
    if not isinstance(setup, dict) or set(setup) - {"protocol", "token_type"}:
        raise MtlserError(f"{path}: 'setup' may give protocol and token_type, got {setup!r}")
    return {"source": str(ref["source"]), "label": str(ref.get("label", "paper")), "rows": rows, "setup": setup}


def _paired(a: dict[str, float], b: dict[str, float]) -> dict:
    """b - a over the folds both have: mean difference, folds up/down, paired t-test and Wilcoxon p."""
    from scipy import stats

    common = sorted(set(a) & set(b))
    diff = np.array([b[k] - a[k] for k in common])
    out = {"folds": len(common), "diff": float(diff.mean()) if len(common) else float("nan"),
           "up": int((diff > 0).sum()), "down": int((diff < 0).sum()), "t_p": None, "wilcoxon_p": None}
    if len(common) > 1 and np.any(diff != 0):
        out["t_p"] = float(stats.ttest_rel([b[k] for k in common], [a[k] for k in common]).pvalue)
        out["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue)
    return out


def compare_experiments(exp_dirs: list[str | Path], reference: str | Path | None = None) -> dict:
    """Per experiment: WA/UA over folds, and paired differences per fold against the first experiment."""
    if not exp_dirs:
        raise MtlserError("compare: give at least one experiment dir")
    exps = []
    for d in exp_dirs:
        d = Path(d)
        path = d / expdir.RESULTS_JSON
        if not path.is_file():
            raise MtlserError(f"{path}: missing; aggregate {d} first (python -m mtlser.score aggregate)")
        r = json.loads(path.read_text())
        exps.append({"dir": d, "name": d.name, "results": r, **_exp_setup(d),
                     "folds": {f["fold"]: f for f in r["folds"]}})
    base = exps[0]
    for e in exps[1:]:
        for fold in set(e["folds"]) & set(base["folds"]):
            if e["folds"][fold]["speakers"] != base["folds"][fold]["speakers"]:
                raise MtlserError(
                    f"{e['dir']}: {fold} tests {e['folds'][fold]['speakers']} but {base['dir']} tests "
                    f"{base['folds'][fold]['speakers']} there; folds are paired by name, so compare experiments "
                    "of the same protocol and data")
    for e in exps[1:]:
        for metric in ("wa", "ua"):
            e[f"paired_{metric}"] = _paired({k: f[metric] for k, f in base["folds"].items()},
                                            {k: f[metric] for k, f in e["folds"].items()})
    ref = load_reference(reference) if reference else None
    if ref:
        for e in exps:
            # Published figures sit beside ours only in their own setup (a single-task run has no CTC targets).
            e["reference_mismatch"] = [
                k for k, v in ref["setup"].items()
                if e.get(k) is not None and e[k] != v and not (k == "token_type" and e.get("lambda") == 0)]
            known = e.get("lambda") is not None and not e["reference_mismatch"]
            e["reference"] = ref["rows"].get(float(e["lambda"])) if known else None
    return {"experiments": exps, "reference": ref}


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _p(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def compare(exp_dirs: list[str | Path], out: str | Path, reference: str | Path | None = None) -> str:
    """A markdown table of WA/UA across experiments (e.g. the lambda sweep, the paper's Table 3), each paired
    over folds with the first experiment (in a sweep, lambda 0: the single-task baseline); with a reference
    file, published figures for the same lambda in separate, labelled columns."""
    c = compare_experiments(exp_dirs, reference)
    exps, ref = c["experiments"], c["reference"]
    base = exps[0]
    n_folds = len(base["folds"])
    ref_cols = [f"{ref['label']} WA", f"{ref['label']} UA"] if ref else []
    head = (["experiment", "λ", "CTC targets (reduction)", "WA", "UA", "pooled WA / UA", "ΔWA", "ΔUA", "UA up / down",
             "paired t p (WA / UA)", "Wilcoxon p (WA / UA)"] + ref_cols)
    lines = [
        "<!-- Generated by `python -m mtlser.score compare`; edits are overwritten. -->",
        f"# Comparison over {n_folds} folds, paired with `{base['name']}`",
        "",
        "|" + "|".join(head) + "|",
        "|" + "---|" * len(head),
    ]
    for e in exps:
        r = e["results"]
        lam = "" if e.get("lambda") is None else f"{e['lambda']:g}"
        targets = "— (no CTC)" if e.get("lambda") == 0 else str(e.get("token_type") or "") + (
            f" ({e['ctc_reduction']})" if e.get("ctc_reduction") else "")
        cells = [e["name"], lam, targets,
                 f"{_pct(r['wa'])} ± {_pct(r['wa_std'])}", f"{_pct(r['ua'])} ± {_pct(r['ua_std'])}",
                 f"{_pct(r['pooled_wa'])} / {_pct(r['pooled_ua'])}"]
        if e is base:
            cells += ["(baseline)", "", "", "", ""]
        else:
            pw, pu = e["paired_wa"], e["paired_ua"]
            cells += [_pct(pw["diff"], True), _pct(pu["diff"], True), f"{pu['up']} / {pu['down']} of {pu['folds']}",
                      f"{_p(pw['t_p'])} / {_p(pu['t_p'])}", f"{_p(pw['wilcoxon_p'])} / {_p(pu['wilcoxon_p'])}"]
        if ref:
            rr = e.get("reference") or {}
            cells += [f"{rr['wa']:.1f}" if rr.get("wa") is not None else "—",
                      f"{rr['ua']:.1f}" if rr.get("ua") is not None else "—"]
        lines.append("|" + "|".join(cells) + "|")
    lines += [
        "",
        "WA = accuracy, UA = mean per-class recall, each computed per fold (test speaker) and given as mean ± "
        "std over folds (sample std); pooled = over all test utterances at once. Δ = mean over folds of "
        f"(experiment − `{base['name']}`), in points; UA up / down = folds where UA rose / fell. The paired "
        f"tests take each fold as one pair; with {n_folds} folds the two-sided Wilcoxon p cannot go below "
        f"{2 / 2 ** n_folds:.3g}. A difference holds when most folds move the same way and p is small.",
    ]
    if ref:
        lines += ["", f"Columns `{ref['label']} WA` and `{ref['label']} UA` are the published figures of "
                  f"{ref['source']}, matched by λ — not results of this run; — = not reported there. "
                  "The paper does not say how its CTC loss is reduced (sum or mean), which changes what a λ "
                  "means, so they are shown beside every reduction."]
        other = [e["name"] for e in exps if e.get("reference_mismatch")]
        if other:
            want = ", ".join(f"{k} {v}" for k, v in ref["setup"].items())
            lines[-1] += (f" They are left out for {', '.join(other)}: not the setup they were reported for "
                          f"({want}).")
    for metric in ("ua", "wa"):
        lines += ["", f"## {metric.upper()} per fold", "",
                  "|fold|test speakers|" + "|".join(e["name"] for e in exps) + "|",
                  "|---|---|" + "---|" * len(exps)]
        for fold in sorted(base["folds"]):
            row = [fold, " ".join(base["folds"][fold]["speakers"])]
            row += [_pct(e["folds"][fold][metric]) if fold in e["folds"] else "" for e in exps]
            lines.append("|" + "|".join(row) + "|")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out, text)
    return text
