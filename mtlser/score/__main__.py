"""Stage 5: score one fold's decode dir, or aggregate the folds of an experiment.

Usage:
    python -m mtlser.score fold DECODE_DIR [--ref-dir DATA_DIR]
        -> DECODE_DIR/result.{txt,json}: WA, UA, per-class recall and precision,
           confusion matrix, CTC token error rate of the hypotheses
    python -m mtlser.score aggregate EXP_DIR [--decode-name decode_test]
        -> EXP_DIR/results.json, RESULTS.md, confusion.png, fusion_weights.png
    python -m mtlser.score compare EXP_DIR... --out FILE.md [--reference PAPER.yaml]
        -> a WA/UA table across experiments (lambda, CTC targets) with paired tests over folds
           against the first, per-fold WA/UA, and published figures beside ours when given

WA and UA are computed per fold and averaged over folds (the paper's protocol);
the pooled figures over all test utterances are reported beside them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from mtlser.data.datadir import read_table
from mtlser.data.fold_names import FOLD_GLOB, fold_dirs
from mtlser.score import not_scored
from mtlser.score.metrics import (
    confusion_matrix,
    edit_distance,
    per_class_precision,
    per_class_recall,
    unweighted_accuracy,
    weighted_accuracy,
)
from mtlser.utils import MtlserError, run_main, setup_logging
from mtlser.utils.fileio import atomic_write_text

logger = logging.getLogger("mtlser.score")


def _emotions_of(decode_dir: Path, ref_dir: Path) -> list[str]:
    """The model's classes (model.yaml beside the decode dir), else the reference data dir's inventory."""
    model_yaml = decode_dir.parent / "model.yaml"
    if model_yaml.is_file():
        import yaml

        return list(yaml.safe_load(model_yaml.read_text())["emotions"])
    from mtlser.data.emotions import read_inventory

    return read_inventory(ref_dir)


def _token_type_of(decode_dir: Path) -> str:
    """The CTC target set the model was trained on (its config's data.token_type), for the token error rate."""
    config = decode_dir.parent / "config.yaml"
    if config.is_file():
        import yaml

        return str((yaml.safe_load(config.read_text()) or {}).get("data", {}).get("token_type", "phncls"))
    return "phncls"


def check_references(ref: dict[str, str], emotions: list[str], path: Path) -> None:
    """The reference labels can be scored: at least one utterance, every label in the model's emotion list."""
    if not ref:
        raise MtlserError(f"{path}: no utterances; an empty test set has no WA or UA. Check the fold's test "
                          "set (stage 2) or pass the --ref-dir that was decoded")
    index = set(emotions)
    for lineno, (u, label) in enumerate(ref.items(), 1):  # read_table keeps the file's order, one key a line
        if label not in index:
            raise MtlserError(f"{path}:{lineno}: '{u}' has reference label '{label}', which is not one of the "
                              f"model's emotions {emotions} (model.yaml); score with the data the model was "
                              "trained for, or merge/drop that label in stage 0")


def check_hypotheses(ref: dict[str, str], hyp: dict[str, str], ref_path: Path, hyp_path: Path) -> None:
    """Every reference utterance has a hypothesis and every hypothesis a reference; both sides named."""
    missing = sorted(set(ref) - set(hyp))
    extra = sorted(set(hyp) - set(ref))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} reference utterance(s) without a hypothesis, e.g. {missing[:3]}")
        if extra:
            parts.append(f"{len(extra)} hypothesis utterance(s) not in the references, e.g. {extra[:3]}")
        raise MtlserError(f"{hyp_path}: utterances differ from {ref_path}: {'; '.join(parts)}; rerun stage 4 "
                          "on that data dir (or pass the --ref-dir that was decoded)")


def absent_classes(cm: np.ndarray, emotions: list[str]) -> list[str]:
    """Classes with no reference utterance in a fold: no recall, and left out of its UA."""
    return [e for e, n in zip(emotions, cm.sum(axis=1)) if n == 0]


