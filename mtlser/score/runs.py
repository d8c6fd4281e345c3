"""An experiment's figures over its (seed, fold) runs: one seed's folds, or several seeds' experiments.

A run is one fold's scored test set (its result.json) with the seed the model was trained with. The
summary keeps the figures RESULTS.md always gave (mean, sample std over folds, pooled) and adds how
much of them is the seed and the speakers (mtlser.score.stats), chance per fold, and folds that are off.
Macro-/weighted F1 and the attribute scores (CCC, Pearson r, MAE per attribute and their means) get the same
mean, std over folds, std over seeds and CI where every run has them (older result.json files lack them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mtlser import expdir
from mtlser.score import stats
from mtlser.score.attributes import f1_scores
from mtlser.score.metrics import unweighted_accuracy, weighted_accuracy
from mtlser.utils import MtlserError

# What each run keeps of its fold's result.json in results.json.
RUN_KEYS = ("fold", "seed", "speakers", "n", "wa", "ua", "recall", "ctc_ter", "best_epoch", "not_scored",
            "confusion", "macro_f1", "weighted_f1", "attributes")
METRICS = ("wa", "ua")
# Figures of the class head beside WA and UA, summarised the same way when every run has them.
F1_METRICS = ("macro_f1", "weighted_f1")
# What each attribute is scored with (mtlser.score.attributes), per attribute and as the mean over them.
ATTR_METRICS = ("ccc", "pearson", "mae")


def seed_group_member(exp_dir: str | Path) -> Path:
    """A seed group's first member experiment (where its setup is read), else ``exp_dir`` itself."""
    exp_dir = Path(exp_dir)
    try:
        members = json.loads((exp_dir / expdir.RESULTS_JSON).read_text()).get("members")
    except (OSError, ValueError):
        return exp_dir
    return Path(members[0]) if members else exp_dir


def run_key(run: dict) -> tuple:
    return run.get("seed"), run["fold"]


def run_value(run: dict, metric: str) -> float | None:
    """One figure of a run: wa, ua, macro_f1, weighted_f1 or ccc (the mean CCC over its attributes)."""
    if metric == "ccc":
        return (run.get("attributes") or {}).get("mean_ccc")
    return run.get(metric)


def runs_of(results: dict) -> list[dict]:
    """The (seed, fold) runs of a results.json: a seed group's ``runs``, else one seed's ``folds``."""
    if "runs" in results:
        return results["runs"]
    return [{**f, "seed": f.get("seed", results.get("seed"))} for f in results["folds"]]


def summarise_runs(runs: list[dict]) -> dict:
    """results.json's figures over runs of one emotion inventory (checked by the caller)."""
    if not runs:
        raise MtlserError("no scored runs to summarise")
    seeds = sorted({r.get("seed") for r in runs}, key=str)
    if not runs[0].get("emotions", True) or any(r.get("confusion") is None for r in runs):
        return _attributes_only(runs, seeds)
    cm = np.sum([np.array(r["confusion"]) for r in runs], axis=0)
    summary: dict = {}
    f1s = [m for m in F1_METRICS if all(r.get(m) is not None for r in runs)]
    for m in (*METRICS, *f1s):
        s = stats.summarise({run_key(r): r[m] for r in runs})
        summary[m] = s["mean"]
        summary[f"{m}_std"] = s["fold_std"] if s["fold_std"] is not None else 0.0
        summary[f"{m}_seed_std"] = s["seed_std"]
        summary[f"{m}_ci"] = s["ci"]
        summary["ci_rule"] = s["ci_rule"]
    summary.update(pooled_wa=weighted_accuracy(cm), pooled_ua=unweighted_accuracy(cm))
    if f1s:
        _, summary["pooled_macro_f1"], summary["pooled_weighted_f1"] = f1_scores(cm)
    attrs = summarise_attributes(runs)
    if attrs is not None:
        summary["attributes"] = attrs
    first = [r for r in runs if r.get("seed") == seeds[0]]
    # Test utterances of one seed's folds: every seed tests the same ones.
    summary["n"] = int(sum(np.sum(r["confusion"]) for r in first))
    summary.update(num_folds=len({r["fold"] for r in runs}), num_seeds=len(seeds), seeds=seeds,
                   confusion=cm.tolist())
    folds = fold_means(runs)
    summary["chance"] = {m: float(np.mean([f["chance"][m] for f in folds])) for m in METRICS}
    summary["off_folds"] = stats.off_folds({f["fold"]: f["ua"] for f in folds})
    summary["fold_means"] = folds
    summary["not_scored"] = int(sum(r.get("not_scored", 0) or 0 for r in first))
    ters = [r["ctc_ter"] for r in runs if r.get("ctc_ter") is not None]
    if ters:
        summary["ctc_ter"] = float(np.mean(ters))
    return summary


