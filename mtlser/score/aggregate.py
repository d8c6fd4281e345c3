"""Aggregate the folds of an experiment: WA and UA per fold, averaged over folds (the paper's protocol),
the pooled figures beside them, into the experiment dir's results.json and RESULTS.md; or the seeds of a
seed group (one experiment per seed) over seeds × folds. What the spreads and the CI are: mtlser.score.runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mtlser import expdir
from mtlser.data.fold_names import fold_dirs
from mtlser.score.runs import RUN_KEYS, console_lines, run_key, runs_of, summarise_runs
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
    summary["seed"] = results[0]["seed"]
    if decode_name == expdir.DECODE_TEST:
        further = further_test_sets(folds, emotions)
        if further:
            summary["test_sets"] = further
    atomic_write_text(exp_dir / expdir.RESULTS_JSON, json.dumps(summary, indent=1) + "\n")
    write_report(exp_dir, summary)
    if "wa" not in summary:  # a model with no classes
        logger.info("%s: mean CCC %.4f +- %.4f over %d folds (%d utterances)", exp_dir,
                    summary["attributes"]["mean_ccc"]["mean"], summary["attributes"]["mean_ccc"]["std"],
                    len(results), summary["n"])
        return summary
    _log_table(f"{exp_dir}: WA and UA in % over {_n(len(results), 'fold')} ({summary['n']} test utterances), "
               f"from {exp_dir / expdir.RESULTS_MD}:", summary)
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
    further = _group_test_sets(members)
    if further:
        summary["test_sets"] = further
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / expdir.RESULTS_JSON, json.dumps(summary, indent=1) + "\n")
    write_report(out_dir, summary, setup_dir=d0)
    if "wa" not in summary:  # a model with no classes
        logger.info("%s: mean CCC %.4f over %d folds x %d seeds", out_dir, summary["attributes"]["mean_ccc"]["mean"],
                    summary["num_folds"], summary["num_seeds"])
        return summary
    _log_table(f"{out_dir}: WA and UA in % over {_n(summary['num_folds'], 'fold')} x "
               f"{_n(summary['num_seeds'], 'seed')}, from {out_dir / expdir.RESULTS_MD}:", summary)
    return summary


def _log_table(title: str, summary: dict) -> None:
    """Stage 5's figures at the terminal: a title line, then the headline table with its header."""
    logger.info("%s", title)
    for line in console_lines(summary):
        logger.info("  %s", line)


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}{'' if k == 1 else 's'}"


def further_test_sets(folds: list[Path], emotions: list[str]) -> dict[str, dict]:
    """The fixed protocol's further test sets (test2, ...: each fold's data dir's test<name>), each summarised
    over the folds as the main one is (mtlser.score.runs); {} when the folds have the test set alone."""
    from mtlser.data.fold_names import TEST_SET, test_sets

    data = expdir.decoded_data_dir(folds[0] / expdir.DECODE_TEST)
    if data is None or not data.parent.is_dir():
        return {}
    out = {}
    for name in test_sets(data.parent):
        if name == TEST_SET:
            continue
        decode = expdir.DECODE_PREFIX + name
        runs = []
        for fold in folds:
            path = fold / decode / expdir.RESULT_JSON
            if not path.is_file():
                raise MtlserError(f"{path}: missing, but {data.parent} has the test set {name}; decode and score it "
                                  f"(stages 4-5 do each test set: python -m mtlser.infer --test-set {name}, then "
                                  f"python -m mtlser.score fold {fold / decode})")
            r = json.loads(path.read_text())
            if r["emotions"] != emotions:
                raise MtlserError(f"{path}: scores emotions {r['emotions']} but {expdir.DECODE_TEST} {emotions}; "
                                  "decode and score it again")
            runs.append({**{k: r.get(k) for k in RUN_KEYS}, "fold": fold.name, "seed": _seed_of(fold)})
        s = summarise_runs(runs)
        s.pop("fold_means")
        out[name] = {"decode_name": decode, **s, "folds": runs}
    return out


def _group_test_sets(members: list[tuple[Path, dict]]) -> dict[str, dict]:
    """A seed group's further test sets: each set's runs of every seed, summarised as the main test set's."""
    names = [list(r.get("test_sets") or {}) for _, r in members]
    if any(n != names[0] for n in names):
        raise MtlserError(f"{members[0][0]}: the seeds' experiments score the test sets "
                          f"{sorted({' '.join(['test', *n]) for n in names})}; aggregate each after stage 5 scored "
                          "all of its test sets")
    out = {}
    for name in names[0]:
        runs = [run for _, r in members for run in runs_of({"folds": r["test_sets"][name]["folds"],
                                                            "seed": r.get("seed")})]
        s = summarise_runs(runs)
        s.pop("fold_means")
        out[name] = {"decode_name": members[0][1]["test_sets"][name]["decode_name"], **s}
    return out


def _seed_of(fold_dir: Path):
    """The seed a fold's model was trained with (its resolved config's train.seed), None if not recorded."""
    config = expdir.read_config(fold_dir)
    return None if config is None else (config.get("train") or {}).get("seed")
