"""Aggregate the folds of an experiment: WA and UA per fold, averaged over folds (the paper's protocol),
the pooled figures beside them, into the experiment dir's results.json and RESULTS.md; or the seeds of a
seed group (one experiment per seed) over seeds × folds. What the spreads and the CI are: mtlser.score.runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mtlser import expdir
from mtlser.data.fold_names import fold_dirs
from mtlser.score.runs import RUN_KEYS, run_key, runs_of, summarise_runs
from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_write_text

logger = logging.getLogger("mtlser.score")


def aggregate(exp_dir: str | Path, decode_name: str = expdir.DECODE_TEST, allow_unfinished: bool = False) -> dict:
    """A fold whose training did not finish refuses the aggregate (mtlser.expdir.check_finished), or with
    ``allow_unfinished`` is reported marked "unfinished, N of M epochs" (results.json's folds, RESULTS.md)."""
    from mtlser.score.report import write_report

    exp_dir = Path(exp_dir)
    folds = fold_dirs(exp_dir)
    trainings = {fold.name: expdir.check_finished(fold, allow_unfinished) for fold in folds}
    results = []
    for fold in folds:
        path = fold / decode_name / expdir.RESULT_JSON
        if not path.is_file():
            raise MtlserError(f"{path}: missing; score {fold.name} (python -m mtlser.score fold; train and decode "
                              "it first)")
        r = json.loads(path.read_text())
        r["fold"], r["fold_dir"] = fold.name, fold
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
    for r in results:
        r["seed"] = _seed_of(r["fold_dir"])
    if len({r["seed"] for r in results}) > 1:
        raise MtlserError(f"{exp_dir}: its folds were trained with seeds {sorted({str(r['seed']) for r in results})} "
                          "(train.seed of each fold's config.yaml); one experiment has one seed: retrain the "
                          "odd folds with --force, or give each seed its own experiment (ser.sh --seeds)")
    summary = summarise_runs(results)
    summary.pop("fold_means")
    summary.update(emotions=emotions, folds=[{k: r.get(k) for k in RUN_KEYS} for r in results])
    for f in summary["folds"]:  # only then: a finished experiment's results.json keeps its keys
        training = trainings.get(f["fold"])
        if training is not None and not training.finished:
            f["unfinished"] = training.describe()
    summary["seed"] = results[0]["seed"]
    atomic_write_text(exp_dir / expdir.RESULTS_JSON, json.dumps(summary, indent=1) + "\n")
    write_report(exp_dir, summary)
    logger.info("%s: WA %.4f +- %.4f, UA %.4f +- %.4f over %d folds (pooled WA %.4f UA %.4f, %d utterances)",
                exp_dir, summary["wa"], summary["wa_std"], summary["ua"], summary["ua_std"], len(results),
                summary["pooled_wa"], summary["pooled_ua"], summary["n"])
    return summary


def aggregate_seeds(exp_dirs: list[str | Path], out_dir: str | Path) -> dict:
    """One seed group: the results.json of each seed's experiment -> OUT_DIR/results.json and RESULTS.md."""
    from mtlser.score.report import write_report

    out_dir = Path(out_dir)
    members = []
    for d in map(Path, exp_dirs):
        path = d / expdir.RESULTS_JSON
        if not path.is_file():
            raise MtlserError(f"{path}: missing; aggregate {d} first (python -m mtlser.score aggregate)")
        members.append((d, json.loads(path.read_text())))
    runs: list[dict] = []
    seen: dict = {}
    d0, r0 = members[0]
    for d, r in members:
        if r["emotions"] != r0["emotions"]:
            raise MtlserError(f"{d}: scores emotions {r['emotions']} but {d0} {r0['emotions']}; a seed group "
                              "shares one inventory")
        for run in runs_of(r):
            key = run_key(run)
            if key in seen:
                raise MtlserError(f"{d}: seed {key[0]} {key[1]} is also in {seen[key]}; each seed's experiment "
                                  "trains with its own seed (--train.seed)")
            seen[key] = d
            runs.append({**run, "experiment": str(d)})
    speakers: dict = {}
    for run in runs:
        if speakers.setdefault(run["fold"], run.get("speakers")) != run.get("speakers"):
            raise MtlserError(f"{run['experiment']}: {run['fold']} tests {run.get('speakers')} but another seed "
                              f"tests {speakers[run['fold']]}; seeds of a group share one split (stage 2)")
    summary = {**summarise_runs(runs), "emotions": r0["emotions"], "runs": runs,
               "members": [str(d) for d, _ in members]}
    summary["folds"] = summary.pop("fold_means")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / expdir.RESULTS_JSON, json.dumps(summary, indent=1) + "\n")
    write_report(out_dir, summary, setup_dir=d0)
    logger.info("%s: WA %.4f, UA %.4f over %d folds x %d seeds (std over seeds WA %.4f UA %.4f)", out_dir,
                summary["wa"], summary["ua"], summary["num_folds"], summary["num_seeds"],
                summary["wa_seed_std"] or 0.0, summary["ua_seed_std"] or 0.0)
    return summary


def _seed_of(fold_dir: Path):
    """The seed a fold's model was trained with (its resolved config's train.seed), None if not recorded."""
    config = expdir.read_config(fold_dir)
    return None if config is None else (config.get("train") or {}).get("seed")