def _attributes_only(runs: list[dict], seeds: list) -> dict:
    """results.json's figures of a model with no classes: the attribute scores over the runs, no WA/UA."""
    attrs = summarise_attributes(runs)
    if attrs is None:
        raise MtlserError("runs with neither a confusion matrix (classes) nor attribute scores: score the folds "
                          "again (python -m mtlser.score fold)")
    first = [r for r in runs if r.get("seed") == seeds[0]]
    folds = []
    for fold in sorted({r["fold"] for r in runs}):
        rs = [r for r in runs if r["fold"] == fold]
        v = np.array([run_value(r, "ccc") for r in rs])
        folds.append({"fold": fold, "speakers": rs[0].get("speakers", []), "seeds": len(rs), "n": rs[0].get("n"),
                      "ccc": float(v.mean()), "ccc_seed_std": float(v.std(ddof=1)) if len(v) > 1 else None})
    return {"ci_rule": stats.interval_rule(len(seeds), len({r["fold"] for r in runs})),
            "n": int(sum(r.get("n") or 0 for r in first)), "num_folds": len({r["fold"] for r in runs}),
            "num_seeds": len(seeds), "seeds": seeds, "attributes": attrs, "off_folds": [], "fold_means": folds,
            "not_scored": int(sum(r.get("not_scored", 0) or 0 for r in first))}


def summarise_attributes(runs: list[dict]) -> dict | None:
    """Per attribute and metric (and the means over attributes): mean, fold std, seed std and CI over the runs;
    None unless every run scored the same attributes."""
    scored = [r.get("attributes") for r in runs]
    if not scored or any(a is None for a in scored):
        return None
    names = scored[0]["attributes"]
    if any(a["attributes"] != names for a in scored):
        raise MtlserError(f"runs score attributes {sorted({' '.join(a['attributes']) for a in scored})}; the runs "
                          "of one experiment share one attribute declaration: decode and score them again")

    def figures(values: dict) -> dict:
        s = stats.summarise(values)
        return {"mean": s["mean"], "std": s["fold_std"] if s["fold_std"] is not None else 0.0,
                "seed_std": s["seed_std"], "ci": s["ci"]}

    out: dict = {"attributes": names}
    for m in ATTR_METRICS:
        out[m] = {a: figures({run_key(r): r["attributes"][m][a] for r in runs}) for a in names}
        out[f"mean_{m}"] = figures({run_key(r): r["attributes"][f"mean_{m}"] for r in runs})
    return out


def fold_means(runs: list[dict]) -> list[dict]:
    """Per fold over its seeds: WA/UA means (and the seeds' std), summed confusion, class counts, chance."""
    by_fold: dict[str, list[dict]] = {}
    for r in runs:
        by_fold.setdefault(r["fold"], []).append(r)
    out = []
    for fold in sorted(by_fold):
        rs = by_fold[fold]
        cm = np.sum([np.array(r["confusion"]) for r in rs], axis=0)
        one = np.array(rs[0]["confusion"])  # the class counts of one seed's test set
        f = {"fold": fold, "speakers": rs[0].get("speakers", []), "seeds": len(rs),
             "class_counts": one.sum(axis=1).astype(int).tolist(), "confusion": cm.tolist(),
             "chance": stats.chance(one)}
        for m in (*METRICS, *F1_METRICS, "ccc"):
            vals = [run_value(r, m) for r in rs]
            if any(x is None for x in vals):
                continue  # macro-F1 or CCC of older results, or a model without an attribute head
            v = np.array(vals)
            f[m] = float(v.mean())
            f[f"{m}_seed_std"] = float(v.std(ddof=1)) if len(v) > 1 else None
        out.append(f)
    return out


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def _ci(ci) -> str:
    return "—" if not ci else f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def figure_lines(summary: dict) -> list[str]:
    """RESULTS.md's headline table: mean, the two std's, the CI and chance beside WA and UA."""
    seeds = summary.get("num_seeds", 1)
    over = f"{summary['num_folds']} folds × {seeds} seed{'s' if seeds != 1 else ''}"
    seed_note = ("std over seeds = sample std of the per-seed means (how far a rerun with another seed moves "
                 "the figure)" if seeds > 1 else
                 f"std over seeds: — (one seed, {summary.get('seed')}: how far a rerun moves the figure is not "
                 "measured; ser.sh --seeds \"0 1 2\" measures it)")
    lines = [
        f"WA = accuracy of a fold, UA = mean per-class recall of a fold (classes present in it); over {over}. "
        "Mean over folds (over seeds, the mean of the per-seed means), the paper's protocol; std over folds = "
        "sample std over folds" + (" within a seed (root mean of the seeds' variances)" if seeds > 1 else "")
        + f"; {seed_note}; 95 % CI of the mean: {summary['ci_rule']}; pooled = over all test utterances at "
        "once; chance = mean over folds of each fold's chance level (UA 1/K of the K classes in its test set, "
        "WA its majority class's share).",
        "",
        "|" + "|".join(FIGURE_HEAD) + "|",
        "|" + "---|" * len(FIGURE_HEAD),
    ]
    lines += ["|" + "|".join(row) + "|" for row in figure_rows(summary)]
    return lines


