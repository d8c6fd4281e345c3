"""Where and at what precision a model runs: torch fp32/bf16, or onnxruntime fp32/int8 (ONNX graph).

    SERPredictor.from_pretrained("fold01.zip")                                    # torch, fp32 (exact)
    SERPredictor.from_pretrained("fold01.zip", precision="bf16")                  # torch bf16, native bf16 only
    SERPredictor.from_pretrained("fold01.onnx", backend="onnx")                   # an exported graph
    SERPredictor.from_pretrained("fold01.zip", backend="onnx", precision="int8")  # exported in memory, then quantised

- **torch bf16** (CPU): only where the CPU computes bf16 natively (:func:`native_bf16`: the ``avx512_bf16`` or
  ``amx_bf16`` flags of /proc/cpuinfo; elsewhere bf16 is emulated and slower than fp32, so it is refused). Each
  model computes through a bf16 copy made for it (``Backbone.bf16_inference``: linear weights prepacked for
  oneDNN, the CNN and the positional convolution as matrix products) under autocast, the fusion and heads in
  fp32; the fp32 model stays as it was, the reference of :func:`agreement`. On GPUs: autocast, as before.
- **onnx fp32**: the graph of :mod:`mtlser.infer.onnx_graph` in onnxruntime (exact within its export check).
- **onnx int8**: onnxruntime's dynamic quantisation of the graph's matrix products (MatMul/Gemm
  weights int8 per channel, activations quantised per batch at run time): the transformer's and the feature
  projection's; the CNN's convolutions and the heads stay fp32 (:func:`quantize_int8` says why).

bf16 and int8 are not exact. :func:`agreement` measures a mode against fp32 on a check set (how
often its label equals fp32's, the largest probability difference); ``mtlser-infer`` prints it,
and a mode that changes more than :data:`MAX_LABEL_CHANGE` of the labels is flagged as not fit
to be a default.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from mtlser.expdir import DECODE_TEST, decoded_data_dir
# The modes (what runs here) and the onnxruntime session live below this module; re-exported as its API.
from mtlser.infer.modes import (BACKENDS, BF16_FLAGS, MAX_LABEL_CHANGE, PRECISIONS, check_mode,  # noqa: F401
                                native_bf16)
from mtlser.infer.onnx_graph import outputs_by_name, run_session, session_from_bytes  # noqa: F401
from mtlser.infer.package import ModelFiles
from mtlser.infer.predictor import OPENERS, SERPredictor, ctc_greedy
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)


#: Graph nodes left in fp32 by int8: the heads (a rounding error of the time, and they set the labels).
INT8_KEEP_FP32 = ("emotion_head", "attr_head", "ctc_head")


def quantize_int8(data: bytes) -> bytes:
    """onnxruntime's dynamic int8 quantisation of a graph's MatMul/Gemm weights (per channel): the transformer's
    and the feature projection's, not the heads (:data:`INT8_KEEP_FP32`).

    The CNN's convolutions stay fp32: written as MatMuls and quantised too (activations per tensor), they made
    a base-size graph 1.45x faster on a 6 s file but changed 7.5 % and 13 % of a trained mini model's labels on
    two folds' test files, where the transformer alone changed none (docs/speed.md)."""
    import onnx

    from mtlser.infer.onnx_graph import require_onnxruntime

    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = [name for n in onnx.load_from_string(data).graph.node
            if n.op_type in ("MatMul", "Gemm") and any(part in n.name for part in INT8_KEEP_FP32)
            for name in (n.name, f"{n.name}_MatMul")]  # the quantiser renames a Gemm it splits into MatMul + Add

    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory(prefix="mtlser-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(data)
        root.setLevel(logging.ERROR)  # the quantiser logs a line per tensor on the root logger
        try:
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                             weight_type=QuantType.QInt8, nodes_to_exclude=keep)
        finally:
            root.setLevel(level)
        return dst.read_bytes()


def graph_meta(data: bytes, where: str) -> dict:
    import onnx

    proto = onnx.load_from_string(data)
    for entry in proto.metadata_props:
        if entry.key == "mtlser":
            return json.loads(entry.value)
    raise MtlserError(f"{where}: an ONNX graph without mtlser's metadata; export it with "
                      "`python -m mtlser.export onnx`")


