"""Stage 3 for one fold dir, as ``python -m mtlser.train`` runs it: log, lock, process group, --force.

:func:`train_fold` is what the command does once its arguments are parsed: rank 0 logs to the
fold's ``train.log`` and holds the fold's lock for the whole run; under torchrun the ranks join
one process group (:func:`mtlser.train.distributed.process_group`); a fold whose checkpoint cannot
be resumed is refused, or with ``force`` cleared and trained from scratch.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
from pathlib import Path

from mtlser.config import resolve_config
from mtlser.text.tokenize import read_token_list
from mtlser.train import distributed
from mtlser.train.resume import ResumeRefused, clear_training
from mtlser.utils import MtlserError, setup_logging
from mtlser.utils.lock import LOCK_NAME, hold_lock

logger = logging.getLogger("mtlser.train")


def train_fold(config: str, overrides: list[tuple[str, list[str]]], token_list: str, data_dir: Path, exp_dir: Path,
               force: bool, argv: list[str]) -> int:
    rank = distributed.rank()
    exp_dir.mkdir(parents=True, exist_ok=True)
    # Rank 0 logs (to train.log too); the other ranks of a torchrun only say what goes wrong.
    setup_logging(exp_dir / "train.log" if rank == 0 else None, logging.INFO if rank == 0 else logging.WARNING)
    logger.info("command: python -m mtlser.train %s", " ".join(shlex.quote(a) for a in argv))
    # One writer per fold dir: rank 0 holds the lock for the whole run (the OS drops it if the process dies).
    with hold_lock(exp_dir / LOCK_NAME, f"fold dir {exp_dir}") if rank == 0 else contextlib.nullcontext():
        cfg = resolve_config(config, overrides)  # overrides: (source, arguments), named in errors
        tokens = read_token_list(token_list)
        if not data_dir.is_dir():
            raise MtlserError(f"{data_dir}: fold data dir not found; run stage 2 first")
        check_token_tags(Path(token_list), data_dir / "train")
        with distributed.process_group(cfg.train.device):
            best = fit_or_retrain(cfg, data_dir, tokens, exp_dir, force)
    if best:
        if "ua" in best or "loss" not in best:
            logger.info("best epoch %s: valid WA %.4f UA %.4f", best.get("epoch"), best.get("wa", float("nan")),
                        best.get("ua", float("nan")))
        else:  # a dimensional-only model (no classes)
            logger.info("best epoch %s: valid loss %.4f", best.get("epoch"), best["loss"])
    distributed.exit_now(0)  # a torchrun rank ends here (gloo's threads outlive its group); a plain run returns
    return 0


def fit_or_retrain(cfg, data_dir: Path, tokens: list[str], exp_dir: Path, force: bool) -> dict:
    """Train (or resume) the fold; with ``force`` a fold that cannot resume is cleared and trained from scratch.
    A finished fold is checked and left without building the model (mtlser.train.trainer.rerun_of_finished)."""
    from mtlser.train.trainer import Trainer, rerun_of_finished

    try:
        best = rerun_of_finished(cfg, data_dir, tokens, exp_dir)
        if best is not None:
            return best
        return Trainer(cfg, data_dir, tokens, exp_dir).fit()
    except ResumeRefused as refused:
        if not force:
            raise
        # Every rank refuses alike (same files); rank 0 clears while the others wait, then all start over.
        if distributed.rank() == 0:
            removed = clear_training(exp_dir)
            logger.info("--force: %s; removed %s, training from scratch", refused, " ".join(removed))
        distributed.barrier()
        return Trainer(cfg, data_dir, tokens, exp_dir).fit()


def check_token_tags(token_list: Path, train_dir: Path) -> None:
    """Emotion-tagged tokens index the inventory stage 1 saw (saved beside the list): it must be the data's."""
    from mtlser.data.emotions import INVENTORY, check_same, read_inventory

    if (token_list.parent / INVENTORY).is_file() and (train_dir / INVENTORY).is_file():
        check_same(read_inventory(token_list.parent), str(token_list.parent / INVENTORY), read_inventory(train_dir),
                   str(train_dir / INVENTORY), "the CTC tags would name other emotions than the classes: rerun "
                   "stages 1-2 (tokens, folds) after changing the inventory")
