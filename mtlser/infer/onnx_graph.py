"""The ONNX graph of a trained model, and onnxruntime to run and check it (the export writes it to files).

    python -m mtlser.export onnx --model-dir exp/<tag>/fold01 --out fold01.onnx   # a dir, a pack, an ensemble
    mtlser-infer --model fold01.onnx --backend onnx [--precision int8] recordings/

The graph (opset :data:`OPSET`) takes a zero-padded batch and each row's length::

    inputs   wavs (batch, samples) float32 at the model's rate; lengths (batch,) int64 valid samples
    outputs  emo_probs (batch, emotions) float32, in the model's emotion order
             frame_lens (batch,) int64
             ctc_log_probs (batch, frames, tokens) float32   (with --tokens, models with a CTC head)
             attributes (batch, K) float32 on their declared scales, in the declaration's order
                                                              (models with an attribute head, issue 21)

Batch and time axes are dynamic. An ensemble is one graph that averages its members' probabilities
(with tokens, their per-frame token posteriors; with attributes, their attribute values), as
:class:`mtlser.infer.SERPredictor` does. Outputs are found by name (:func:`outputs_by_name`).

**Per-utterance CNN normalisation.** The first CNN layer of group-norm backbones (wav2vec2-base,
the mini recipe's) normalises each channel over time. In the graph its statistics are taken over
each row's own ``lengths`` frames (masked sums), so a row's answer does not depend on what else is
in its batch: the same maths as mtlser on that utterance alone, whatever the model's
``backbone.padding_invariant_cnn`` (the reference here is mtlser one utterance at a time).

The check that compares it with mtlser before an export writes anything (:func:`compare`, on
:func:`probe_signals` and a check set) and the files it writes: :mod:`mtlser.export.onnx`. onnxruntime is an
optional extra: ``pip install 'mtlser[onnx]'``.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import torch
from torch import Tensor, nn

from mtlser.infer.predictor import SERPredictor
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
#: The graph's output names, in order (those of a model's graph are a subsequence: :meth:`OnnxGraph.output_names`).
OUTPUTS = ("emo_probs", "frame_lens", "ctc_log_probs", "attributes")


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
        # An ensemble's members agree on the declaration (SERPredictor checks it): all have the head or none.
        self.with_attributes = models[0].attr_head is not None

    def output_names(self) -> list[str]:
        return ["emo_probs", "frame_lens"] + (["ctc_log_probs"] if self.with_tokens else []) + \
            (["attributes"] if self.with_attributes else [])

    @staticmethod
    def attributes_of(model: SERModel, pooled: Tensor) -> Tensor:
        """The attribute values (B, K) on their declared scales, as :meth:`SERModel.predict` gives them."""
        return model.attr_head.to_scale(model.attr_head(pooled))

    @staticmethod
    def masked_group_norm(x: Tensor, lens: Tensor, norm: nn.GroupNorm) -> Tensor:
        """GroupNorm of (B, C, T) over each row's first ``lens`` frames; padded frames set to 0.

        Two-pass statistics (mean, then the variance of the centred values, as torch's GroupNorm), in as few
        passes over the tensor as that allows: this is wav2vec2-base's largest activation (512 channels at
        the first layer's 3.2 kHz frame rate), and each pass over it shows in the graph's time."""
        B, C, T = x.shape
        g = norm.num_groups
        mask = (torch.arange(T, device=x.device)[None, :] < lens[:, None]).to(x.dtype)  # (B, T)
        xg = x.reshape(B, g, C // g, T)
        m = mask[:, None, None, :]  # (B, 1, 1, T)
        n = (lens.clamp(min=1).to(x.dtype) * (C // g))[:, None, None, None]
        mean = (xg * m).sum(dim=(2, 3), keepdim=True) / n
        centred = (xg - mean) * m  # padded frames 0 from here on
        var = (centred * centred).sum(dim=(2, 3), keepdim=True) / n
        y = (centred / torch.sqrt(var + norm.eps)).reshape(B, C, T)
        if norm.affine:
            y = y * norm.weight[None, :, None] + norm.bias[None, :, None] * mask[:, None, :]
        return y

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
        probs, frame_probs, frame_lens, attrs = None, None, None, None
        for model in self.models:
            feats, frame_lens = self.cnn(model, wavs, lengths)
            states = model.backbone.transformer_states(feats, frame_lens)
            fused = model.fusion(states) if model.fusion is not None else states[-1]
            pooled = mean_pool(fused, frame_lens)
            p = torch.softmax(model.emotion_head(pooled), dim=-1)
            probs = p if probs is None else probs + p
            if self.with_tokens:
                fp = torch.softmax(model.ctc_head(fused), dim=-1)
                frame_probs = fp if frame_probs is None else frame_probs + fp
            if self.with_attributes:
                a = self.attributes_of(model, pooled)
                attrs = a if attrs is None else attrs + a
        n = float(len(self.models))
        out = [probs / n, frame_lens]
        if self.with_tokens:
            out.append(torch.log(frame_probs / n))
        if self.with_attributes:
            out.append(attrs / n)
        return tuple(out)


def class_free_refusal(predictor: SERPredictor) -> str:
    """Why a model with no classes (attributes only) is not exported: the graph's first output is the emotion
    probabilities, which such a model does not have."""
    names = ", ".join(a.name for a in predictor.attributes)
    return (f"has no classes, only an attribute head ({names}), and the ONNX graph is built around the emotion "
            "probabilities; use mtlser-infer or the pack for its attributes")


def graph_of(predictor: SERPredictor, tokens: bool) -> OnnxGraph:
    if tokens and predictor.tokens is None:
        raise MtlserError("--tokens: this model has no class tokens to export (no CTC head, or ensemble members "
                          "with different token lists or CNNs)")
    if not predictor.emotions:
        raise MtlserError(f"this model {class_free_refusal(predictor)}")
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
    outputs = graph.output_names()
    axes = {"wavs": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}, "emo_probs": {0: "batch"},
            "frame_lens": {0: "batch"}, "ctc_log_probs": {0: "batch", 1: "frames"}, "attributes": {0: "batch"}}
    axes = {k: v for k, v in axes.items() if k in INPUTS or k in outputs}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(graph, example, buf, input_names=list(INPUTS), output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    import onnx

    proto = onnx.load_from_string(buf.getvalue())
    from mtlser.data.attributes import declaration_to_yaml

    info = {"emotions": predictor.emotions, "sample_rate": predictor.sample_rate,
            "min_samples": predictor.min_samples, "tokens": predictor.tokens if tokens else None,
            "attributes": declaration_to_yaml(predictor.attributes) if graph.with_attributes else None,
            "members": len(predictor.models), **(meta or {})}
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(info)
    return proto.SerializeToString()


def compare(predictor: SERPredictor, session, probes: list[np.ndarray], batch: int = CHECK_BATCH) -> dict:
    """Max |Δp| between mtlser (each input alone: the reference) and the graph (alone, and padded batches).

    With an attribute head, each ``max_abs_diff_*`` is the larger of the probabilities' and the attribute
    values' (absolute, on their declared scales), and ``attributes_max_abs_diff_*`` gives the latter apart."""
    with_attrs = bool(getattr(predictor, "attributes", None))
    empty = {"n": 0, "max_abs_diff_single": None, "max_abs_diff_padded_batch": None}
    if not probes:
        return {**empty, **({"attributes_max_abs_diff_single": None,
                             "attributes_max_abs_diff_padded_batch": None} if with_attrs else {})}
    ours = [predictor.predict_all([w]) for w in probes]
    single = [outputs_by_name(session, run_session(session, [w])) for w in probes]
    padded = [outputs_by_name(session, run_session(session, probes[i:i + batch]))
              for i in range(0, len(probes), batch)]

    def cat(parts, key):
        return np.concatenate([p[key] for p in parts])

    ref_p = np.concatenate([o[0] for o in ours])
    result = {"n": len(probes), "max_abs_diff_single": float(np.abs(cat(single, "emo_probs") - ref_p).max()),
              "max_abs_diff_padded_batch": float(np.abs(cat(padded, "emo_probs") - ref_p).max()),
              "label_agreement": float(np.mean(cat(single, "emo_probs").argmax(1) == ref_p.argmax(1)))}
    if with_attrs:
        if "attributes" not in single[0]:
            raise MtlserError("the ONNX graph has no attributes output, but the model has an attribute head")
        ref_a = np.concatenate([o[2] for o in ours])
        for how, parts in (("single", single), ("padded_batch", padded)):
            d = float(np.abs(cat(parts, "attributes") - ref_a).max())
            result[f"attributes_max_abs_diff_{how}"] = d
            result[f"max_abs_diff_{how}"] = max(result[f"max_abs_diff_{how}"], d)
    return result


def outputs_by_name(session, outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """A session's outputs (as :func:`run_session` returns them) by the graph's output names."""
    return {o.name: v for o, v in zip(session.get_outputs(), outputs)}



def probe_signals(sample_rate: int, min_samples: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic test inputs: the shortest the model takes, and a few utterance-like lengths."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (min_samples, min_samples + 37, int(0.77 * sample_rate), int(2.31 * sample_rate)):
        t = np.arange(n) / sample_rate
        f0 = 110 + 90 * rng.random()
        x = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))) + 0.05 * rng.standard_normal(n)
        out.append((x * (0.5 + rng.random())).astype(np.float32))
    return out


def session_from_bytes(data: bytes, threads: int = 0):
    """An onnxruntime CPU session of a serialised graph (``threads`` 0: torch's thread count)."""
    ort = require_onnxruntime()
    import torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def run_session(session, wavs: list[np.ndarray]) -> list[np.ndarray]:
    """The graph's outputs for waveforms, zero-padded into one batch: [emo_probs (B, E), frame_lens (B,), ...]."""
    lens = np.array([len(w) for w in wavs], dtype=np.int64)
    batch = np.zeros((len(wavs), int(lens.max())), dtype=np.float32)
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = w
    return session.run(None, {"wavs": batch, "lengths": lens})
