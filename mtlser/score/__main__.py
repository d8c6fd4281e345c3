"""Stage 5: score one fold's decode dir, or aggregate the folds of an experiment.

Usage:
    python -m mtlser.score fold DECODE_DIR [--ref-dir DATA_DIR]
        -> DECODE_DIR/result.{txt,json}: WA, UA, per-class recall and precision,
           confusion matrix, CTC token error rate of the hypotheses
    python -m mtlser.score aggregate EXP_DIR [--decode-name decode_test]
        -> EXP_DIR/results.json, RESULTS.md, confusion.png, fusion_weights.png
    python -m mtlser.score compare EXP_DIR... --out FILE.md
        -> a WA/UA table across experiments with paired tests over folds

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


def _emotions_of(decode_dir: Path) -> list[str]:
    model_yaml = decode_dir.parent / "model.yaml"
    if model_yaml.is_file():
        import yaml

        return list(yaml.safe_load(model_yaml.read_text())["emotions"])
    from mtlser.data.datadir import EMOTIONS

    return list(EMOTIONS)


def score_fold(decode_dir: str | Path, ref_dir: str | Path | None = None, token_type: str = "phncls") -> dict:
    decode_dir = Path(decode_dir)
    if ref_dir is None:
        pointer = decode_dir / "data_dir"
        if not pointer.is_file():
            raise MtlserError(f"{decode_dir}: no data_dir file; pass --ref-dir (the data dir that was decoded)")
        ref_dir = Path(pointer.read_text().strip())
    ref_dir = Path(ref_dir)
    emotions = _emotions_of(decode_dir)
    ref = read_table(ref_dir / "utt2emo")
    hyp = read_table(decode_dir / "utt2emo_hyp")
    if set(ref) != set(hyp):
        missing = sorted(set(ref) - set(hyp))[:3]
        raise MtlserError(f"{decode_dir / 'utt2emo_hyp'}: utterances differ from {ref_dir / 'utt2emo'} "
                          f"(e.g. missing {missing}); rerun stage 4")
    index = {e: i for i, e in enumerate(emotions)}
    utts = sorted(ref)
    for u in utts:
        if hyp[u] not in index:
            raise MtlserError(f"{decode_dir / 'utt2emo_hyp'}: '{u}' has unknown label '{hyp[u]}'")
    cm = confusion_matrix([index[ref[u]] for u in utts], [index[hyp[u]] for u in utts], len(emotions))
    result = {
        "n": len(utts),
        "wa": weighted_accuracy(cm),
        "ua": unweighted_accuracy(cm),
        "recall": {e: _f(r) for e, r in zip(emotions, per_class_recall(cm))},
        "precision": {e: _f(p) for e, p in zip(emotions, per_class_precision(cm))},
        "emotions": emotions,
        "confusion": cm.tolist(),
        "speakers": sorted(set(read_table(ref_dir / "utt2spk").values())),
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
    lines = [
        f"decode dir: {decode_dir}",
        f"references: {ref_dir} ({len(utts)} utterances, speakers {' '.join(result['speakers'])})",
        f"WA {result['wa']:.4f}  UA {result['ua']:.4f}"
        + (f"  CTC TER {result['ctc_ter']:.4f}" if result.get("ctc_ter") is not None else ""),
        "",
        "class      recall  precision  n",
    ]
    for i, e in enumerate(emotions):
        lines.append(f"{e:8s}  {_fmt(result['recall'][e])}   {_fmt(result['precision'][e])}    {int(cm[i].sum())}")
    lines += ["", "confusion (rows = reference, columns = hypothesis):", "      " + " ".join(f"{e:>5s}" for e in emotions)]
    for i, e in enumerate(emotions):
        lines.append(f"{e:5s} " + " ".join(f"{int(c):5d}" for c in cm[i]))
    atomic_write_text(decode_dir / "result.txt", "\n".join(lines) + "\n")
    atomic_write_text(decode_dir / "result.json", json.dumps(result, indent=1) + "\n")
    logger.info("%s: WA %.4f UA %.4f (%d utterances)", decode_dir, result["wa"], result["ua"], len(utts))
    return result


def _f(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _fmt(x: float | None) -> str:
    return "  n/a " if x is None else f"{x:.4f}"


def aggregate(exp_dir: str | Path, decode_name: str = "decode_test") -> dict:
    from mtlser.score.report import write_report

    exp_dir = Path(exp_dir)
    folds = sorted(p for p in exp_dir.glob("fold[0-9]*") if p.is_dir())
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
        "folds": [{k: r.get(k) for k in ("fold", "speakers", "n", "wa", "ua", "recall", "ctc_ter", "best_epoch")}
                  for r in results],
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


def compare(exp_dirs: list[str | Path], out: str | Path) -> str:
    """A table of WA/UA across experiments (e.g. the lambda sweep, the paper's Table 3) with a paired
    test of each experiment's per-fold UA and WA against the first one's."""
    from scipy import stats

    rows = []
    for d in exp_dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise MtlserError(f"{path}: missing; run stage 5 for {d}")
        rows.append((Path(d), json.loads(path.read_text())))
    base_dir, base = rows[0]
    lines = [
        "<!-- Generated by `python -m mtlser.score compare`. -->",
        f"# Comparison (paired over folds against `{base_dir.name}`)",
        "",
        "|experiment|WA|UA|pooled WA|pooled UA|folds where UA > first|paired t-test p (UA)|Wilcoxon p (UA)|",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d, r in rows:
        cells = [d.name, f"{100 * r['wa']:.2f} ± {100 * r['wa_std']:.2f}", f"{100 * r['ua']:.2f} ± {100 * r['ua_std']:.2f}",
                 f"{100 * r['pooled_wa']:.2f}", f"{100 * r['pooled_ua']:.2f}"]
        if d == base_dir:
            cells += ["", "", ""]
        else:
            a = {f["fold"]: f["ua"] for f in base["folds"]}
            b = {f["fold"]: f["ua"] for f in r["folds"]}
            common = sorted(set(a) & set(b))
            diff = np.array([b[k] - a[k] for k in common])
            better = f"{int((diff > 0).sum())} of {len(common)}"
            if len(common) > 1 and np.any(diff != 0):
                t_p = stats.ttest_rel([b[k] for k in common], [a[k] for k in common]).pvalue
                w_p = stats.wilcoxon(diff).pvalue
                cells += [better, f"{t_p:.3f}", f"{w_p:.3f}"]
            else:
                cells += [better, "n/a", "n/a"]
        lines.append("|" + "|".join(cells) + "|")
    lines += ["", "WA/UA: mean ± std over folds. A difference holds across folds when most folds move the same "
              "way and the paired tests give small p (with 10 folds, p < 0.05)."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out, text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stage 5: scoring.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fold", help="score one decode dir")
    p.add_argument("decode_dir")
    p.add_argument("--ref-dir", default=None, help="reference data dir (default: the decode dir's data_dir file)")
    p.add_argument("--token-type", default="phncls")
    p = sub.add_parser("aggregate", help="aggregate the folds of an experiment dir")
    p.add_argument("exp_dir")
    p.add_argument("--decode-name", default="decode_test")
    p = sub.add_parser("compare", help="compare experiments (paired over folds against the first)")
    p.add_argument("exp_dirs", nargs="+")
    p.add_argument("--out", required=True, help="markdown file to write")
    args = parser.parse_args(argv)
    setup_logging()
    if args.cmd == "fold":
        score_fold(args.decode_dir, args.ref_dir, args.token_type)
    elif args.cmd == "aggregate":
        aggregate(args.exp_dir, args.decode_name)
    else:
        print(compare(args.exp_dirs, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
