"""Stage 3: train one fold.

Usage:
    python -m mtlser.train --config conf/train_mini.yaml --folds-dir data/loso --fold 3 \\
        --token-list data/token_list --exp-dir exp/train_mini [--loss.lambda 0 ...]
    python -m mtlser.train --config conf/train_mtl.yaml --data-dir data/loso/fold03 \\
        --token-list data/token_list/phncls/tokens.txt --exp-dir exp/train_mtl/fold03
    python -m mtlser.train --config conf/train_mtl.yaml --folds-dir data/loso --fold 3 \\
        --token-list data/loso/foldNN/token_list/bpe100/tokens.txt --exp-dir exp/train_mtl_bpe100 \\
        --data.token_type bpe100
    python -m mtlser.train --check-config --config conf/train_mini.yaml --train-opts "--train.epochs 2"

With --fold N the data dir is FOLDS_DIR/foldNN and the experiment dir EXP_DIR/foldNN
(what the recipe's parallel jobs pass as JOB); a literal ``foldNN`` in --token-list
becomes the fold too (bpe token lists are per fold: they are trained on its training text). Anything after the known options
overrides the config (``--section.key value``); ``--train-opts "..."`` takes them
as one shell-quoted string (what the recipe passes: a value with spaces stays one
value). Rerunning resumes from ``checkpoint.pt`` when the settings that shape the
model match the checkpoint's (mtlser.train.resume), and refuses otherwise;
with ``--force`` a fold that cannot resume is retrained from scratch instead (one
that can is left alone). A finished fold returns at once, without building the model. ``--check-config`` only
resolves and checks the config, naming the source of a bad field (the YAML file,
``--train-opts``, the command line): the recipe runs it before stage 3's jobs. One
run per fold dir at a time (a lock, mtlser.utils.lock). Under torchrun
(``torchrun --standalone --nproc_per_node N -m mtlser.train ...``) the ranks split every
batch and rank 0 writes: mtlser/train/distributed.py. What the command does once parsed:
mtlser/train/run.py.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from mtlser.config import COMMAND_LINE, resolve_config
from mtlser.data.fold_names import FOLD_PLACEHOLDER, fold_name
from mtlser.utils import MtlserError, run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one fold (stage 3).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", required=True, help="experiment YAML (conf/*.yaml)")
    parser.add_argument("--check-config", action="store_true",
                        help="only resolve the config (YAML, --train-opts, overrides) and check it, naming the source "
                             "of a bad field; what the recipe runs once before stage 3's jobs start")
    parser.add_argument("--token-list", help="token list from stage 1 (bpe: stage 2); 'foldNN' in it is replaced "
                                             "with --fold (required to train)")
    parser.add_argument("--exp-dir", help="experiment dir (with --fold: its parent; required to train)")
    parser.add_argument("--data-dir", help="fold data dir holding train/ valid/ (or use --folds-dir and --fold)")
    parser.add_argument("--folds-dir", help="dir of fold data dirs (fold01, fold02, ...)")
    parser.add_argument("--fold", type=int, help="fold number (1-based)")
    parser.add_argument("--train-opts", default="",
                        help="config overrides as one shell-quoted string, e.g. \"--backbone.init '/my models/w2v'\"")
    parser.add_argument("--force", action="store_true",
                        help="when the fold's checkpoint cannot be resumed (other settings, unreadable), retrain it "
                             "from scratch, removing its checkpoint, model and decode dirs")
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = parser.parse_known_args(argv)
    layers = []  # (source, overrides): each bad field is named with where it came from
    if args.train_opts:
        try:
            extra = shlex.split(args.train_opts)
        except ValueError as e:
            raise MtlserError(f"--train-opts {args.train_opts!r}: {e} (quote a value with spaces as a whole: "
                              f"\"--backbone.init '/my models/w2v'\")") from None
        # Options of this command in --train-opts (--force) count as given; the ones given directly win.
        args, both = parser.parse_known_args(extra + argv)
        # The overrides come back in order: those of --train-opts, then the ones given directly.
        layers.append(("--train-opts", both[:len(both) - len(overrides)]))
    layers.append((COMMAND_LINE, overrides))
    if args.check_config:
        resolve_config(args.config, layers)
        return 0
    for option in ("token_list", "exp_dir"):
        if getattr(args, option) is None:
            parser.error(f"--{option.replace('_', '-')} is required (unless --check-config)")

    token_list = args.token_list
    if args.fold is not None:
        if not args.folds_dir:
            parser.error("--fold needs --folds-dir")
        data_dir = Path(args.folds_dir) / fold_name(args.fold)
        exp_dir = Path(args.exp_dir) / fold_name(args.fold)
        token_list = token_list.replace(FOLD_PLACEHOLDER, fold_name(args.fold))
    elif args.data_dir:
        data_dir, exp_dir = Path(args.data_dir), Path(args.exp_dir)
        if FOLD_PLACEHOLDER in token_list:
            parser.error("--token-list names foldNN: give --folds-dir and --fold instead of --data-dir")
    else:
        parser.error("give --data-dir, or --folds-dir with --fold")

    from mtlser.train.run import train_fold  # here: --check-config needs no torch (it runs before each stage 3)

    return train_fold(args.config, layers, token_list, data_dir, exp_dir, args.force, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
