"""Label audio with a trained model (files, folders, lists, a wav.scp), or decode a data dir.

Usage:
    mtlser-infer --model fold01.zip recordings/ more.flac list.txt   # JSON lines on stdout
    python -m mtlser.infer --model exp/<tag>/ensemble wav.scp --output labels.csv
    python -m mtlser.infer --model exp/<tag>/fold01 --data-dir data/loso/fold01/test   # -> fold01/decode_test
    python -m mtlser.infer --model exp/<tag> --folds-dir data/loso --fold 1             # the same
    python -m mtlser.infer --model exp/<tag> --folds-dir data/fixed --fold 1 --test-set test2  # -> decode_test2

Inputs and formats: mtlser.infer.output; a decode dir: mtlser.infer.decode.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtlser.data.fold_names import TEST_SET, fold_name
from mtlser.expdir import DECODE_PREFIX
from mtlser.infer.audio import find_recordings
from mtlser.infer.output import (
    HOP_S,
    WINDOW_S,
    check_ids,
    check_per_window,
    label_and_write,
    load_predictor,
    output_format,
)
from mtlser.infer.package import check_trained
from mtlser.utils import MtlserError, run_main, setup_logging
from mtlser.utils.fileio import check_output


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtlser-infer", description="Label audio with a trained mtlser model (files, folders, lists, "
        "wav.scp), or decode a data dir.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 all labelled; 3 some inputs failed (each has an error record); 1 fatal error.")
    p.add_argument("inputs", nargs="*", help="audio files, folders, list files, wav.scp")
    p.add_argument("--model", "--model-dir", dest="model", required=True,
                   help="model dir, ensemble dir, or pack (.zip); with --fold: the experiment dir")
    p.add_argument("--output", "-o", help="write the labels here (default: stdout)")
    p.add_argument("--format", choices=("jsonl", "csv", "utt2emo"), help="default: from --output's name, else jsonl")
    p.add_argument("--per-window", action="store_true",
                   help="csv: one row per window (id, file, start, end, emotion, p_<emotion>...) instead of one "
                   "per recording; a recording within one window is one row")
    p.add_argument("--window", type=float, default=WINDOW_S,
                   help=f"label recordings longer than this many seconds in windows (default {WINDOW_S:g}; 0: whole)")
    p.add_argument("--hop", type=float, default=HOP_S, help=f"seconds between window starts (default {HOP_S:g})")
    p.add_argument("--data-dir", help="data dir to decode (a fold's test set)")
    p.add_argument("--out", help="decode dir to write (default MODEL/decode_<data dir name>)")
    p.add_argument("--folds-dir", help="dir of fold data dirs; with --fold decodes foldNN/test")
    p.add_argument("--fold", type=int)
    p.add_argument("--test-set", default=TEST_SET,
                   help=f"with --fold: the fold's test set to decode (default {TEST_SET}; the fixed protocol may "
                   f"have more, {TEST_SET}<name>: mtlser.data.fixed_split)")
    p.add_argument("--weights", help="weights file of the model dir (default model.safetensors, else "
                   "best.safetensors)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--backend", default="torch", choices=("torch", "onnx"),
                   help="torch, or onnx (onnxruntime; --model may then be an exported .onnx): "
                   "mtlser.infer.backends (default torch)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "int8"),
                   help="fp32 (exact); bf16 (torch: GPUs, or CPUs with native bf16, the fastest there); fp16 (GPUs); "
                   "int8 (onnx: dynamic quantisation). Non-exact modes print their agreement with fp32")
    p.add_argument("--check-set", help="where bf16/int8 are checked against fp32: a data dir, wav.scp, folder or "
                   "list (default: the fold's test files when the model has them, else the first inputs)")
    p.add_argument("--timeline", metavar="DIR", help="write DIR/<id>.csv and DIR/<id>.png for every recording "
                   "longer than --window (mtlser.infer.timeline)")
    p.add_argument("--overwrite", action="store_true", help="replace --timeline DIR even when mtlser did not write "
                   "it (an existing non-empty dir is refused without it)")
    p.add_argument("--batch-size", type=int, default=16, help="most recordings (or windows) per batch")
    p.add_argument("--batch-seconds", type=float, default=60.0,
                   help="most padded audio per batch, in seconds (bounds memory)")
    p.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-pipes", action="store_true",
                   help="run the commands of wav.scp pipe entries ('cmd |'); refused without it")
    p.add_argument("--allow-unfinished", action="store_true",
                   help="decode a training dir whose training did not finish (killed, stopped): refused without it "
                   "(mtlser.expdir.check_finished); its scores are then marked unfinished")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    model, data_dir = Path(args.model), Path(args.data_dir) if args.data_dir else None
    if args.fold is not None:
        if not args.folds_dir:
            raise MtlserError("--fold needs --folds-dir (the dir of the fold data dirs)")
        model, data_dir = model / fold_name(args.fold), Path(args.folds_dir) / fold_name(args.fold) / args.test_set
    if (data_dir is None) != bool(args.inputs):
        raise MtlserError("give either inputs (audio files, folders, list files, wav.scp) or --data-dir "
                          "(or --folds-dir with --fold): one of them")
    fmt = output_format(args.format, args.output)
    recordings = find_recordings(args.inputs, args.allow_pipes) if args.inputs else []
    check_ids(recordings, fmt)
    # Labels may sit in the folder of the recordings (or the model's dir), but never replace a recording, a
    # list, the folder or the model.
    read = [Path(i) for i in args.inputs] + [Path(r.source) for r in recordings if not r.is_pipe and not r.error]
    files, dirs = [p for p in read if not p.is_dir()], [p for p in read if p.is_dir()] + [model]
    if args.output:
        check_output(args.output, files, "--output", around=dirs)
    if args.timeline:
        check_output(args.timeline, files, "--timeline", around=dirs, is_dir=True, overwrite=args.overwrite)
    if args.per_window and data_dir is not None:
        raise MtlserError("--per-window shapes the CSV of labelled inputs; a data dir's decode (--data-dir, --fold) "
                          "labels whole utterances: leave --per-window out")
    check_per_window(args.per_window, fmt)
    check_trained(model, args.allow_unfinished)
    predictor = load_predictor(model, args.device, args.weights, args.precision, args.num_threads, args.backend)
    if args.precision != "fp32" and args.device == "cpu":
        from mtlser.infer.backends import report_agreement

        report_agreement(predictor, model, args.check_set, recordings, args.window)
    if data_dir is None:
        return label_and_write(predictor, recordings, fmt, args.output, args.window, args.hop, args.batch_size,
                               args.batch_seconds, not args.no_progress, args.timeline, args.per_window,
                               args.overwrite)
    from mtlser.infer.decode import decode_data_dir

    out = Path(args.out) if args.out else model / f"{DECODE_PREFIX}{data_dir.name}"
    check_output(out, [data_dir], "--out", around=[model])
    decode_data_dir(predictor, data_dir, out, args.batch_size, args.batch_seconds, not args.no_progress)
    return 0


def console_main() -> None:
    """The ``mtlser-infer`` console script."""
    sys.exit(run_main(main))


if __name__ == "__main__":
    console_main()