class OnnxPredictor(SERPredictor):
    """:class:`SERPredictor`'s interface on an onnxruntime session of an exported graph."""

    def __init__(self, data: bytes, location: str, precision: str = "fp32", threads: int = 0):
        check_mode("onnx", precision)
        meta = graph_meta(data, location)
        self.location = location
        self.fp32_bytes = data
        self.models, self.metas = [], [meta]
        self.emotions = list(meta["emotions"])
        self.attributes = None
        if meta.get("attributes"):
            from mtlser.data.attributes import declaration_from_yaml

            self.attributes = declaration_from_yaml(meta["attributes"], f"{location} (its mtlser metadata)")
        self.sample_rate = int(meta["sample_rate"])
        self.min_samples = int(meta["min_samples"])
        self.tokens = list(meta["tokens"]) if meta.get("tokens") else None
        self.members = int(meta.get("members", 1))
        self.export_check = meta.get("export_check")
        import torch

        self.device = torch.device("cpu")
        self.precision = precision
        self.threads = threads
        self.session = session_from_bytes(quantize_int8(data) if precision == "int8" else data, threads)

    @classmethod
    def open(cls, path: str | Path, precision: str = "fp32", weights: str | None = None,
             threads: int = 0) -> "OnnxPredictor":
        """A ``.onnx`` file, or a model dir/ensemble/pack exported in memory (and checked on probe signals)."""
        path = Path(path)
        if path.suffix == ".onnx":
            if not path.is_file():
                raise MtlserError(f"{path}: not found")
            return cls(path.read_bytes(), str(path), precision, threads)
        from mtlser.infer.onnx_graph import TOLERANCE, compare, graph_bytes, probe_signals

        torch_predictor = SERPredictor.from_pretrained(path, weights=weights)
        data = graph_bytes(torch_predictor, tokens=torch_predictor.tokens is not None)
        check = compare(torch_predictor, session_from_bytes(data, threads),
                        probe_signals(torch_predictor.sample_rate, torch_predictor.min_samples))
        worst = max(check["max_abs_diff_single"], check["max_abs_diff_padded_batch"])
        if not worst <= TOLERANCE:
            raise MtlserError(f"{path}: its ONNX graph answers up to {worst:.2e} away from mtlser (tolerance "
                              f"{TOLERANCE:g}); use --backend torch")
        return cls(data, str(path), precision, threads)

    def reference(self) -> "OnnxPredictor":
        """The same graph at fp32 (what :func:`agreement` compares int8 with)."""
        return self if self.precision == "fp32" else OnnxPredictor(self.fp32_bytes, self.location, "fp32",
                                                                   self.threads)

    def predict_all(self, wavs: list[np.ndarray]
                    ) -> tuple[np.ndarray, list[list[str]] | None, np.ndarray | None]:
        # SERPredictor's predict_arrays/predict_batch read this: (probs, tokens, attribute values or None).
        if not wavs:
            return (np.zeros((0, len(self.emotions)), dtype=np.float32), ([] if self.tokens is not None else None),
                    np.zeros((0, len(self.attributes)), dtype=np.float32) if self.attributes else None)
        short = [i for i, w in enumerate(wavs) if len(w) < self.min_samples]
        if short:
            raise MtlserError(f"input {short[0]} has {len(wavs[short[0]])} samples; this model needs at least "
                              f"{self.min_samples}")
        import torch

        probs, tokens, attrs = [], ([] if self.tokens is not None else None), []
        for chunk in run_chunks([len(w) for w in wavs], int(RUN_SECONDS * self.sample_rate)):
            out = outputs_by_name(self.session,
                                  run_session(self.session, [np.asarray(wavs[i], dtype=np.float32) for i in chunk]))
            probs.append(out["emo_probs"].astype(np.float32))
            if self.attributes:
                attrs.append(out["attributes"].astype(np.float32))
            if self.tokens is not None:
                log_probs, frame_lens = torch.from_numpy(out["ctc_log_probs"]), out["frame_lens"]
                tokens += [[self.tokens[t] for t in ctc_greedy(log_probs[i], int(frame_lens[i]))]
                           for i in range(len(chunk))]
        return np.concatenate(probs), tokens, (np.concatenate(attrs) if self.attributes else None)


#: Most padded audio (seconds) one onnxruntime run takes; a batch of more is run in consecutive pieces.
RUN_SECONDS = 10.0


def run_chunks(lengths: list[int], most: int) -> list[list[int]]:
    """Consecutive pieces of a batch, each of at most ``most`` padded samples (rows x its longest row; a row
    longer than that alone). The graph convolves the padded batch: a batch of 16 utterances made the CNN's
    activations hundreds of MiB, which ran slower than the same rows in pieces (docs/speed.md)."""
    chunks: list[list[int]] = []
    longest = 0
    for i, n in enumerate(lengths):
        if chunks and (len(chunks[-1]) + 1) * max(longest, n) <= most:
            chunks[-1].append(i)
            longest = max(longest, n)
        else:
            chunks.append([i])
            longest = n
    return chunks


def agreement(candidate: SERPredictor, reference: SERPredictor, wavs: list[np.ndarray], batch: int = 8) -> dict:
    """How ``candidate`` (bf16, int8) answers against ``reference`` (fp32) on ``wavs``: label agreement, max |Δp|."""
    if not wavs:
        return {"n": 0}
    got = [candidate.predict_all(wavs[i:i + batch]) for i in range(0, len(wavs), batch)]
    want = [reference.predict_all(wavs[i:i + batch]) for i in range(0, len(wavs), batch)]
    ours, ref = np.concatenate([g[0] for g in got]), np.concatenate([w[0] for w in want])
    same = float(np.mean(ours.argmax(1) == ref.argmax(1)))
    result = {"n": len(wavs), "label_agreement": same, "max_abs_diff": float(np.abs(ours - ref).max()),
              "fit_for_default": 1.0 - same <= MAX_LABEL_CHANGE}
    if got[0][2] is not None and want[0][2] is not None:  # on the attributes' declared scales
        result["attributes_max_abs_diff"] = float(np.abs(np.concatenate([g[2] for g in got])
                                                         - np.concatenate([w[2] for w in want])).max())
    return result


