"""Export to ONNX: one graph that answers as mtlser does, checked in onnxruntime before it is written.

    python -m mtlser.export onnx --model-dir exp/<tag>/fold01 --out fold01.onnx   # a dir, a pack, an ensemble
    mtlser-infer --model fold01.onnx --backend onnx [--precision int8] recordings/

The graph (opset :data:`OPSET`) takes a zero-padded batch and each row's length::

    inputs   wavs (batch, samples) float32 at the model's rate; lengths (batch,) int64 valid samples
    outputs  emo_probs (batch, emotions) float32, in the model's emotion order
             frame_lens (batch,) int64
             ctc_log_probs (batch, frames, tokens) float32   (with --tokens, models with a CTC head)

Batch and time axes are dynamic. An ensemble is one graph that averages its members' probabilities
(and, with tokens, their per-frame token posteriors, as :class:`mtlser.infer.SERPredictor` does).

**Per-utterance CNN normalisation.** The first CNN layer of group-norm backbones (wav2vec2-base,
the mini recipe's) normalises each channel over time. In the graph its statistics are taken over
each row's own ``lengths`` frames (masked sums), so a row's answer does not depend on what else is
in its batch: the same maths as mtlser on that utterance alone, whatever the model's
``backbone.padding_invariant_cnn`` (the reference here is mtlser one utterance at a time).

**The check.** Before anything is written, the graph runs in onnxruntime on probe signals (the
shortest input the model takes up to a few seconds) and on a check set (``--check-data``: a data
dir, ``wav.scp``, folder or list; default the fold's test files, found through the model dir's
``decode_test/data_dir``), each input alone and in padded batches, and is compared with mtlser.
Any emotion probability more than :data:`TOLERANCE` away is a refusal (exit 1, nothing written).
What was measured goes into ``OUT.json`` and the model card ``OUT.md`` beside the graph, and the
graph's own metadata carries what a runtime needs (emotions, sample rate, minimum length, tokens).
onnxruntime is an optional extra: ``pip install 'mtlser[onnx]'``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mtlser.infer.package import CARD_JSON, ModelFiles
from mtlser.infer.predictor import SERPredictor, read_model
from mtlser.model import lengths as lengths_mod
from mtlser.model.ser_model import SERModel, mean_pool
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)

#: Largest difference in any emotion probability, mtlser vs onnxruntime, that an export accepts.
TOLERANCE = 1e-4
#: ONNX opset of the graph (onnxruntime >= 1.17 runs it).
OPSET = 17
INPUTS = ("wavs", "lengths")
#: Inputs per padded batch in the check (rows of different lengths: the padding is exercised).
CHECK_BATCH = 8
#: Metadata keys of the graph (JSON values): what a runtime needs besides the graph.
META_KEY = "mtlser"


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MtlserError("the ONNX backend needs onnxruntime: pip install 'mtlser[onnx]' "
                          "(or pip install onnxruntime onnx)") from None
    return onnxruntime


class OnnxGraph(nn.Module):
    """The traced model: (wavs (B, S), lengths (B,)) -> emotion probabilities (and frame posteriors).

    The CNN is unrolled as :meth:`mtlser.model.backbone.Backbone._cnn` with its group norms taking
    statistics over each row's valid frames by masked sums (traceable with dynamic shapes, unlike
    :func:`mtlser.model.fast_ops.valid_group_norm`'s per-row loop); the rest is the model's own code.
    """

    def __init__(self, models: list[SERModel], with_tokens: bool):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.with_tokens = with_tokens

    @staticmethod
    def masked_group_norm(x: Tensor, lens: Tensor, norm: nn.GroupNorm) -> Tensor:
        """GroupNorm of (B, C, T) over each row's first ``lens`` frames; padded frames set to 0."""
        B, C, T = x.shape
        g = norm.num_groups
        mask = (torch.arange(T, device=x.device)[None, :] < lens[:, None]).to(x.dtype)  # (B, T)
        xg = x.reshape(B, g, C // g, T)
        m = mask[:, None, None, :]  # (B, 1, 1, T)
        n = (lens.clamp(min=1).to(x.dtype) * (C // g))[:, None, None, None]
        mean = (xg * m).sum(dim=(2, 3), keepdim=True) / n
        var = (((xg - mean) * m) ** 2).sum(dim=(2, 3), keepdim=True) / n
        y = ((xg - mean) / torch.sqrt(var + norm.eps)).reshape(B, C, T)
        if norm.affine:
            y = y * norm.weight[None, :, None] + norm.bias[None, :, None]
        return y * mask[:, None, :]

    def cnn(self, model: SERModel, wavs: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
        backbone = model.backbone
        if backbone.normalize_waveform:
            wavs = backbone._normalize(wavs, lens)
        x = wavs.unsqueeze(1)  # (B, 1, S)
        for layer in backbone.model.feature_extractor.conv_layers:
            x = layer.conv(x)
            lens = lengths_mod.layer_frames(lens, layer.kernel_size, layer.stride)
            if isinstance(layer.layer_norm, nn.GroupNorm):
                x = self.masked_group_norm(x, lens, layer.layer_norm)
            elif layer.layer_norm is not None:
                x = layer.layer_norm(x)  # per frame: padding cannot reach it
            x = nn.functional.gelu(x)
        return x.transpose(1, 2), lens  # (B, T, C), (B,)

    def forward(self, wavs: Tensor, lengths: Tensor):
        probs, frame_probs, frame_lens = None, None, None
        for model in self.models:
            feats, frame_lens = self.cnn(model, wavs, lengths)
            states = model.backbone.transformer_states(feats, frame_lens)
            fused = model.fusion(states) if model.fusion is not None else states[-1]
            p = torch.softmax(model.emotion_head(mean_pool(fused, frame_lens)), dim=-1)
            probs = p if probs is None else probs + p
            if self.with_tokens:
                fp = torch.softmax(model.ctc_head(fused), dim=-1)
                frame_probs = fp if frame_probs is None else frame_probs + fp
        n = float(len(self.models))
        if self.with_tokens:
            return probs / n, frame_lens, torch.log(frame_probs / n)
        return probs / n, frame_lens


def graph_of(predictor: SERPredictor, tokens: bool) -> OnnxGraph:
    if tokens and predictor.tokens is None:
        raise MtlserError("--tokens: this model has no class tokens to export (no CTC head, or ensemble members "
                          "with different token lists or CNNs)")
    for m in predictor.models:
        m.backbone.pos_conv_impl = "conv"  # the FFT form is a speed-up of the same convolution; ONNX has the conv
    return OnnxGraph(list(predictor.models), tokens).eval()


def graph_bytes(predictor: SERPredictor, tokens: bool = False, meta: dict | None = None) -> bytes:
    """The ONNX model (bytes) of a predictor's model or ensemble, with its runtime metadata."""
    import warnings

    graph = graph_of(predictor, tokens)
    n = max(predictor.min_samples * 4, predictor.sample_rate)
    example = (torch.zeros(2, n).normal_(generator=torch.Generator().manual_seed(0)) * 0.1,
               torch.tensor([n, n - 7], dtype=torch.long))
    outputs = ["emo_probs", "frame_lens"] + (["ctc_log_probs"] if tokens else [])
    axes = {"wavs": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}, "emo_probs": {0: "batch"},
            "frame_lens": {0: "batch"}}
    if tokens:
        axes["ctc_log_probs"] = {0: "batch", 1: "frames"}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(graph, example, buf, input_names=list(INPUTS), output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    import onnx

    proto = onnx.load_from_string(buf.getvalue())
    info = {"emotions": predictor.emotions, "sample_rate": predictor.sample_rate,
            "min_samples": predictor.min_samples, "tokens": predictor.tokens if tokens else None,
            "members": len(predictor.models), **(meta or {})}
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(info)
    return proto.SerializeToString()


def _require_onnx():
    require_onnxruntime()
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MtlserError("exporting to ONNX needs the onnx package: pip install 'mtlser[onnx]'") from None


def check_set_of(files: ModelFiles, check_data: str | None) -> tuple[list[np.ndarray], str]:
    """The check set's audio at the model's rate, and where it came from (the fold's test files by default)."""
    from mtlser.infer.audio import find_recordings, load

    if check_data is None:
        first = files.members()[0][1] if files.is_ensemble else files
        pointer = first.base / "decode_test" / "data_dir" if first.base is not None else None
        if pointer is None or not pointer.is_file():
            return [], "none (no --check-data, and the model has no decode_test/data_dir: a pack or a bare dir)"
        check_data = pointer.read_text().strip()
    path = Path(check_data)
    sources = [str(path / "wav.scp")] if (path / "wav.scp").is_file() else [check_data]
    recordings = find_recordings(sources)
    if not recordings:
        raise MtlserError(f"--check-data {check_data}: no audio in it")
    return recordings, check_data


def compare(predictor: SERPredictor, session, probes: list[np.ndarray], batch: int = CHECK_BATCH) -> dict:
    """Max |Δp| between mtlser (each input alone: the reference) and the graph (alone, and padded batches)."""
    from mtlser.infer.backends import run_session

    if not probes:
        return {"n": 0, "max_abs_diff_single": None, "max_abs_diff_padded_batch": None}
    ours = np.concatenate([predictor.predict_arrays([w])[0] for w in probes])
    single = np.concatenate([run_session(session, [w])[0] for w in probes])
    padded = np.concatenate([run_session(session, probes[i:i + batch])[0] for i in range(0, len(probes), batch)])
    return {"n": len(probes), "max_abs_diff_single": float(np.abs(single - ours).max()),
            "max_abs_diff_padded_batch": float(np.abs(padded - ours).max()),
            "label_agreement": float(np.mean(single.argmax(1) == ours.argmax(1)))}


def export_onnx(model_path: str | Path, out: str | Path, check_data: str | None = None, tokens: bool = False,
                tolerance: float = TOLERANCE, weights: str | None = None) -> dict:
    """Write ``out`` (.onnx), ``out.json`` and ``out.md`` for a model dir, ensemble or pack, or refuse (module doc)."""
    from mtlser.export.hf import probe_signals
    from mtlser.infer.audio import load
    from mtlser.infer.backends import session_from_bytes
    from mtlser.utils.fileio import atomic_write_bytes, atomic_write_text

    _require_onnx()
    out = Path(out)
    if out.suffix != ".onnx":
        raise MtlserError(f"--out {out}: give a file name ending in .onnx")
    files = ModelFiles.open(model_path)
    predictor = SERPredictor.from_pretrained(model_path, weights=weights)
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
                  members=len(predictor.models), sample_rate=predictor.sample_rate,
                  onnxruntime_version=require_onnxruntime().__version__, torch_version=torch.__version__,
                  export_s=round(time.perf_counter() - t0, 1))
    if not worst <= tolerance:
        raise MtlserError(f"{model_path}: onnxruntime's probabilities are up to {worst:.2e} away from mtlser's "
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

    lines = [f"# {facts.get('name') or Path(files.location).name} as ONNX (exported from mtlser)", "",
             f"Emotions, in output order: {', '.join(result['emotions'])}. Sample rate {result['sample_rate']} Hz. "
             f"{'Ensemble of ' + str(result['members']) + ' models (mean probabilities). ' if result['members'] > 1 else ''}"
             f"Class tokens: {'output ctc_log_probs' if result['tokens'] else 'not exported'}.", "",
             "    mtlser-infer --model THIS.onnx --backend onnx recordings/", "",
             "## Exactness (measured at export, onnxruntime vs mtlser fp32 one input at a time)", "",
             f"- probe signals ({pr['n']}, {min(pr['lengths'])} to {max(pr['lengths'])} samples): max |dp| "
             f"{fmt(pr['max_abs_diff_single'])} alone, {fmt(pr['max_abs_diff_padded_batch'])} in a padded batch",
             f"- check set ({cs['source']}; {cs['n']} files): max |dp| {fmt(cs['max_abs_diff_single'])} alone, "
             f"{fmt(cs['max_abs_diff_padded_batch'])} in padded batches of {CHECK_BATCH}",
             f"- tolerance {result['tolerance']:g}; onnxruntime {result['onnxruntime_version']}, torch "
             f"{result['torch_version']}", ""]
    return "\n".join(lines) + "\n"
