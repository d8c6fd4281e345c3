"""Scoring's command line: score one fold's decode dir, aggregate the folds of an experiment, compare experiments.

Usage:
    python -m mtlser.score fold DECODE_DIR [--ref-dir DATA_DIR]
        -> DECODE_DIR/result.{txt,json} (mtlser.score.fold)
    python -m mtlser.score aggregate EXP_DIR [--decode-name decode_test]
        -> EXP_DIR/results.json, RESULTS.md, confusion.png, fusion_weights.png (mtlser.score.aggregate)
    python -m mtlser.score aggregate EXP_SEED0 EXP_SEED1... --seeds-out GROUP_DIR
        -> GROUP_DIR/results.json, RESULTS.md over seeds × folds (from each EXP's results.json)
    python -m mtlser.score compare EXP_A EXP_B... [--out FILE.md] [--reference PAPER.yaml]
        -> prints a verdict per experiment against the first (paired by seed and fold); --out: the table
           with the paired tests (mtlser.score.compare)
"""

from __future__ import annotations

import argparse
import sys

from mtlser import expdir
from mtlser.utils import run_main, setup_logging
from mtlser.utils.fileio import check_output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtlser.score", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fold", help="score one decode dir")
    p.add_argument("decode_dir")
    p.add_argument("--ref-dir", default=None, help="reference data dir (default: the decode dir's data_dir file)")
    p.add_argument("--token-type", default=None,
                   help="CTC target set of the references, text_<set> (default: the model's data.token_type)")
    p.add_argument("--allow-unfinished", action="store_true",
                   help="score the decode of a model whose training did not finish (refused without it)")
    p = sub.add_parser("aggregate", help="aggregate the folds of an experiment dir, or the seeds of a group")
    p.add_argument("exp_dirs", nargs="+",
                   help="an experiment dir; with --seeds-out, one per seed (each already aggregated)")
    p.add_argument("--decode-name", default=expdir.DECODE_TEST)
    p.add_argument("--allow-unfinished", action="store_true",
                   help="report folds whose training did not finish (refused without it), marked unfinished")
    p.add_argument("--seeds-out", default=None,
                   help="dir of the seed group: its results.json and RESULTS.md over the seeds × folds")
    p = sub.add_parser("compare", help="compare experiments (paired by seed and fold against the first)")
    p.add_argument("exp_dirs", nargs="+", help="experiment dirs; the first is the baseline of the paired tests")
    p.add_argument("--out", default=None, help="markdown file to write the table to (default: verdicts only)")
    p.add_argument("--reference", default=None,
                   help="YAML of published figures to show beside ours, matched by lambda "
                        "(e.g. egs/iemocap/local/paper_table3.yaml)")
    args = parser.parse_args(argv)
    setup_logging()
    if args.cmd == "fold":
        from mtlser.score.fold import score_fold

        score_fold(args.decode_dir, args.ref_dir, args.token_type, args.allow_unfinished)
    elif args.cmd == "aggregate":
        from mtlser.score.aggregate import aggregate, aggregate_seeds

        if len(args.exp_dirs) > 1 and not args.seeds_out:
            parser.error("aggregate: several experiment dirs are one seed group: give --seeds-out DIR")
        if args.seeds_out:
            check_output(args.seeds_out, args.exp_dirs, "--seeds-out")
            aggregate_seeds(args.exp_dirs, args.seeds_out)
        else:
            aggregate(args.exp_dirs[0], args.decode_name, args.allow_unfinished)
    else:
        from mtlser.score.compare import compare

        if args.out:
            check_output(args.out, args.exp_dirs + [args.reference], "--out")
        print(compare(args.exp_dirs, args.out, args.reference, verdicts_only=True))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