def f1_note(summary: dict) -> list[str]:
    """What macro-F1 and weighted F1 are, under the headline table (when it has them)."""
    if not any(m in summary for m in F1_METRICS):
        return []
    return ["", "macro-F1 = mean F1 over the classes present in a fold's references (the challenges' class metric), "
            "weighted F1 = F1 weighted by their reference counts; pooled from the summed confusion."]


METRIC_NAMES = {"macro_f1": "macro-F1", "weighted_f1": "weighted F1"}


def attribute_lines(summary: dict) -> list[str]:
    """RESULTS.md's attribute table: CCC, Pearson r and MAE per attribute and their means over the attributes,
    each with the spreads and CI of the class figures (no pooled value: each fold's CCC is over its own test set)."""
    attrs = summary.get("attributes")
    if not attrs:
        return []

    def num(x) -> str:
        return "—" if x is None else f"{x:.4f}"

    lines = ["", "### Attributes", "",
             "CCC (Lin's concordance), Pearson r and MAE (on the declared scale) of each fold's test set, "
             "mean over folds with the same std's and 95 % CI as above; mean = the mean over the attributes "
             "within each fold first.", "",
             "|attribute|metric|mean over folds|std over folds|std over seeds|95 % CI|", "|---|---|---|---|---|---|"]
    for a in [*attrs["attributes"], None]:
        for m in ATTR_METRICS:
            f = attrs[f"mean_{m}"] if a is None else attrs[m][a]
            ci = "—" if not f["ci"] else f"[{f['ci'][0]:.4f}, {f['ci'][1]:.4f}]"
            lines.append(f"|{a or 'mean'}|{'r' if m == 'pearson' else m.upper()}|{num(f['mean'])}|{num(f['std'])}|"
                         f"{num(f['seed_std'])}|{ci}|")
    return lines


FIGURE_HEAD = ("metric", "mean over folds", "std over folds", "pooled", "std over seeds", "95 % CI", "chance")


def figure_rows(summary: dict) -> list[list[str]]:
    """The headline table's rows (WA, UA, and macro-/weighted F1 where every run has them), in percent;
    RESULTS.md and the console show the same cells."""
    return [[METRIC_NAMES.get(m, m.upper()), _pct(summary[m]), _pct(summary[f"{m}_std"]),
             _pct(summary[f"pooled_{m}"]), _pct(summary.get(f"{m}_seed_std")), _ci(summary.get(f"{m}_ci")),
             _pct((summary.get("chance") or {}).get(m))]
            for m in (*METRICS, *(m for m in F1_METRICS if m in summary))]


