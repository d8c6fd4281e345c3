"""The final model to ship: after cross-validation, one training on every speaker.

The folds measure how well the recipe does on unseen speakers; the model a user
labels new audio with should have seen all of them. It is trained once on
stage 2's ``final/train`` (every utterance, no valid, no test), for an epoch
count the folds chose, never tuned on anything else:

    the median over the folds of the epoch each fold reported (its best.json),
    rounded half up.

Under the paper's protocol (``train.model_selection last``) every fold reports
its last epoch, so this is the configured ``train.epochs``; with selection on
valid it is the typical best epoch. The final model reports its last epoch
(there is nothing to select on). Its dir, ``exp/<tag>/final/``, is a normal model
dir (best.safetensors, best.json, config.yaml, ...), and ``final_epochs.json`` in
it records the folds' epochs and the rule.

Usage (the recipe's stage 3 with --train-final true):
    epochs=$(python -m mtlser.train.final --exp-dir exp/train_mtl_loso)
    python -m mtlser.train ... --data-dir data/loso/final --exp-dir exp/train_mtl_loso/final \\
        --train.epochs "${epochs}" --train.model_selection last --train.patience 0
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from pathlib import Path

from mtlser import expdir
from mtlser.data.fold_names import FINAL, fold_dirs
from mtlser.utils import MtlserError, run_main, setup_logging
from mtlser.utils.fileio import atomic_write_text

logger = logging.getLogger("mtlser.train.final")

RULE = "median over the folds of each fold's reported epoch (best.json), rounded half up"


def folds_reported_epochs(exp_dir: Path) -> dict[str, int]:
    """Each finished fold's reported epoch, from its best.json."""
    epochs = {}
    for fold in fold_dirs(exp_dir):
        expdir.check_finished(fold, can_allow=False)  # a fold stopped before its end would choose too few epochs
        path = fold / expdir.BEST_JSON
        if not path.is_file():
            raise MtlserError(f"{path}: missing; the final model's epoch count comes from every fold: finish "
                              f"stage 3 for {fold.name} first")
        try:
            epochs[fold.name] = int(json.loads(path.read_text())["epoch"])
        except (ValueError, KeyError, TypeError) as e:
            raise MtlserError(f"{path}: no reported epoch ({e}); retrain {fold.name}") from None
    if not epochs:
        raise MtlserError(f"{exp_dir}: no fold*/ dirs; run stage 3 for the folds before the final model")
    return epochs


def final_epochs(exp_dir: str | Path) -> dict:
    """The final model's epoch count and how it was chosen; written to EXP/final/final_epochs.json."""
    exp_dir = Path(exp_dir)
    epochs = folds_reported_epochs(exp_dir)
    median = statistics.median(epochs.values())
    chosen = max(1, math.floor(median + 0.5))
    record = {"epochs": chosen, "rule": RULE, "median": median, "folds": epochs}
    atomic_write_text(exp_dir / FINAL / "final_epochs.json", json.dumps(record, indent=1) + "\n")
    logger.info("final model: %d epochs (%s: %s)", chosen, RULE,
                " ".join(f"{k}={v}" for k, v in epochs.items()))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Epoch count of the final model, chosen by the folds; "
                                                 "prints it (stdout) and records it in EXP/final/final_epochs.json.")
    parser.add_argument("--exp-dir", required=True, help="the experiment dir holding fold01, fold02, ...")
    args = parser.parse_args(argv)
    setup_logging()
    print(final_epochs(args.exp_dir)["epochs"])
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
