"""A trained model, or an ensemble of them, as a predictor of emotions (and CTC class tokens).

The model is rebuilt with the training's own :func:`mtlser.model.ser_model.build_model` from
the model dir's ``model.yaml`` (architecture, emotions) and ``config.yaml``, and its weights are
read from safetensors; the pretrained checkpoint the backbone started from is not needed. The
emotion list always comes from the model (model.yaml), in its class-index order.

An ensemble averages its members' emotion probabilities; its class tokens come from the
averaged per-frame token posteriors when every member has the same token list and CNN,
otherwise it gives none.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path

import numpy as np
import torch

from mtlser.infer.modes import check_mode
from mtlser.infer.package import CARD_JSON, CONFIG_YAML, MODEL_YAML, TOKEN_LIST, ModelFiles
from mtlser.model.checkpoints import load_safetensors, safetensors_error
from mtlser.model.ser_model import SERModel, build_model
from mtlser.utils import MtlserError, require_gpu_for

logger = logging.getLogger(__name__)

#: Openers of the backends other than torch: backend -> open(path, precision, weights, threads). The onnx
#: backend (mtlser.infer.backends, which builds on this module) registers itself; mtlser.infer imports it.
OPENERS: dict = {}


def ctc_greedy(log_probs: torch.Tensor, length: int, blank: int = 0) -> list[int]:
    """Best path: argmax per frame, merge repeats, drop blanks. log_probs (T, V)."""
    best = log_probs[:length].argmax(-1).tolist()
    out, prev = [], None
    for t in best:
        if t != prev and t != blank:
            out.append(t)
        prev = t
    return out


def check_emotion_lists(files: ModelFiles, emotions: list[str], config_emotions: list | None) -> None:
    """model.yaml's emotions (the class-index order the labels follow), config.yaml's data.emotions and the
    pack card's must be one list: an edited file would otherwise relabel silently."""
    card = files.card.get("emotions") if files.card is not None else None
    if ((config_emotions is None or list(config_emotions) == emotions)
            and (card is None or list(card) == emotions)):
        return
    raise MtlserError(f"{files.location}: the emotion lists disagree: {files.where(MODEL_YAML)} {emotions}, "
                      f"{files.where(CONFIG_YAML)} data.emotions {config_emotions}, "
                      + (f"{files.where(CARD_JSON)} {card}" if files.card is not None else "no card.json")
                      + "; the labels would follow model.yaml: restore the edited file, or re-pack the model from "
                      "its training dir (python -m mtlser.export pack)")