def fp32_reference(predictor: SERPredictor) -> SERPredictor:
    """The same model at fp32 on the same backend."""
    if isinstance(predictor, OnnxPredictor):
        return predictor.reference()
    return SERPredictor(predictor.models, predictor.metas, predictor.device, "fp32")


#: Most recordings of the inputs taken as the check set when no other is found (first window of each).
CHECK_FROM_INPUTS = 32


def fold_test_data(files) -> Path | None:
    """The data dir a model's fold test set was decoded from (an ensemble: its first member's, by its
    ``decode_test/data_dir`` pointer); None for a pack or a dir without one. ``files``: a ModelFiles."""
    first = files.members()[0][1] if files.is_ensemble else files
    return decoded_data_dir(first.base / DECODE_TEST) if first.base is not None else None


def recordings_of(source: str, option: str) -> list:
    """The recordings of a check set: a data dir (its wav.scp), a wav.scp, a folder or a list."""
    from mtlser.infer.audio import find_recordings

    path = Path(source)
    recordings = find_recordings([str(path / "wav.scp")] if (path / "wav.scp").is_file() else [source])
    if not recordings:
        raise MtlserError(f"{option} {source}: no audio in it")
    return recordings


def check_recordings(model: str | Path, check_set: str | None, inputs: list) -> tuple[list, str]:
    """The recordings a non-exact mode is checked on, and where they come from.

    ``check_set`` when given (a data dir, wav.scp, folder or list); else the fold's test files (a model
    dir's ``decode_test/data_dir``, an ensemble's first member's, or the check set an ``.onnx`` was
    exported with, from its JSON); else the first :data:`CHECK_FROM_INPUTS` of the inputs being labelled.
    """
    source = check_set
    model = Path(model)
    if source is None and model.suffix == ".onnx" and model.with_suffix(".json").is_file():
        found = json.loads(model.with_suffix(".json").read_text()).get("check_set", {}).get("source", "")
        source = found if found and Path(found).exists() else None
    if source is None and model.is_dir():
        decoded = fold_test_data(ModelFiles.open(model))
        if decoded is not None and decoded.is_dir():
            source = str(decoded)
    if source is None:
        usable = [r for r in inputs if r.error is None][:CHECK_FROM_INPUTS]
        return usable, f"the first {len(usable)} inputs (no fold test files found; --check-set names a set)"
    return recordings_of(source, "--check-set"), source


def report_agreement(predictor: SERPredictor, model: str | Path, check_set: str | None, inputs: list,
                     window: float = 20.0) -> dict | None:
    """For a non-exact mode: measure it against fp32 on the check set and log the figures (None for fp32)."""
    from mtlser.infer.audio import load

    if predictor.precision == "fp32":
        return None
    recordings, source = check_recordings(model, check_set, inputs)
    wavs = []
    for rec in recordings:
        try:
            wav = load(rec, predictor.sample_rate, 0.0, window if window > 0 else None)
        except MtlserError as e:
            logger.warning("check set: %s: %s (left out)", rec.id, e)
            continue
        if len(wav) >= predictor.min_samples:
            wavs.append(wav)
    backend = "onnx" if isinstance(predictor, OnnxPredictor) else "torch"
    result = {"backend": backend, "precision": predictor.precision, "check_set": source,
              **agreement(predictor, fp32_reference(predictor), wavs)}
    if not wavs:
        logger.warning("%s %s: not checked against fp32 (no usable audio in the check set %s)", backend,
                       predictor.precision, source)
        return result
    attrs = (f", attributes max |d| {result['attributes_max_abs_diff']:.2e}"
             if "attributes_max_abs_diff" in result else "")
    logger.info("%s %s vs fp32 on %d files of %s: labels equal on %.1f %%, max |dp| %.2e%s", backend,
                predictor.precision, result["n"], source, 100 * result["label_agreement"], result["max_abs_diff"],
                attrs)
    if not result["fit_for_default"]:
        logger.warning("%s %s changed %.1f %% of fp32's labels on its check (more than %g %%): not fit to be a "
                       "default; use fp32 where the labels matter", backend, predictor.precision,
                       100 * (1 - result["label_agreement"]), 100 * MAX_LABEL_CHANGE)
    return result


# SERPredictor.from_pretrained(..., backend="onnx") opens through this (mtlser.infer imports this module).
OPENERS["onnx"] = OnnxPredictor.open
