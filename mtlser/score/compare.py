"""Compare experiments: a verdict per metric against the first experiment (paired by seed and fold,
mtlser.score.stats), a WA/UA table (lambda, CTC targets) with the paired tests, per-fold WA/UA, and
published figures beside ours when a reference file is given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mtlser import expdir
from mtlser.score import stats
from mtlser.score.runs import run_key, run_value, runs_of, seed_group_member
from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_write_text


def _exp_setup(exp_dir: Path) -> dict:
    """What distinguishes experiments in a comparison: lambda and CTC targets, from fold01's resolved config."""
    out: dict = {}
    exp_dir = seed_group_member(exp_dir)
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


# Figures a comparison pairs when both experiments have them in every run (macro-F1, CCC: other heads' outputs;
# ccc is the mean CCC over the attributes, mtlser.score.runs.run_value).
COMPARED_METRICS = ("wa", "ua", "macro_f1", "ccc")


def _paired_runs(base: dict, e: dict) -> tuple[dict, dict, str]:
    """The two experiments' runs keyed by (seed, fold) for pairing, and a note when seeds could not pair.

    Runs pair when the same seed trained both on the same fold. Two one-seed experiments of different
    seeds still pair by fold (the test speakers are the same; the seed is then part of the difference)."""
    a = {run_key(r): r for r in runs_of(base["results"])}
    b = {run_key(r): r for r in runs_of(e["results"])}
    sa, sb = {k[0] for k in a}, {k[0] for k in b}
    if not set(a) & set(b) and len(sa) == 1 and len(sb) == 1:
        seed = next(iter(sb))
        a = {(seed, k[1]): r for k, r in a.items()}
        return a, b, (f"seeds differ ({next(iter(sa))} and {seed}): paired by fold only, so the seed is part "
                      "of each difference")
    return a, b, ""


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
        a, b, e["pairing_note"] = _paired_runs(base, e)
        for metric in COMPARED_METRICS:
            if all(run_value(r, metric) is not None for r in [*a.values(), *b.values()]):
                e[f"paired_{metric}"] = stats.paired({k: run_value(r, metric) for k, r in a.items()},
                                                     {k: run_value(r, metric) for k, r in b.items()})
        # CCC is a correlation (-1..1), quoted as it is; the others in percent.
        e["verdicts"] = [stats.verdict("mean CCC" if m == "ccc" else m.upper() if m != "macro_f1" else "macro-F1",
                                       e[f"paired_{m}"], scale=1.0 if m == "ccc" else 100.0)
                         for m in COMPARED_METRICS if f"paired_{m}" in e]
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


def verdict_lines(c: dict) -> list[str]:
    """One quotable line per experiment against the first: each metric's difference, 95 % CI and verdict."""
    base = c["experiments"][0]
    return [f"{e['name']} − {base['name']}: " + "; ".join(e["verdicts"])
            + (f" ({e['pairing_note']})" if e.get("pairing_note") else "") for e in c["experiments"][1:]]


def compare(exp_dirs: list[str | Path], out: str | Path | None = None, reference: str | Path | None = None,
            verdicts_only: bool = False) -> str:
    """A markdown table of WA/UA across experiments (e.g. the lambda sweep, the paper's Table 3), each paired
    by (seed, fold) with the first experiment (in a sweep, lambda 0: the single-task baseline), led by the
    verdicts; with a reference file, published figures for the same lambda in separate, labelled columns.
    Written to ``out`` when given; returned, or with ``verdicts_only`` only the verdict lines."""
    c = compare_experiments(exp_dirs, reference)
    text = compare_table(c)
    if out is not None:
        atomic_write_text(out, text)
    return "\n".join(verdict_lines(c)) if verdicts_only else text


def compare_table(c: dict) -> str:
    """compare_experiments' answer as markdown: verdicts, the table, notes, per-fold figures."""
    exps, ref = c["experiments"], c["reference"]
    base = exps[0]
    n_folds = len(base["folds"])
    n_seeds = base["results"].get("num_seeds", 1)
    ref_cols = [f"{ref['label']} WA", f"{ref['label']} UA"] if ref else []
    head = (["experiment", "λ", "CTC targets (reduction)", "WA", "UA", "pooled WA / UA", "ΔWA", "ΔUA", "UA up / down",
             "paired t p (WA / UA)", "Wilcoxon p (WA / UA)", "permutation p (WA / UA)", "ΔUA 95 % CI"] + ref_cols)
    rules = sorted({e["paired_ua"]["ci_rule"] for e in exps[1:]})
    lines = [
        "<!-- Generated by `python -m mtlser.score compare`; edits are overwritten. -->",
        f"# Comparison over {n_folds} fold{'s' if n_folds != 1 else ''} × {n_seeds} "
        f"seed{'s' if n_seeds != 1 else ''}, paired with `{base['name']}`",
        "",
        *(f"- {v}" for v in verdict_lines(c)),
        "",
        f"A difference is *shown* when its 95 % CI excludes zero; CI of the mean difference: {'; '.join(rules)}."
        if rules else "One experiment: nothing to compare it with.",
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
                 _with_seed_std(r, "wa"), _with_seed_std(r, "ua"),
                 f"{_pct(r['pooled_wa'])} / {_pct(r['pooled_ua'])}"]
        if e is base:
            cells += ["(baseline)", "", "", "", "", "", ""]
        else:
            pw, pu = e["paired_wa"], e["paired_ua"]
            ci = "n/a" if pu["ci"] is None else f"[{_pct(pu['ci'][0], True)}, {_pct(pu['ci'][1], True)}]"
            cells += [_pct(pw["diff"], True), _pct(pu["diff"], True), f"{pu['up']} / {pu['down']} of {pu['pairs']}",
                      f"{_p(pw['t_p'])} / {_p(pu['t_p'])}", f"{_p(pw['wilcoxon_p'])} / {_p(pu['wilcoxon_p'])}",
                      f"{_p(pw['permutation_p'])} / {_p(pu['permutation_p'])}", ci]
        if ref:
            rr = e.get("reference") or {}
            cells += [f"{rr['wa']:.1f}" if rr.get("wa") is not None else "—",
                      f"{rr['ua']:.1f}" if rr.get("ua") is not None else "—"]
        lines.append("|" + "|".join(cells) + "|")
    lines += [
        "",
        "WA = accuracy, UA = mean per-class recall, each computed per fold (test speaker) and given as mean ± "
        "std over folds (sample std; with seeds, ± the std of the per-seed means after it); pooled = over all "
        "test utterances at once. Δ = mean over (seed, fold) pairs of "
        f"(experiment − `{base['name']}`), in points; UA up / down = pairs where UA rose / fell. The paired "
        f"tests take each (seed, fold) as one pair; with {n_folds * n_seeds} pairs the two-sided Wilcoxon p "
        f"cannot go below {2 / 2 ** (n_folds * n_seeds):.3g}. The permutation p is exact (every sign flip of the "
        f"differences) up to {stats.MAX_EXACT_PERMUTATION_PAIRS} pairs, n/a beyond.",
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
    return "\n".join(lines) + "\n"


def _with_seed_std(r: dict, metric: str) -> str:
    seed_std = r.get(f"{metric}_seed_std")
    return f"{_pct(r[metric])} ± {_pct(r[f'{metric}_std'])}" + ("" if seed_std is None else f" ± {_pct(seed_std)}")