def score_fold(decode_dir: str | Path, ref_dir: str | Path | None = None, token_type: str | None = None) -> dict:
    decode_dir = Path(decode_dir)
    token_type = token_type or _token_type_of(decode_dir)
    if ref_dir is None:
        pointer = decode_dir / "data_dir"
        if not pointer.is_file():
            raise MtlserError(f"{decode_dir}: no data_dir file; pass --ref-dir (the data dir that was decoded)")
        ref_dir = Path(pointer.read_text().strip())
    ref_dir = Path(ref_dir)
    emotions = _emotions_of(decode_dir, ref_dir)
    ref = read_table(ref_dir / "utt2emo")
    hyp = read_table(decode_dir / "utt2emo_hyp")
    errors = not_scored.read_utt2error(decode_dir, hyp)  # utterances stage 4 could not decode
    check_references(ref, emotions, ref_dir / "utt2emo")
    # An utterance stage 4 listed in utt2error counts as answered: it is reported, not scored.
    check_hypotheses(ref, {**hyp, **errors}, ref_dir / "utt2emo", decode_dir / "utt2emo_hyp")
    index = {e: i for i, e in enumerate(emotions)}
    utts = sorted(u for u in ref if u not in errors)
    if not utts:
        raise MtlserError(f"{decode_dir}: none of the {len(ref)} test utterances could be decoded (see "
                          f"{decode_dir / not_scored.UTT2ERROR}); nothing to score")
    for lineno, (u, label) in enumerate(hyp.items(), 1):
        if label not in index:
            raise MtlserError(f"{decode_dir / 'utt2emo_hyp'}:{lineno}: '{u}' has unknown label '{label}', not one "
                              f"of the model's emotions {emotions}; rerun stage 4 with this model")
    cm = confusion_matrix([index[ref[u]] for u in utts], [index[hyp[u]] for u in utts], len(emotions))
    result = {
        "n": len(utts),
        "wa": weighted_accuracy(cm),
        "ua": unweighted_accuracy(cm),
        "recall": {e: _f(r) for e, r in zip(emotions, per_class_recall(cm))},
        "precision": {e: _f(p) for e, p in zip(emotions, per_class_precision(cm))},
        "emotions": emotions,
        "confusion": cm.tolist(),
        "absent_classes": absent_classes(cm, emotions),
        "speakers": sorted(set(read_table(ref_dir / "utt2spk").values())),
        "not_scored": len(errors),
        "not_scored_utts": errors,
    }
    text_hyp, text_ref = decode_dir / "text_hyp", ref_dir / f"text_{token_type}"
    if text_hyp.is_file() and text_ref.is_file():
        hyp_t = read_table(text_hyp, allow_empty_value=True)
        ref_t = read_table(text_ref, allow_empty_value=True)
        errs = toks = 0
        for u in utts:
            r = ref_t.get(u, "").split()
            if not r:
                continue  # no phones (non-verbal only): nothing to recognise
            errs += edit_distance(r, hyp_t.get(u, "").split())
            toks += len(r)
        result["ctc_ter"] = errs / toks if toks else None
        result["ctc_ref_tokens"] = toks
        result["token_type"] = token_type
    lines = [
        f"decode dir: {decode_dir}",
        f"references: {ref_dir} ({len(utts)} utterances, speakers {' '.join(result['speakers'])})",
        f"WA {result['wa']:.4f}  UA {result['ua']:.4f}"
        + (f"  CTC TER {result['ctc_ter']:.4f} ({token_type})" if result.get("ctc_ter") is not None else ""),
        *not_scored.header_line(errors, len(ref)),
    ]
    if result["absent_classes"]:
        lines.append(f"UA over {len(emotions) - len(result['absent_classes'])} of {len(emotions)} classes: "
                     f"{' '.join(result['absent_classes'])} absent from this fold's references (no recall)")
    lines += ["", "class      recall  precision  n"]
    for i, e in enumerate(emotions):
        lines.append(f"{e:8s}  {_fmt(result['recall'][e])}   {_fmt(result['precision'][e])}    {int(cm[i].sum())}"
                     + ("   absent from the references" if e in result["absent_classes"] else ""))
    lines += ["", "confusion (rows = reference, columns = hypothesis):", "      " + " ".join(f"{e:>5s}" for e in emotions)]
    for i, e in enumerate(emotions):
        lines.append(f"{e:5s} " + " ".join(f"{int(c):5d}" for c in cm[i]))
    lines += not_scored.listing(errors)
    atomic_write_text(decode_dir / "result.txt", "\n".join(lines) + "\n")
    atomic_write_text(decode_dir / "result.json", json.dumps(result, indent=1, allow_nan=False) + "\n")
    logger.info("%s: WA %.4f UA %.4f (%d utterances)", decode_dir, result["wa"], result["ua"], len(utts))
    if errors:
        logger.warning("%s: %d of %d test utterances were not scored (stage 4 could not decode them): %s", decode_dir,
                       len(errors), len(ref), " ".join(sorted(errors)[:10]) + (" ..." if len(errors) > 10 else ""))
    return result


