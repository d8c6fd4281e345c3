"""``python -m mtlser.corpora <corpus> --db-root DIR --out data/all ...``: a release -> Kaldi data dir (stage 0)."""

from __future__ import annotations

import argparse
import sys

from mtlser.corpora.prep import described, load, prepare
from mtlser.utils import run_main, setup_logging


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(f"usage: python -m mtlser.corpora {{{'|'.join(described())}}} --db-root DIR --out DIR [options]\n"
              "       python -m mtlser.corpora CORPUS --help   (its options)", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    corpus = load(argv[0])
    parser = argparse.ArgumentParser(prog=f"python -m mtlser.corpora {argv[0]}",
                                     description=f"{corpus.name} release -> Kaldi data dir (stage 0).")
    parser.add_argument("--db-root", required=True, help=corpus.db_root_help)
    parser.add_argument("--out", required=True, help="data dir to write, e.g. data/all")
    parser.add_argument("--emotion-map", default=None, help=f"label map YAML (default conf/emotions/{corpus.module}"
                        ".yaml: the classes in index order, merges; format: mtlser/data/emotions.py)")
    parser.add_argument("--report-dir", default=None, help="where counts.json and the list of what was left out go "
                        f"(default: OUT/../local/{corpus.module}_prep)")
    parser.add_argument("--no-check-counts", action="store_true",
                        help=f"do not compare the counts with the full release's {corpus.release_total}")
    parser.add_argument("--skip-missing-audio", action="store_true",
                        help=f"drop {corpus.items} whose audio file is missing instead of failing")
    for flag, kwargs in corpus.options.items():
        parser.add_argument(flag, **kwargs)
    args = vars(parser.parse_args(argv[1:]))
    setup_logging()
    prepare(corpus, args.pop("db_root"), args.pop("out"), args.pop("emotion_map"),
            check_counts=not args.pop("no_check_counts"), report_dir=args.pop("report_dir"),
            skip_missing_audio=args.pop("skip_missing_audio"), **args)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
