"""Label audio with a trained model: files, folders, lists, a wav.scp; or a data dir (stage 4).

Usage:
    mtlser-infer --model fold01.zip recordings/ more.flac list.txt   # JSON lines on stdout
    python -m mtlser.infer --model exp/train_mini_loso/ensemble wav.scp --output labels.csv
    python -m mtlser.infer --model exp/train_mini_loso/fold01 --data-dir data/loso/fold01/test \\
        --out exp/train_mini_loso/fold01/decode_test
    (stage 4: --model EXP_DIR --folds-dir DIR --fold N decodes DIR/foldNN/test with EXP_DIR/foldNN)

--model takes a model dir, an ensemble dir, or a pack (.zip); --model-dir is the same option.

Inputs (positional, or after --wav): audio files (any rate, mono or multi-channel: mixed down and
resampled), folders (searched recursively for audio by extension), a Kaldi wav.scp (``*.scp``), and
list files (one path a line). Output, one record per input in the order given:

    --format jsonl   {"id", "file", "duration", "emotion", "probs": {...}, "tokens": [...]} per line;
                     a recording longer than --window also has "windows": [{"start", "end", "emotion",
                     "probs", "tokens"}, ...] and its "probs" are the mean over its windows;
                     a failure is {"id", "file", "error"}
    --format csv     id,file,duration,emotion,p_<emotion>...,error (whole-file figures)
    --format utt2emo Kaldi table "id emotion" (failures only on stderr)

The format follows --output's extension (.csv, .jsonl/.json, utt2emo) unless given. Exit status:
0 all labelled, 3 some inputs failed (each named), 1 nothing could be done (bad model, bad option).

A data dir (--data-dir) is decoded whole-utterance, as trained and as the paper evaluates, into
OUT (atomically, per file)::

    utt2emo_hyp     utt  predicted emotion
    emo_probs       utt  p(e_1) ... p(e_K)   (header-less, in the model's emotion order)
    text_hyp        utt  greedy CTC class tokens (models with a CTC head)
    utt2error       utt  why it could not be decoded (too short, unreadable); absent when none failed
    data_dir        the decoded data dir (scoring reads its references there)

Failed utterances do not stop the decode (exit 0): utt2error lists them and scoring counts them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path

import torch

from mtlser.data.fold_names import fold_name
from mtlser.infer.audio import Recording, find_recordings
from mtlser.infer.runner import Labelled, label
from mtlser.utils import MtlserError, run_main, setup_logging
from mtlser.utils.fileio import atomic_write_text

logger = logging.getLogger("mtlser.infer")

#: Exit status when some inputs could not be labelled (the others were).
EXIT_SOME_FAILED = 3
#: Default windows for files: utterance-sized pieces, overlapping by half (see mtlser.infer.audio.windows).
WINDOW_S = 20.0
HOP_S = 10.0


def decode_data_dir(predictor, data_dir: Path, out: Path, batch_size: int = 16, batch_seconds: float = 60.0,
                    progress: bool = True) -> dict[str, str]:
    """Stage 4: every utterance of a data dir's wav.scp, whole; returns utt -> predicted emotion."""
    from mtlser.data.datadir import read_table, sort_key, write_table
    from mtlser.score.not_scored import UTT2ERROR

    scp = data_dir / "wav.scp"
    if not scp.is_file():
        raise MtlserError(f"{scp}: missing; is {data_dir} a data dir (stage 2 writes the folds')?")
    wav_scp = read_table(scp)
    durations = None
    if (data_dir / "utt2dur").is_file():
        durations = {u: float(d) for u, d in read_table(data_dir / "utt2dur").items()}
    recordings = [Recording(u, wav_scp[u]) for u in sorted(wav_scp, key=sort_key)]
    done = label(predictor, recordings, window=0.0, batch_size=batch_size, batch_seconds=batch_seconds,
                 durations=durations, progress=progress, desc=f"decode {data_dir}")
    hyp, probs, text, errors = {}, {}, {}, {}
    for d in done:
        utt = d.recording.id
        if d.error is not None:
            errors[utt] = " ".join(d.error.split())
            continue
        hyp[utt] = d.result["emotion"]
        probs[utt] = " ".join(f"{d.result['probs'][e]:.6f}" for e in predictor.emotions)
        if "tokens" in d.result:
            text[utt] = " ".join(d.result["tokens"])
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / "utt2emo_hyp", hyp)
    write_table(out / "emo_probs", probs)
    if predictor.tokens is not None:
        write_table(out / "text_hyp", text)  # an utterance with no token is a line of its id alone
    if errors:  # scoring reports them (mtlser.score.not_scored)
        write_table(out / UTT2ERROR, errors)
        logger.warning("%d of %d utterances of %s could not be decoded: %s (they are listed there)", len(errors),
                       len(done), data_dir, out / UTT2ERROR)
    elif (out / UTT2ERROR).exists():
        (out / UTT2ERROR).unlink()  # from an earlier decode: none failed this time
    # Scoring finds the references through this (local/score.sh takes only the decode dir).
    atomic_write_text(out / "data_dir", str(data_dir.resolve()) + "\n")
    logger.info("decoded %d of %d utterances of %s into %s", len(hyp), len(done), data_dir, out)
    return hyp