def _f(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _fmt(x: float | None) -> str:
    return "  n/a " if x is None else f"{x:.4f}"


def aggregate(exp_dir: str | Path, decode_name: str = "decode_test") -> dict:
    from mtlser.score.report import write_report

    exp_dir = Path(exp_dir)
    folds = fold_dirs(exp_dir)
    results = []
    for fold in folds:
        path = fold / decode_name / "result.json"
        if not path.is_file():
            raise MtlserError(f"{path}: missing; run stage 5 scoring for {fold.name} (or stages 3-4 first)")
        r = json.loads(path.read_text())
        r["fold"] = fold.name
        best = fold / "best.json"
        if best.is_file():
            r["best_epoch"] = json.loads(best.read_text()).get("epoch")
        results.append(r)
    if not results:
        raise MtlserError(f"{exp_dir}: no fold*/ dirs; run stages 3-5 first")
    emotions = results[0]["emotions"]
    for r in results[1:]:
        if r["emotions"] != emotions:
            raise MtlserError(f"{exp_dir}: {r['fold']} scores emotions {r['emotions']} but {results[0]['fold']} "
                              f"{emotions}; folds of one experiment share one inventory: rerun stages 2-5")
    cm = np.sum([np.array(r["confusion"]) for r in results], axis=0)
    was = np.array([r["wa"] for r in results])
    uas = np.array([r["ua"] for r in results])
    summary = {
        "wa": float(was.mean()),
        "ua": float(uas.mean()),
        "wa_std": float(was.std(ddof=1)) if len(was) > 1 else 0.0,
        "ua_std": float(uas.std(ddof=1)) if len(uas) > 1 else 0.0,
        "pooled_wa": weighted_accuracy(cm),
        "pooled_ua": unweighted_accuracy(cm),
        "n": int(cm.sum()),
        "num_folds": len(results),
        "emotions": emotions,
        "confusion": cm.tolist(),
        "folds": [{k: r.get(k) for k in ("fold", "speakers", "n", "wa", "ua", "recall", "ctc_ter", "best_epoch",
                                         "not_scored")}
                  for r in results],
        "not_scored": int(sum(r.get("not_scored", 0) for r in results)),
    }
    ters = [r["ctc_ter"] for r in results if r.get("ctc_ter") is not None]
    if ters:
        summary["ctc_ter"] = float(np.mean(ters))
    atomic_write_text(exp_dir / "results.json", json.dumps(summary, indent=1) + "\n")
    write_report(exp_dir, summary)
    logger.info("%s: WA %.4f +- %.4f, UA %.4f +- %.4f over %d folds (pooled WA %.4f UA %.4f, %d utterances)",
                exp_dir, summary["wa"], summary["wa_std"], summary["ua"], summary["ua_std"], len(results),
                summary["pooled_wa"], summary["pooled_ua"], summary["n"])
    return summary


def _exp_setup(exp_dir: Path) -> dict:
    """What distinguishes experiments in a comparison: lambda and CTC targets, from fold01's resolved config."""
    import yaml

    out: dict = {}
    configs = sorted(exp_dir.glob(f"{FOLD_GLOB}/config.yaml"))
    if configs:
        cfg = yaml.safe_load(configs[0].read_text()) or {}
        out["lambda"] = (cfg.get("loss") or {}).get("lambda")
        out["ctc_reduction"] = (cfg.get("loss") or {}).get("ctc_reduction")
        out["token_type"] = (cfg.get("data") or {}).get("token_type")
    pointers = sorted(exp_dir.glob(f"{FOLD_GLOB}/decode_test/data_dir"))
    if pointers:
        protocol = Path(pointers[0].read_text().strip()).parent.parent / "protocol"
        if protocol.is_file():
            out["protocol"] = read_table(protocol).get("protocol")
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
        path = d / "results.json"
        if not path.is_file():
            raise MtlserError(f"{path}: missing; run stage 5 for {d}")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stage 5: scoring.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fold", help="score one decode dir")
    p.add_argument("decode_dir")
    p.add_argument("--ref-dir", default=None, help="reference data dir (default: the decode dir's data_dir file)")
    p.add_argument("--token-type", default=None,
                   help="CTC target set of the references, text_<set> (default: the model's data.token_type)")
    p = sub.add_parser("aggregate", help="aggregate the folds of an experiment dir")
    p.add_argument("exp_dir")
    p.add_argument("--decode-name", default="decode_test")
    p = sub.add_parser("compare", help="compare experiments (paired over folds against the first)")
    p.add_argument("exp_dirs", nargs="+", help="experiment dirs; the first is the baseline of the paired tests")
    p.add_argument("--out", required=True, help="markdown file to write")
    p.add_argument("--reference", default=None,
                   help="YAML of published figures to show beside ours, matched by lambda "
                        "(e.g. egs/iemocap/local/paper_table3.yaml)")
    args = parser.parse_args(argv)
    setup_logging()
    if args.cmd == "fold":
        score_fold(args.decode_dir, args.ref_dir, args.token_type)
    elif args.cmd == "aggregate":
        aggregate(args.exp_dir, args.decode_name)
    else:
        print(compare(args.exp_dirs, args.out, args.reference))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