def read_model(files: ModelFiles, weights: str | None = None, device: str | torch.device = "cpu"
               ) -> tuple[SERModel, dict]:
    """Rebuild one model (not an ensemble) and load its weights; returns (model in eval mode, meta)."""
    from safetensors.torch import load as load_safetensors_bytes

    from mtlser.config import Config, check_config, from_dict
    from mtlser.data.emotions import check_labels
    from mtlser.text.tokenize import parse_token_list

    if files.is_ensemble:
        raise MtlserError(f"{files.location}: is an ensemble (ensemble.yaml); load it with "
                          "SERPredictor.from_pretrained, which averages its members")
    info = files.read_yaml(MODEL_YAML)
    missing = [k for k in ("arch", "arch_kwargs", "emotions") if k not in info]
    if missing:
        raise MtlserError(f"{files.where(MODEL_YAML)}: no {', '.join(missing)}; is it a model.yaml of stage 3?")
    # [] is a dimensional-only model's (no classes, no emotion head: attributes only)
    emotions = check_labels(info["emotions"], files.where(MODEL_YAML)) if info["emotions"] != [] else []
    cfg: Config = from_dict(Config, files.read_yaml(CONFIG_YAML), files.where(CONFIG_YAML))
    check_config(cfg, files.where(CONFIG_YAML))
    check_emotion_lists(files, emotions, cfg.data.emotions)
    tokens = parse_token_list(files.read_text(TOKEN_LIST), files.where(TOKEN_LIST))
    if info.get("vocab_size") is not None and int(info["vocab_size"]) != len(tokens):
        raise MtlserError(f"{files.where(TOKEN_LIST)}: {len(tokens)} tokens, but {files.where(MODEL_YAML)} says "
                          f"vocab_size {info['vocab_size']}; the two files come from different models")
    attributes = None
    if info.get("attributes") is not None:
        from mtlser.data.attributes import declaration_from_yaml
        attributes = declaration_from_yaml(info["attributes"], files.where(MODEL_YAML))
    model = build_model(cfg, vocab_size=len(tokens), architecture=info, num_emotions=len(emotions),
                        attributes=[(a.name, a.low, a.high) for a in attributes] if attributes else None)
    name = files.weights_name(weights)
    if files.base is not None:
        files.check_digest(name)  # read_bytes checks the other files as it reads them
        state = load_safetensors(files.base / name)  # a truncated file or a pickle: one clear line
    else:
        data = files.read_bytes(name)
        try:
            state = load_safetensors_bytes(data)
        except Exception as e:  # safetensors' own errors (truncated header, bad JSON, a pickle)
            raise safetensors_error(Path(files.where(name)), e, head=data[:2]) from None
    try:
        missing_keys, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that do not fit
        raise MtlserError(f"{files.where(name)}: does not fit {files.where(MODEL_YAML)} "
                          f"({' '.join(str(e).split())[:300]})") from None
    if missing_keys or unexpected:
        raise MtlserError(f"{files.where(name)}: does not match {files.where(MODEL_YAML)} "
                          f"(missing {missing_keys[:5]}, unexpected {unexpected[:5]})")
    model.to(device).eval()
    meta = {"emotions": emotions, "attributes": attributes, "tokens": tokens, "config": cfg, "sample_rate": cfg.data.sample_rate,
            "info": info, "weights": files.where(name), "location": files.location}
    return model, meta


def load_model(model_dir: str | Path | ModelFiles, weights: str | None = None,
               device: str | torch.device = "cpu") -> tuple[SERModel, dict]:
    """One model from a model dir or a pack (see :mod:`mtlser.infer.package`): (model, meta)."""
    files = model_dir if isinstance(model_dir, ModelFiles) else ModelFiles.open(model_dir)
    return read_model(files, weights, device)


