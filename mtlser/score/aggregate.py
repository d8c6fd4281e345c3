"""Aggregate the folds of an experiment: WA and UA per fold, averaged over folds (the paper's protocol),
the pooled figures beside them, into the experiment dir's results.json and RESULTS.md."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mtlser import expdir
from mtlser.data.fold_names import fold_dirs
from mtlser.score.metrics import unweighted_accuracy, weighted_accuracy
from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_write_text

logger = logging.getLogger("mtlser.score")


def aggregate(exp_dir: str | Path, decode_name: str = expdir.DECODE_TEST) -> dict:
    from mtlser.score.report import write_report

    exp_dir = Path(exp_dir)
    folds = fold_dirs(exp_dir)
    results = []
    for fold in folds:
        path = fold / decode_name / expdir.RESULT_JSON
        if not path.is_file():
            raise MtlserError(f"{path}: missing; score {fold.name} (python -m mtlser.score fold; train and decode "
                              "it first)")
        r = json.loads(path.read_text())
        r["fold"] = fold.name
        best = expdir.read_best(fold)
        if best is not None:
            r["best_epoch"] = best.get("epoch")
        results.append(r)
    if not results:
        raise MtlserError(f"{exp_dir}: no fold*/ dirs; train, decode and score the folds first")
    emotions = results[0]["emotions"]
    for r in results[1:]:
        if r["emotions"] != emotions:
            raise MtlserError(f"{exp_dir}: {r['fold']} scores emotions {r['emotions']} but {results[0]['fold']} "
                              f"{emotions}; folds of one experiment share one inventory: split, train, "
                              "decode and score again")
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
    atomic_write_text(exp_dir / expdir.RESULTS_JSON, json.dumps(summary, indent=1) + "\n")
    write_report(exp_dir, summary)
    logger.info("%s: WA %.4f +- %.4f, UA %.4f +- %.4f over %d folds (pooled WA %.4f UA %.4f, %d utterances)",
                exp_dir, summary["wa"], summary["wa_std"], summary["ua"], summary["ua_std"], len(results),
                summary["pooled_wa"], summary["pooled_ua"], summary["n"])
    return summary
