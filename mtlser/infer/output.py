"""Label files, folders, lists and wav.scp entries, and write the labels in one of three formats.

Inputs: audio files (any rate, mono or multi-channel: mixed down and resampled), folders (searched
recursively for audio by extension), a Kaldi wav.scp (``*.scp``), and list files (one path a line).
Output, one record per input in the order given:

    jsonl     {"id", "file", "duration", "emotion", "probs": {...}, "tokens": [...]} per line;
              a recording longer than the window also has "windows": [{"start", "end", "emotion",
              "probs", "tokens"}, ...] and its "probs" are the mean over its windows;
              a failure is {"id", "file", "error"}
    csv       id,file,duration,emotion,p_<emotion>...,[<attribute>...,]error (whole-file figures);
              with --per-window: id,file,start,end,emotion,p_<emotion>...,[<attribute>...,]error, one row
              per window of a recording longer than the window (start 0 and end = its duration otherwise)
A model with an attribute head (issue 21) adds "attributes": {name: value} (jsonl; windows too) and one
column per attribute (csv), each on its declared scale.
    utt2emo   Kaldi table "id emotion" (failures only on stderr)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys

from mtlser.expdir import UTT2EMO_HYP
from mtlser.infer.audio import Recording
from mtlser.infer.runner import Labelled, label
from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_write_text

logger = logging.getLogger("mtlser.infer")

#: Exit status when some inputs could not be labelled (the others were).
EXIT_SOME_FAILED = 3
#: Default windows for files: utterance-sized pieces side by side (see mtlser.infer.audio.windows). Each second
#: is computed once: overlapping windows (--hop 10) give a timeline twice the points for twice the compute.
WINDOW_S = 20.0
HOP_S = WINDOW_S


def output_format(fmt: str | None, output: str | None) -> str:
    if fmt:
        return fmt
    name = (output or "").lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith("utt2emo") or name.endswith(UTT2EMO_HYP):
        return "utt2emo"
    return "jsonl"


def render(done: list[Labelled], fmt: str, emotions: list[str], attributes: list[str] | None = None,
           per_window: bool = False) -> str:
    """The output file's text in ``fmt`` (see the module doc)."""
    if fmt == "jsonl":
        return "".join(json.dumps(d.as_json(), ensure_ascii=False) + "\n" for d in done)
    if fmt == "utt2emo":
        if not emotions:
            raise MtlserError("--format utt2emo: this model has no classes (attributes only); write jsonl or csv")
        return "".join(f"{d.recording.id} {d.result['emotion']}\n" for d in done if d.error is None)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    attributes = attributes or []
    emotion = ["emotion"] if emotions else []  # a dimensional-only model has attributes only
    if per_window:
        _window_rows(writer, done, emotions, attributes)
        return buf.getvalue()
    writer.writerow(["id", "file", "duration", *emotion, *[f"p_{e}" for e in emotions], *attributes, "error"])
    for d in done:
        if d.error is not None:
            writer.writerow([d.recording.id, d.recording.source, "", *[""] * len(emotion),
                             *[""] * (len(emotions) + len(attributes)), d.error])
        else:
            writer.writerow([d.recording.id, d.recording.source, f"{d.duration:.4f}",
                             *[d.result["emotion"] for _ in emotion],
                             *[f"{d.result['probs'][e]:.6f}" for e in emotions],
                             *[f"{d.result['attributes'][a]:.4f}" for a in attributes], ""])
    return buf.getvalue()


def _window_rows(writer, done: list[Labelled], emotions: list[str], attributes: list[str]) -> None:
    """--per-window: a row per window (a recording within one window is one window, 0 to its duration)."""
    emotion = ["emotion"] if emotions else []  # a dimensional-only model has attributes only
    writer.writerow(["id", "file", "start", "end", *emotion, *[f"p_{e}" for e in emotions], *attributes, "error"])
    for d in done:
        if d.error is not None:
            writer.writerow([d.recording.id, d.recording.source, "", "", *[""] * len(emotion),
                             *[""] * (len(emotions) + len(attributes)), d.error])
            continue
        spans = d.result.get("windows") or [{"start": 0.0, "end": d.duration, **d.result}]
        for w in spans:
            writer.writerow([d.recording.id, d.recording.source, f"{w['start']:.4f}", f"{w['end']:.4f}",
                             *[w["emotion"] for _ in emotion], *[f"{w['probs'][e]:.6f}" for e in emotions],
                             *[f"{w['attributes'][a]:.4f}" for a in attributes], ""])


def check_per_window(per_window: bool, fmt: str) -> None:
    """--per-window shapes CSV rows; the other formats have no place for it: say so before loading the model."""
    if per_window and fmt != "csv":
        raise MtlserError(f"--per-window gives CSV rows, but the output format is {fmt}; use --format csv (or an "
                          "--output ending in .csv); jsonl already lists each recording's windows")


def load_predictor(model, device: str = "cpu", weights: str | None = None, precision: str = "fp32",
                   num_threads: int = 0, backend: str = "torch"):
    """The model (a model dir, an ensemble dir or a pack) with torch's CPU threads set (0: torch's default)."""
    import torch

    from mtlser.infer.predictor import SERPredictor

    if num_threads > 0:
        torch.set_num_threads(num_threads)
    return SERPredictor.from_pretrained(model, device, weights, precision, backend, num_threads)


def check_ids(recordings: list[Recording], fmt: str) -> None:
    """A Kaldi table cannot key a recording whose id has a space: say so before loading the model."""
    if fmt == "utt2emo":
        spaced = [r.id for r in recordings if len(r.id.split()) != 1]
        if spaced:
            raise MtlserError(f"'{spaced[0]}': a Kaldi table's ids cannot contain spaces; use --format jsonl or csv")


def label_and_write(predictor, recordings: list[Recording], fmt: str, output: str | None, window: float = WINDOW_S,
                    hop: float = HOP_S, batch_size: int = 16, batch_seconds: float = 60.0,
                    progress: bool = True, timeline: str | None = None, per_window: bool = False,
                    overwrite: bool = False) -> int:
    """Label the recordings into ``output`` (stdout when None) in ``fmt``; the exit status (see EXIT_SOME_FAILED).
    With ``timeline`` (a dir): a CSV and a PNG per windowed recording (mtlser.infer.timeline); with
    ``per_window`` (csv): a row per window."""
    done = label(predictor, recordings, window=window, hop=hop, batch_size=batch_size,
                 batch_seconds=batch_seconds, progress=progress)
    attrs = [a.name for a in predictor.attributes] if getattr(predictor, "attributes", None) else None
    text = render(done, fmt, predictor.emotions, attrs, per_window)
    if timeline:
        from mtlser.infer.timeline import write_timelines

        write_timelines(done, predictor.emotions, timeline, overwrite)
    if output:
        atomic_write_text(output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    failed = [d for d in done if d.error is not None]
    for d in failed:
        logger.error("%s: %s", d.recording.id, d.error)
    logger.info("labelled %d of %d recordings%s", len(done) - len(failed), len(done),
                f" into {output}" if output else "")
    return EXIT_SOME_FAILED if failed else 0
