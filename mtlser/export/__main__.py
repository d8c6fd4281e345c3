"""Ship a trained model: pack it, make an ensemble of the fold models, export it to transformers.

Usage:
    python -m mtlser.export pack --model-dir exp/<tag>/fold01 --out fold01.zip
    python -m mtlser.export pack --exp-dir exp/<tag> --out-dir exp/<tag>/packed     # stage 6: every fold,
                                                               # final/ when present, the folds' ensemble,
                                                               # mtlser's wheel (mtlser.export.wheel)
    python -m mtlser.export ensemble --exp-dir exp/<tag> [--out exp/<tag>/ensemble]
    python -m mtlser.export hf --model-dir exp/<tag>/fold01 --out hf/fold01      # a dir or a pack
    python -m mtlser.export onnx --model-dir exp/<tag>/fold01 --out fold01.onnx  # a dir, pack or ensemble

A pack or an ensemble dir is a model for ``mtlser-infer --model`` and ``SERPredictor.from_pretrained``.
Every output is checked first (mtlser.utils.fileio.check_output): one that is, contains or lies inside
an input is refused, and so is an existing non-empty dir that mtlser did not write, unless --overwrite.
``hf`` writes the model only when transformers gives mtlser's probabilities (mtlser.export.hf), and
exits 1 with the reason otherwise; ``onnx`` likewise checks its graph in onnxruntime
(mtlser.export.onnx) and writes OUT.onnx with OUT.json and OUT.md (what was measured).
"""

from __future__ import annotations

import argparse
import sys

from mtlser.utils import MtlserError, run_main, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtlser.export", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack a model (or every model of an experiment) into .zip files")
    p.add_argument("--model-dir", help="a training dir (foldNN, final) or an ensemble dir")
    p.add_argument("--out", help="the .zip to write (with --model-dir)")
    p.add_argument("--exp-dir", help="pack every fold, final/ and the folds' ensemble of this experiment")
    p.add_argument("--out-dir", help="where the .zip files go (with --exp-dir; default EXP_DIR/packed)")
    p.add_argument("--corpus", help="corpus name for the model card (default: the recipe dir's name)")
    p.add_argument("--weights", help="weights file of the model dir (default best.safetensors)")
    p.add_argument("--allow-unfinished", action="store_true",
                   help="pack a model whose training did not finish (refused without it); its card says "
                   "\"unfinished, N of M epochs\"")
    e = sub.add_parser("ensemble", help="an ensemble dir over the fold models of an experiment")
    e.add_argument("--exp-dir", required=True)
    e.add_argument("--out", help="ensemble dir to write (default EXP_DIR/ensemble)")
    e.add_argument("--overwrite", action="store_true", help="replace --out even when mtlser did not write it")
    h = sub.add_parser("hf", help="export to a Hugging Face transformers model dir (exact, or refused)")
    h.add_argument("--model-dir", required=True, help="a training dir or a pack (not an ensemble)")
    h.add_argument("--out", required=True, help="the transformers model dir to write")
    h.add_argument("--overwrite", action="store_true", help="replace --out even when mtlser did not write it "
                   "(an existing non-empty dir is refused without it)")
    o = sub.add_parser("onnx", help="export to an ONNX graph, checked in onnxruntime (exact, or refused)")
    o.add_argument("--model-dir", required=True, help="a training dir, an ensemble dir, or a pack")
    o.add_argument("--out", required=True, help="the .onnx file to write (OUT.json, OUT.md beside it)")
    o.add_argument("--check-data", help="check set: a data dir, wav.scp, folder or list (default: the fold's "
                   "test files, through MODEL_DIR/decode_test/data_dir)")
    o.add_argument("--tokens", action="store_true", help="also output the CTC class-token log-probabilities")
    o.add_argument("--weights", help="weights file of the model dir (default model.safetensors, else best)")
    args = parser.parse_args(argv)
    setup_logging()

    if args.command == "pack":
        from mtlser.export.pack import pack, pack_experiment

        if bool(args.model_dir) == bool(args.exp_dir):
            raise MtlserError("pack: give --model-dir DIR --out FILE.zip, or --exp-dir DIR [--out-dir DIR]")
        if args.model_dir:
            if not args.out:
                raise MtlserError("pack --model-dir needs --out FILE.zip")
            pack(args.model_dir, args.out, args.corpus, args.weights, args.allow_unfinished)
        else:
            pack_experiment(args.exp_dir, args.out_dir or f"{args.exp_dir}/packed", args.corpus,
                            args.allow_unfinished)
    elif args.command == "ensemble":
        from mtlser.export.pack import make_ensemble

        make_ensemble(args.exp_dir, args.out, overwrite=args.overwrite)
    elif args.command == "onnx":
        from mtlser.export.onnx import export_onnx

        export_onnx(args.model_dir, args.out, args.check_data, args.tokens, weights=args.weights)
    else:
        from mtlser.export.hf import export_hf

        export_hf(args.model_dir, args.out, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
