"""Print a recipe run's names as shell assignments, for egs/TEMPLATE/ser.sh to ``eval``.

    python -m mtlser.recipe names --protocol loso --valid none --token-type phncls --emo-tag true \\
        --nbpe 100 --train-config conf/train_mtl.yaml [--tag T] [--lambdas "0 0.1"] [--ctc-reduction mean] \\
        [--seeds "0 1"]
    -> folds_dir=... token_set=... token_list_dir=... token_list=... final_token_list=... valid_opts=... tag=...
       exp_dirs=(...) exp_opts=(...) exp_groups=(...) seed_groups=(...) sweep_table=... sweep_dirs=(...)
    python -m mtlser.recipe check-options --stage 0 --stop-stage 6 --nj 2 --ngpu 0 --valid-share 0.1 \\
        --split-seed 0 --nbpe 100
    -> nothing, or one line naming the bad option (exit 1); ser.sh runs it before any stage
    python -m mtlser.recipe folds --folds-dir data/loso [--folds "1 2"]
    -> fold_args=1,2 num_folds=2 fold_names=(fold01 fold02) test_sets=(test) decode_names=(decode_test)
       (the fixed protocol's further test sets: test_sets=(test test2) decode_names=(decode_test decode_test2))
    python -m mtlser.recipe record --exp-dir exp/T NAMES-OPTIONS --folds 1,2 [--train-opts ...] [--exp-opts ...]
    -> exp/T/recipe_options.json (stage 3)
    python -m mtlser.recipe find NAMES-OPTIONS --folds "" --given="stage token-type" --stage 4
    -> protocol=... token_type=... (the recorded run's options) folds=..., then what `names` prints for them

The rules: mtlser.recipe.names, mtlser.recipe.options, mtlser.recipe.checks.
"""

from __future__ import annotations

import argparse
import sys

from mtlser.recipe.checks import check_options
from mtlser.recipe.names import fold_assignments, fold_numbers, fold_test_sets, run_assignments, run_names
from mtlser.recipe.names import shell_assignments
from mtlser.recipe.options import check_stage, find, names_of, record
from mtlser.text.tokenize import str2bool
from mtlser.utils import run_main


def add_run_options(p: argparse.ArgumentParser, emo_tag=str2bool, nbpe=int) -> None:
    """The options a run's names depend on (mtlser.recipe.options.NAMING), with ser.sh's variable names."""
    p.add_argument("--protocol", required=True)
    p.add_argument("--valid", required=True)
    p.add_argument("--token-type", required=True)
    p.add_argument("--emo-tag", type=emo_tag, default=emo_tag("true"))
    p.add_argument("--nbpe", type=nbpe, default=nbpe("100"))
    p.add_argument("--train-config", required=True)
    p.add_argument("--tag", default="", help="the experiment name (default: from config, protocol, valid, tokens)")
    p.add_argument("--lambdas", default="", help="a lambda sweep, e.g. '0 0.1 1': one experiment per value")
    p.add_argument("--ctc-reduction", default="")
    p.add_argument("--seeds", default="", help="model seeds, e.g. '0 1 2': each experiment once per seed")
    p.add_argument("--data", default="data")
    p.add_argument("--exp", default="exp")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A recipe run's names, as shell assignments (ser.sh evals them).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("names", help="folds dir, token set and list, experiment dirs and their overrides")
    add_run_options(p)
    f = sub.add_parser("folds", help="the folds to run: --folds, or every fold of --folds-dir")
    f.add_argument("--folds-dir", required=True)
    f.add_argument("--folds", default="")
    c = sub.add_parser("check-options", help="the shell options that are numbers (values as written)")
    for option in ("--stage", "--stop-stage", "--nj", "--ngpu", "--valid-share", "--split-seed", "--nbpe"):
        c.add_argument(option, required=True)
    r = sub.add_parser("record", help="stage 3: write an experiment dir's recipe_options.json")
    add_run_options(r, str, str)
    r.add_argument("--exp-dir", required=True, help="the experiment dir (one of the run's)")
    r.add_argument("--exp-opts", default="", help="this experiment's own overrides (lambda, seed)")
    for name in ("folds", "train-opts", "valid-share", "split-seed", "partition", "test-corpus", "train-corpora",
                 "phone-classes", "train-final"):
        r.add_argument(f"--{name}", default="")
    d = sub.add_parser("find", help="stages 4-6 alone: the recorded run that fits the options given")
    add_run_options(d, str, str)
    d.add_argument("--folds", default="")
    d.add_argument("--given", default="", help="the options named on the command line, e.g. \"stage token-type\"")
    d.add_argument("--stage", type=int, required=True, help="the first stage of this call")
    args = parser.parse_args(argv)
    if args.cmd == "check-options":
        check_options(args.stage, args.stop_stage, args.nj, args.ngpu, args.valid_share, args.split_seed, args.nbpe)
    elif args.cmd == "names":
        sys.stdout.write(run_assignments(run_names(
            args.protocol, args.valid, args.token_type, args.train_config, args.emo_tag, args.nbpe, args.tag,
            args.lambdas, args.ctc_reduction, args.data, args.exp, args.seeds)))
    elif args.cmd == "folds":
        numbers = fold_numbers(args.folds_dir, args.folds)
        sys.stdout.write(fold_assignments(numbers, fold_test_sets(args.folds_dir, numbers)))
    elif args.cmd == "record":
        names = names_of(vars(args), args.data, args.exp)
        record(args.exp_dir, vars(args), names, args.exp_opts)
    else:
        given = {g.replace("-", "_") for g in args.given.split()}
        options, line = find(vars(args), given, args.exp, args.stage, args.data)
        if line:
            print(line, file=sys.stderr)
        names = names_of(options, args.data, args.exp)
        check_stage(names, options["folds"], args.stage)
        sys.stdout.write(shell_assignments(options) + run_assignments(names))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
