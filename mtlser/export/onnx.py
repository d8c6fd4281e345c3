"""Export to ONNX: one graph that answers as mtlser does, checked in onnxruntime before it is written.

    python -m mtlser.export onnx --model-dir exp/<tag>/fold01 --out fold01.onnx   # a dir, a pack, an ensemble
    mtlser-infer --model fold01.onnx --backend onnx [--precision int8] recordings/

The graph itself (inputs, outputs, dynamic axes, the per-utterance CNN normalisation that makes padding
change nothing) is :mod:`mtlser.infer.onnx_graph`'s; this module checks it and writes it.

**The check.** Before anything is written, the graph runs in onnxruntime on probe signals (the
shortest input the model takes up to a few seconds) and on a check set (``--check-data``: a data
dir, ``wav.scp``, folder or list; default the fold's test files, found through the model dir's
``decode_test/data_dir``), each input alone and in padded batches, and is compared with mtlser.
Any emotion probability (or, for a model with an attribute head, any attribute value on its declared
scale) more than :data:`TOLERANCE` away is a refusal (exit 1, nothing written).
What was measured goes into ``OUT.json`` and the model card ``OUT.md`` beside the graph, and the
graph's own metadata carries what a runtime needs (emotions, sample rate, minimum length, tokens).
onnxruntime is an optional extra: ``pip install 'mtlser[onnx]'``.
"""


from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from mtlser.expdir import DATA_DIR_POINTER, DECODE_TEST
# TOLERANCE and OnnxGraph are this export's API too (the graph and its check live in mtlser.infer).
from mtlser.infer.onnx_graph import (CHECK_BATCH, OPSET, TOLERANCE, OnnxGraph, compare,  # noqa: F401
                                     graph_bytes, probe_signals, require_onnxruntime)
from mtlser.infer.package import CARD_JSON, ModelFiles
from mtlser.infer.predictor import SERPredictor
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)


def _require_onnx():
    require_onnxruntime()
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MtlserError("exporting to ONNX needs the onnx package: pip install 'mtlser[onnx]'") from None


def check_set_of(files: ModelFiles, check_data: str | None) -> tuple[list, str]:
    """The check set's recordings, and where they came from (the fold's test files by default)."""
    from mtlser.infer.backends import fold_test_data, recordings_of

    if check_data is None:
        decoded = fold_test_data(files)
        if decoded is None:
            return [], (f"none (no --check-data, and the model has no {DECODE_TEST}/{DATA_DIR_POINTER}: a pack or "
                        "a bare dir)")
        check_data = str(decoded)
    return recordings_of(check_data, "--check-data"), check_data