def output_format(fmt: str | None, output: str | None) -> str:
    if fmt:
        return fmt
    name = (output or "").lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith("utt2emo") or name.endswith("utt2emo_hyp"):
        return "utt2emo"
    return "jsonl"


def render(done: list[Labelled], fmt: str, emotions: list[str]) -> str:
    """The output file's text in ``fmt`` (see the module doc)."""
    if fmt == "jsonl":
        return "".join(json.dumps(d.as_json(), ensure_ascii=False) + "\n" for d in done)
    if fmt == "utt2emo":
        return "".join(f"{d.recording.id} {d.result['emotion']}\n" for d in done if d.error is None)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "file", "duration", "emotion", *[f"p_{e}" for e in emotions], "error"])
    for d in done:
        if d.error is not None:
            writer.writerow([d.recording.id, d.recording.source, "", "", *[""] * len(emotions), d.error])
        else:
            writer.writerow([d.recording.id, d.recording.source, f"{d.duration:.4f}", d.result["emotion"],
                             *[f"{d.result['probs'][e]:.6f}" for e in emotions], ""])
    return buf.getvalue()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtlser-infer", description="Label audio with a trained mtlser model (files, folders, lists, "
        "wav.scp), or decode a data dir (stage 4).", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 all labelled; 3 some inputs failed (each has an error record); 1 fatal error.")
    p.add_argument("inputs", nargs="*", help="audio files, folders, list files, wav.scp")
    p.add_argument("--model", "--model-dir", dest="model", required=True,
                   help="model dir, ensemble dir, or pack (.zip); with --fold: the experiment dir")
    p.add_argument("--wav", nargs="+", default=[], help="more inputs (the older spelling of the positional ones)")
    p.add_argument("--output", "-o", help="write the labels here (default: stdout)")
    p.add_argument("--format", choices=("jsonl", "csv", "utt2emo"), help="default: from --output's name, else jsonl")
    p.add_argument("--window", type=float, default=WINDOW_S,
                   help=f"label recordings longer than this many seconds in windows (default {WINDOW_S:g}; 0: whole)")
    p.add_argument("--hop", type=float, default=HOP_S, help=f"seconds between window starts (default {HOP_S:g})")
    p.add_argument("--data-dir", help="data dir to decode (stage 4)")
    p.add_argument("--out", help="decode dir to write (default MODEL/decode_<data dir name>)")
    p.add_argument("--folds-dir", help="dir of fold data dirs; with --fold decodes foldNN/test")
    p.add_argument("--fold", type=int)
    p.add_argument("--weights", help="weights file of the model dir (default model.safetensors, else "
                   "best.safetensors)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="bf16/fp16: autocast on GPUs (default fp32)")
    p.add_argument("--batch-size", type=int, default=16, help="most recordings (or windows) per batch")
    p.add_argument("--batch-seconds", type=float, default=60.0,
                   help="most padded audio per batch, in seconds (bounds memory)")
    p.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from mtlser.infer.predictor import SERPredictor

    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    model = Path(args.model)
    data_dir = Path(args.data_dir) if args.data_dir else None
    if args.fold is not None:
        if not args.folds_dir:
            raise MtlserError("--fold needs --folds-dir (the dir of the fold data dirs)")
        name = fold_name(args.fold)
        model = model / name
        data_dir = Path(args.folds_dir) / name / "test"
    inputs = list(args.inputs) + list(args.wav)
    if data_dir is not None and inputs:
        raise MtlserError("give either inputs (files, folders, lists, wav.scp) or --data-dir, not both")
    if data_dir is None and not inputs:
        raise MtlserError("nothing to label: give audio files, folders, list files or a wav.scp "
                          "(or --data-dir / --folds-dir with --fold)")
    fmt = output_format(args.format, args.output)
    recordings = find_recordings(inputs) if inputs else []
    if fmt == "utt2emo":
        spaced = [r.id for r in recordings if len(r.id.split()) != 1]
        if spaced:
            raise MtlserError(f"'{spaced[0]}': a Kaldi table's ids cannot contain spaces; use --format jsonl or csv")
    predictor = SERPredictor.from_pretrained(model, args.device, args.weights, args.precision)
    if data_dir is not None:
        out = Path(args.out) if args.out else model / f"decode_{data_dir.name}"
        decode_data_dir(predictor, data_dir, out, args.batch_size, args.batch_seconds, not args.no_progress)
        return 0
    done = label(predictor, recordings, window=args.window, hop=args.hop, batch_size=args.batch_size,
                 batch_seconds=args.batch_seconds, progress=not args.no_progress)
    text = render(done, fmt, predictor.emotions)
    if args.output:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    failed = [d for d in done if d.error is not None]
    for d in failed:
        logger.error("%s: %s", d.recording.id, d.error)
    logger.info("labelled %d of %d recordings%s", len(done) - len(failed), len(done),
                f" into {args.output}" if args.output else "")
    return EXIT_SOME_FAILED if failed else 0


def console_main() -> None:
    """The ``mtlser-infer`` console script."""
    sys.exit(run_main(main))


if __name__ == "__main__":
    console_main()