def console_lines(summary: dict) -> list[str]:
    """The headline table for the terminal (stage 5): its header, then its rows (figure_rows), columns aligned."""
    rows = [list(FIGURE_HEAD), *figure_rows(summary)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(FIGURE_HEAD))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def seed_lines(summary: dict) -> list[str]:
    """A seed group's per-seed and per-fold tables (a one-seed experiment's per-fold table is the report's)."""
    runs = summary["runs"]
    lines = ["", "### Per seed (mean over its folds)", "", "|seed|experiment|folds|WA|UA|", "|---|---|---|---|---|"]
    for seed in summary["seeds"]:
        rs = [r for r in runs if r.get("seed") == seed]
        lines.append(f"|{seed}|{rs[0].get('experiment', '')}|{len(rs)}|{_pct(np.mean([r['wa'] for r in rs]))}|"
                     f"{_pct(np.mean([r['ua'] for r in rs]))}|")
    # Macro-F1 and mean CCC (new columns, at the end) where every fold has them.
    extra = [(m, name) for m, name in (("macro_f1", "macro-F1"), ("ccc", "mean CCC"))
             if all(m in f for f in summary["folds"])]
    lines += ["", "### Per fold (over seeds: mean ± std)", "",
              "|fold|test speakers|n|WA|UA|chance WA / UA|" + "|".join(f"UA seed {s}" for s in summary["seeds"]) + "|"
              + "".join(f"{name}|" for _, name in extra),
              "|---|---|---|---|---|---|" + "---|" * (len(summary["seeds"]) + len(extra))]
    for f in summary["folds"]:
        per_seed = {r.get("seed"): r["ua"] for r in runs if r["fold"] == f["fold"]}
        ext = "".join((f"{_pct(f[m])} ± {_pct(f[f'{m}_seed_std'])}|" if m == "macro_f1" else
                       f"{f[m]:.4f} ± {'—' if f[f'{m}_seed_std'] is None else format(f[f'{m}_seed_std'], '.4f')}|")
                      for m, _ in extra)
        lines.append(
            f"|{f['fold']}|{' '.join(f['speakers'])}|{sum(f['class_counts'])}|"
            f"{_pct(f['wa'])} ± {_pct(f['wa_seed_std'])}|{_pct(f['ua'])} ± {_pct(f['ua_seed_std'])}|"
            f"{_pct(f['chance']['wa'])} / {_pct(f['chance']['ua'])}|"
            + "|".join(_pct(per_seed.get(s)) for s in summary["seeds"]) + "|" + ext)
    return lines


def off_fold_lines(summary: dict, emotions: list[str]) -> list[str]:
    """A section per fold whose UA is off (mtlser.score.stats.off_folds): speakers, class counts, confusion."""
    off = summary.get("off_folds") or []
    if not off:
        return []
    folds = {f["fold"]: f for f in fold_means(runs_of(summary))}
    lines = ["", "### Folds that are off",
             "", f"UA more than 2 std below the mean of the other folds (each fold against the rest; "
             f"{'mean over seeds' if summary.get('num_seeds', 1) > 1 else 'one seed'}). Few utterances of a class, "
             "or one class taking every hypothesis, point at the data; a spread over seeds at the run."]
    for name in off:
        f = folds[name]
        counts = ", ".join(f"{e} {n}" for e, n in zip(emotions, f["class_counts"]))
        lines += ["", f"**{name}** (test speakers {' '.join(f['speakers'])}): UA {_pct(f['ua'])}"
                  + (f" ± {_pct(f['ua_seed_std'])} over seeds" if f.get("ua_seed_std") is not None else "")
                  + f", WA {_pct(f['wa'])}; chance UA {_pct(f['chance']['ua'])}, WA {_pct(f['chance']['wa'])}; "
                  f"class counts: {counts}"
                  + (f"; confusion summed over its {f['seeds']} seeds" if f["seeds"] > 1 else ""),
                  "", "|ref \\ hyp|" + "|".join(emotions) + "|", "|---|" + "---|" * len(emotions)]
        for e, row in zip(emotions, f["confusion"]):
            lines.append(f"|{e}|" + "|".join(str(int(c)) for c in row) + "|")
    return lines


def test_set_lines(summary: dict) -> list[str]:
    """RESULTS.md's table of the fixed protocol's test sets (test, test2, ...), each scored on its own."""
    further = summary.get("test_sets") or {}
    if not further:
        return []
    lines = ["", "### Test sets", "",
             f"Each test set of the fixed protocol scored on its own, mean over {summary['num_folds']} "
             f"fold{'s' if summary['num_folds'] != 1 else ''}; the figures above are `test`'s. Per fold: "
             "foldNN/<decode dir>/result.txt.", "",
             "|test set|decode dir|n|WA|UA|macro-F1|weighted F1|mean CCC|", "|---|---|---|---|---|---|---|---|"]
    for name, s in [("test", {**summary, "decode_name": "decode_test"}), *further.items()]:
        ccc = (s.get("attributes") or {}).get("mean_ccc")
        lines.append(f"|{name}|{s['decode_name']}|{s['n']}|{_pct(s.get('wa'))}|{_pct(s.get('ua'))}|"
                     f"{_pct(s.get('macro_f1'))}|{_pct(s.get('weighted_f1'))}|"
                     f"{'—' if ccc is None else format(ccc['mean'], '.4f')}|")
    return lines