def export_onnx(model_path: str | Path, out: str | Path, check_data: str | None = None, tokens: bool = False,
                tolerance: float = TOLERANCE, weights: str | None = None) -> dict:
    """Write ``out`` (.onnx), ``out.json`` and ``out.md`` for a model dir, ensemble or pack, or refuse (module doc)."""
    from mtlser.infer.audio import load
    from mtlser.infer.backends import session_from_bytes
    from mtlser.utils.fileio import atomic_write_bytes, atomic_write_text, check_output

    _require_onnx()
    out = Path(out)
    if out.suffix != ".onnx":
        raise MtlserError(f"--out {out}: give a file name ending in .onnx")
    for written in (out, out.with_suffix(".json"), out.with_suffix(".md")):
        check_output(written, [model_path, check_data], "--out")
    files = ModelFiles.open(model_path)
    predictor = SERPredictor.from_pretrained(model_path, weights=weights)
    if not predictor.emotions:  # refused before the check set is read, naming the model
        from mtlser.infer.onnx_graph import class_free_refusal

        raise MtlserError(f"{model_path}: {class_free_refusal(predictor)}")
    recordings, source = check_set_of(files, check_data)
    check_wavs = []
    for rec in recordings:
        try:
            wav = load(rec, predictor.sample_rate)
        except MtlserError as e:
            raise MtlserError(f"--check-data {source}: {rec.id}: {e}") from None
        if len(wav) >= predictor.min_samples:
            check_wavs.append(wav)
    t0 = time.perf_counter()
    data = graph_bytes(predictor, tokens)
    session = session_from_bytes(data)
    probes = probe_signals(predictor.sample_rate, predictor.min_samples)
    result = {"source": str(model_path), "tolerance": tolerance, "opset": OPSET,
              "reference": "mtlser (torch fp32), each input alone",
              "probes": compare(predictor, session, probes), "check_set": {"source": source,
                                                                          **compare(predictor, session, check_wavs)}}
    result["probes"]["lengths"] = [len(p) for p in probes]
    worst = max(v for part in ("probes", "check_set") for k in ("max_abs_diff_single", "max_abs_diff_padded_batch")
                if (v := result[part][k]) is not None)
    result.update(max_abs_diff=worst, tokens=bool(tokens), emotions=predictor.emotions,
                  attributes=[a.name for a in predictor.attributes] if predictor.attributes else None,
                  members=len(predictor.models), sample_rate=predictor.sample_rate,
                  onnxruntime_version=require_onnxruntime().__version__, torch_version=torch.__version__,
                  export_s=round(time.perf_counter() - t0, 1))
    if not worst <= tolerance:
        what = "probabilities and attribute values" if predictor.attributes else "probabilities"
        raise MtlserError(f"{model_path}: onnxruntime's {what} are up to {worst:.2e} away from mtlser's "
                          f"(tolerance {tolerance:g}); not written, nothing was written to {out}")
    data = graph_bytes(predictor, tokens, {"export_check": {k: result[k] for k in ("max_abs_diff", "tolerance")}})
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), _card(files, result))
    atomic_write_bytes(out, data)  # last: a graph on disk always has its check beside it
    logger.info("exported %s to %s: max |dp| %.2e vs mtlser on %d probes and %d check files (tolerance %g)",
                model_path, out, worst, len(probes), len(check_wavs), tolerance)
    return result


def _card(files: ModelFiles, result: dict) -> str:
    facts = json.loads(files.read_text(CARD_JSON)) if files.has(CARD_JSON) else {}
    cs, pr = result["check_set"], result["probes"]

    def fmt(v):
        return "n/a" if v is None else f"{v:.1e}"

    attr_worst = max((v for part in (cs, pr) for k, v in part.items()
                      if k.startswith("attributes_max_abs_diff") and v is not None), default=None)

    lines = [f"# {facts.get('name') or Path(files.location).name} as ONNX (exported from mtlser)", "",
             f"Emotions, in output order: {', '.join(result['emotions'])}. Sample rate {result['sample_rate']} Hz. "
             f"{'Ensemble of ' + str(result['members']) + ' models (mean probabilities). ' if result['members'] > 1 else ''}"
             f"Class tokens: {'output ctc_log_probs' if result['tokens'] else 'not exported'}."
             + (f" Attributes (output attributes, on their declared scales): {', '.join(result['attributes'])}."
                if result["attributes"] else ""), "",
             "    mtlser-infer --model THIS.onnx --backend onnx recordings/", "",
             "## Exactness (measured at export, onnxruntime vs mtlser fp32 one input at a time)", "",
             f"- probe signals ({pr['n']}, {min(pr['lengths'])} to {max(pr['lengths'])} samples): max |dp| "
             f"{fmt(pr['max_abs_diff_single'])} alone, {fmt(pr['max_abs_diff_padded_batch'])} in a padded batch",
             f"- check set ({cs['source']}; {cs['n']} files): max |dp| {fmt(cs['max_abs_diff_single'])} alone, "
             f"{fmt(cs['max_abs_diff_padded_batch'])} in padded batches of {CHECK_BATCH}",
             *([f"- attribute values (absolute, on their declared scales; within the figures above): max |d| "
                f"{fmt(attr_worst)}"] if result["attributes"] else []),
             f"- tolerance {result['tolerance']:g}; onnxruntime {result['onnxruntime_version']}, torch "
             f"{result['torch_version']}", ""]
    return "\n".join(lines) + "\n"