class SERPredictor:
    """Emotion probabilities (and CTC class tokens) for waveforms or files, from one model or an ensemble.

    Attributes: ``emotions`` (class-index order, from the model), ``sample_rate``, ``min_samples`` (the
    shortest input: the receptive field of the model's CNN), ``tokens`` (None when members disagree).
    """

    def __init__(self, model: SERModel | list[SERModel], meta: dict | list[dict], device: str | torch.device = "cpu",
                 precision: str = "fp32"):
        models = model if isinstance(model, list) else [model]
        metas = meta if isinstance(meta, list) else [meta]
        assert len(models) == len(metas) > 0, "one meta per model"
        first = metas[0]
        for m in metas[1:]:
            for key in ("emotions", "sample_rate"):
                if m[key] != first[key]:
                    raise MtlserError(f"{m['location']}: {key} {m[key]} differs from {first['location']}'s "
                                      f"{first[key]}; an ensemble's members must agree")
        if precision not in ("fp32", "bf16", "fp16"):
            raise MtlserError(f"precision {precision!r}: expected fp32, bf16 or fp16")
        self.models = models
        self.metas = metas
        self.emotions: list[str] = list(first["emotions"])
        for m in metas[1:]:
            if m.get("attributes") != first.get("attributes"):
                raise MtlserError(f"{m['location']}: attributes differ from {first['location']}'s; an ensemble's "
                                  "members must agree")
        #: The attribute declaration (mtlser.data.attributes) of a model with an attribute head, else None.
        self.attributes = first.get("attributes")
        self.sample_rate: int = int(first["sample_rate"])
        self.device = torch.device(device)
        self.precision = precision
        self._bf16_twins: dict[int, SERModel] = {}
        self.min_samples: int = max(m.backbone.min_samples() for m in models)
        # Averaged class tokens need one token list, one frame rate, and a CTC head in every member.
        same_cnn = len({tuple(m.backbone.conv_spec) for m in models}) == 1
        same_tokens = all(mt["tokens"] == first["tokens"] for mt in metas)
        has_ctc = all(m.ctc_head is not None for m in models)
        self.tokens: list[str] | None = list(first["tokens"]) if (same_cnn and same_tokens and has_ctc) else None
        if len(models) > 1 and self.tokens is None and has_ctc:
            logger.info("ensemble members differ in token lists or CNNs: no class tokens, emotions only")

    @property
    def model(self) -> SERModel:
        """The single model (the first member of an ensemble)."""
        return self.models[0]

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", weights: str | None = None,
                        precision: str = "fp32", backend: str = "torch", threads: int = 0) -> "SERPredictor":
        """A model dir, an ensemble dir, or a pack (.zip) of either; see :mod:`mtlser.infer.package`.

        ``backend`` "onnx" also takes an exported ``.onnx`` graph; backends and precisions:
        :mod:`mtlser.infer.backends` (``threads``: onnxruntime's, 0 = torch's thread count)."""
        require_gpu_for(device, "--device")
        check_mode(backend, precision, str(device))
        if backend != "torch":
            return OPENERS[backend](path, precision, weights, threads)
        files = ModelFiles.open(path)
        if files.is_ensemble:
            loaded = [read_model(member, weights, device) for _, member in files.members()]
            logger.info("%s: ensemble of %d models", path, len(loaded))
            return cls([m for m, _ in loaded], [meta for _, meta in loaded], device, precision)
        model, meta = read_model(files, weights, device)
        return cls(model, meta, device, precision)

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _computing(self, i: int) -> SERModel:
        """The model that computes member ``i``: itself, or at bf16 on a CPU its bf16 twin (built on first use,
        :meth:`mtlser.model.backbone.Backbone.bf16_inference`; ``models`` stay float32 for the fp32 reference)."""
        if self.precision != "bf16" or self.device.type != "cpu":
            return self.models[i]
        if i not in self._bf16_twins:
            twin = copy.deepcopy(self.models[i]).eval()
            twin.backbone.bf16_inference()
            self._bf16_twins[i] = twin
        return self._bf16_twins[i]

    def _predict(self, model: SERModel, batch: torch.Tensor, lens: torch.Tensor) -> dict:
        """One model on a padded batch (B, S), as :meth:`SERModel.predict` returns it.

        On a GPU the batch runs as a batch. On a CPU the CNN runs one utterance at a time and the
        transformer on the padded batch of their features: nothing is convolved for padding (the CNN
        on raw audio is the costly part of padding), while the transformer keeps its large matrix
        products (run one utterance at a time they took ~25 % more CPU time here). With a
        padding-invariant CNN that is the same maths as the batched CNN (tests/test_infer.py).
        """
        backbone = model.backbone
        if self.device.type != "cpu" or not (backbone.padding_invariant_cnn or len(lens) == 1):
            return model.predict(batch, lens)
        feats = [backbone.cnn(batch[i:i + 1, :n], None)[0][0] for i, n in enumerate(lens.tolist())]  # (T_i, C)
        frame_lens = torch.tensor([len(f) for f in feats], dtype=torch.long, device=batch.device)
        padded = batch.new_zeros(len(feats), int(frame_lens.max()), feats[0].shape[1])  # (B, T, C)
        for i, f in enumerate(feats):
            padded[i, : len(f)] = f
        return model.predict(padded, frame_lens, from_features=True)

    def predict_arrays(self, wavs: list[np.ndarray]) -> tuple[np.ndarray, list[list[str]] | None]:
        """Emotion probabilities (B, E) in :attr:`emotions` order and, when available, class tokens per input."""
        probs, tokens, _ = self.predict_all(wavs)
        return probs, tokens

    @torch.inference_mode()
    def predict_all(self, wavs: list[np.ndarray]
                    ) -> tuple[np.ndarray, list[list[str]] | None, np.ndarray | None]:
        """:meth:`predict_arrays` and the attribute values (B, K) on their declared scales (None without
        an attribute head; an ensemble's mean)."""
        if not wavs:
            return (np.zeros((0, len(self.emotions)), dtype=np.float32), ([] if self.tokens is not None else None),
                    np.zeros((0, len(self.attributes)), dtype=np.float32) if self.attributes else None)
        lens = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        short = [i for i, n in enumerate(lens.tolist()) if n < self.min_samples]
        if short:
            i = short[0]
            raise MtlserError(f"input {i} has {int(lens[i])} samples; this model needs at least {self.min_samples} "
                              f"({1000 * self.min_samples / self.sample_rate:.1f} ms, its CNN's receptive field)")
        batch = torch.zeros(len(wavs), int(lens.max()))
        for i, w in enumerate(wavs):
            batch[i, : len(w)] = torch.as_tensor(w)
        batch, lens = batch.to(self.device), lens.to(self.device)
        probs = None
        attrs = None
        frame_probs = None
        frame_lens = None
        for i, model in enumerate(self.models):
            with self._autocast():
                out = self._predict(self._computing(i), batch, lens)
            p = out["emo_probs"]
            p = p.float() if p is not None else batch.new_zeros(len(wavs), 0)  # no classes: (B, 0)
            probs = p if probs is None else probs + p
            if self.attributes:
                attrs = out["attributes"].float() if attrs is None else attrs + out["attributes"].float()
            if self.tokens is not None:
                p = out["ctc_log_probs"].float().exp()  # (B, T, V)
                frame_probs = p if frame_probs is None else frame_probs + p
                frame_lens = out["frame_lens"]
        probs = (probs / len(self.models)).cpu()
        tokens = None
        if self.tokens is not None:
            log_probs = (frame_probs / len(self.models)).log().cpu()
            tokens = []
            for i in range(len(wavs)):
                n = int(frame_lens[i]) if frame_lens is not None else log_probs.shape[1]
                tokens.append([self.tokens[t] for t in ctc_greedy(log_probs[i], n)])
        attrs = (attrs / len(self.models)).cpu().numpy() if attrs is not None else None
        return probs.numpy(), tokens, attrs

    def predict_batch(self, wavs: list[np.ndarray]) -> list[dict]:
        """For each waveform (mono, :attr:`sample_rate`): ``{'emotion', 'probs': {emotion: p},
        'attributes'?: {name: value}, 'tokens'?}``."""
        probs, tokens, attrs = self.predict_all(wavs)
        results = []
        for i, row in enumerate(probs):
            r = ({"emotion": self.emotions[int(np.argmax(row))],
                  "probs": {e: float(p) for e, p in zip(self.emotions, row.tolist())}}
                 if self.emotions else {})  # a dimensional-only model: attributes only
            if attrs is not None:
                r["attributes"] = {a.name: float(v) for a, v in zip(self.attributes, attrs[i].tolist())}
            if tokens is not None:
                r["tokens"] = tokens[i]
            results.append(r)
        return results

    def predict_array(self, waveform: np.ndarray, sample_rate: int) -> dict:
        """Audio already in memory: (samples,) or (samples, channels) at any rate; mixed down and resampled."""
        wav = np.asarray(waveform, dtype=np.float32)
        if wav.ndim == 2:
            wav = wav.mean(axis=1)
        if wav.ndim != 1:
            raise MtlserError(f"waveform of shape {wav.shape}: expected (samples,) or (samples, channels)")
        if int(sample_rate) != self.sample_rate:
            import torchaudio.functional as AF

            wav = AF.resample(torch.from_numpy(np.ascontiguousarray(wav)), int(sample_rate), self.sample_rate).numpy()
        if len(wav) < self.min_samples:
            raise MtlserError(f"waveform of {len(wav)} samples at {self.sample_rate} Hz; this model needs at least "
                              f"{self.min_samples}")
        return self.predict_batch([wav])[0]

    def predict_file(self, path: str | Path, window: float = 0.0, hop: float = 0.0) -> dict:
        """One audio file of any rate and channel count. With ``window`` (seconds), a longer file is labelled
        in windows every ``hop`` seconds (:func:`mtlser.infer.audio.windows`): the result then has ``windows``
        and the whole file's probabilities are their mean."""
        from mtlser.infer.audio import Recording
        from mtlser.infer.runner import label

        (done,) = label(self, [Recording(str(path), str(path))], window=window, hop=hop, progress=False)
        if done.error:
            raise MtlserError(f"{path}: {done.error}")
        return done.result
