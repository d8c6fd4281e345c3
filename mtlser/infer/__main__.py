"""Stage 4: a trained model on a data dir (each fold's test set), or on wav files.

Writes into OUT (atomically, per file)::

    utt2emo_hyp     utt  predicted emotion
    emo_probs       utt  one probability per emotion   (header-less, in model.yaml's emotion order)
    text_hyp        utt  greedy CTC token sequence     (models with a CTC head)

Usage:
    python -m mtlser.infer --model-dir exp/train_mini/fold01 --data-dir data/loso/fold01/test \\
        --out exp/train_mini/fold01/decode_test
    python -m mtlser.infer --model-dir exp/train_mini/fold01 --wav a.wav b.wav     # prints JSON lines
    (with --folds-dir/--fold N the fold's dirs are derived as in training)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from mtlser.data.dataset import BatchSampler, SERDataset
from mtlser.data.datadir import write_table
from mtlser.infer import SERPredictor
from mtlser.utils import MtlserError, run_main, setup_logging
from mtlser.utils.progress import progress

logger = logging.getLogger("mtlser.infer")


def decode_data_dir(predictor: SERPredictor, data_dir: Path, out: Path, batch_size: int = 8) -> dict:
    ds = SERDataset(data_dir, token_list=None, emotions=predictor.emotions, sample_rate=predictor.sample_rate)
    sampler = BatchSampler(ds.durations, batch_size, shuffle=False)
    hyp, probs, text = {}, {}, {}
    for idx in progress(list(sampler), desc=f"decode {data_dir}", unit="batch", logger=logger, mininterval=5):
        items = [ds[i] for i in idx]
        results = predictor.predict_batch([it["wav"].numpy() for it in items])
        for it, r in zip(items, results):
            hyp[it["utt"]] = r["emotion"]
            probs[it["utt"]] = " ".join(f"{r['probs'][e]:.6f}" for e in predictor.emotions)
            if "tokens" in r:
                text[it["utt"]] = " ".join(r["tokens"])
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / "utt2emo_hyp", hyp)
    write_table(out / "emo_probs", probs)
    if text:
        write_table(out / "text_hyp", text)
    # Scoring finds the references through this (local/score.sh takes only the decode dir).
    (out / "data_dir").write_text(str(data_dir.resolve()) + "\n")
    logger.info("decoded %d utterances of %s into %s", len(hyp), data_dir, out)
    return hyp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stage 4: inference with a trained model.")
    parser.add_argument("--model-dir", required=True, help="training dir (with --fold: its parent)")
    parser.add_argument("--data-dir", help="data dir to decode")
    parser.add_argument("--out", help="decode dir to write (default MODEL_DIR/decode_<data dir name>)")
    parser.add_argument("--folds-dir", help="dir of fold data dirs; with --fold decodes foldNN/test")
    parser.add_argument("--fold", type=int)
    parser.add_argument("--wav", nargs="+", help="audio files to classify (prints JSON lines)")
    parser.add_argument("--weights", default="best.safetensors")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-threads", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging()
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    model_dir = Path(args.model_dir)
    data_dir = Path(args.data_dir) if args.data_dir else None
    if args.fold is not None:
        name = f"fold{args.fold:02d}"
        model_dir = model_dir / name
        data_dir = Path(args.folds_dir) / name / "test"
    predictor = SERPredictor.from_dir(model_dir, args.device, args.weights)
    if args.wav:
        for path in args.wav:
            print(json.dumps({"file": path, **predictor.predict_file(path)}))
        return 0
    if data_dir is None:
        raise MtlserError("give --data-dir, --folds-dir with --fold, or --wav")
    out = Path(args.out) if args.out else model_dir / f"decode_{data_dir.name}"
    decode_data_dir(predictor, data_dir, out, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
