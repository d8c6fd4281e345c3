"""Inference with a trained model: the Python API behind stage 4.

A model dir is what training writes (``config.yaml``, ``model.yaml``,
``token_list``, ``best.safetensors``); it needs nothing else, not even the
pretrained checkpoint the backbone started from.

    from mtlser.infer import SERPredictor
    predictor = SERPredictor.from_dir("exp/train_mini/fold01")
    result = predictor.predict_file("some.wav")
    result["emotion"], result["probs"], result["tokens"]
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import yaml

from mtlser.config import load_config
from mtlser.data.dataset import read_audio
from mtlser.model.backbone import Backbone, conv_layers_as_tuples, set_fast_path
from mtlser.model.ser_model import SERModel
from mtlser.text.tokenize import read_token_list
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)


def ctc_greedy(log_probs: torch.Tensor, length: int, blank: int = 0) -> list[int]:
    """Best path: argmax per frame, merge repeats, drop blanks. log_probs (T, V)."""
    best = log_probs[:length].argmax(-1).tolist()
    out, prev = [], None
    for t in best:
        if t != prev and t != blank:
            out.append(t)
        prev = t
    return out


def load_model(model_dir: str | Path, weights: str = "best.safetensors",
               device: str | torch.device = "cpu") -> tuple[SERModel, dict]:
    """Rebuild the model of a training dir and load its weights (safetensors only)."""
    from mtlser.model.checkpoints import load_safetensors

    model_dir = Path(model_dir)
    for name in ("config.yaml", "model.yaml", "token_list", weights):
        if not (model_dir / name).is_file():
            raise MtlserError(f"{model_dir / name}: missing; is {model_dir} a finished training dir (stage 3)?")
    cfg = load_config(model_dir / "config.yaml")
    info = yaml.safe_load((model_dir / "model.yaml").read_text(encoding="utf-8"))
    tokens = read_token_list(model_dir / "token_list")
    backbone = Backbone(info["arch"], conv_layers_as_tuples(info["arch_kwargs"]), mask_time_prob=cfg.backbone.mask_time_prob,
                        mask_time_length=cfg.backbone.mask_time_length,
                        normalize_waveform=cfg.backbone.normalize_waveform)
    set_fast_path(backbone, cfg.backbone)  # the same maths as in training (padding-invariant CNN)
    model = SERModel(backbone, num_emotions=len(info["emotions"]), vocab_size=len(tokens),
                     fusion=cfg.model.fusion, head_dropout=cfg.model.head_dropout, ctc_weight=cfg.loss.lambda_,
                     ctc_reduction=cfg.loss.ctc_reduction, class_weights=cfg.loss.class_weights)
    state = load_safetensors(model_dir / weights)  # a truncated file or a pickle: one clear error
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MtlserError(f"{model_dir / weights}: does not match {model_dir / 'model.yaml'} "
                          f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(device).eval()
    meta = {"emotions": info["emotions"], "tokens": tokens, "config": cfg, "sample_rate": cfg.data.sample_rate}
    return model, meta


class SERPredictor:
    """Emotion (and CTC token) predictions for waveforms or files."""

    def __init__(self, model: SERModel, meta: dict, device: str | torch.device = "cpu"):
        self.model = model
        self.emotions: list[str] = meta["emotions"]
        self.tokens: list[str] = meta["tokens"]
        self.sample_rate: int = meta["sample_rate"]
        self.device = torch.device(device)

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str = "cpu", weights: str = "best.safetensors") -> "SERPredictor":
        model, meta = load_model(model_dir, weights, device)
        return cls(model, meta, device)

    @torch.no_grad()
    def predict_batch(self, wavs: list[np.ndarray]) -> list[dict]:
        lens = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        min_samples = self.model.backbone.min_samples()  # the CNN's receptive field (mtlser.model.lengths)
        if int(lens.min()) < min_samples:
            raise MtlserError(f"an utterance has {int(lens.min())} samples; this model needs at least {min_samples} "
                              f"({1000 * min_samples / self.sample_rate:.0f} ms, its CNN's receptive field)")
        batch = torch.zeros(len(wavs), int(lens.max()))
        for i, w in enumerate(wavs):
            batch[i, : len(w)] = torch.as_tensor(w)
        out = self.model.predict(batch.to(self.device), lens.to(self.device))
        results = []
        for i in range(len(wavs)):
            probs = out["emo_probs"][i].cpu()
            r = {"emotion": self.emotions[int(probs.argmax())],
                 "probs": {e: float(p) for e, p in zip(self.emotions, probs.tolist())}}
            if out["ctc_log_probs"] is not None:
                n = int(out["frame_lens"][i]) if out["frame_lens"] is not None else out["ctc_log_probs"].shape[1]
                r["tokens"] = [self.tokens[t] for t in ctc_greedy(out["ctc_log_probs"][i].cpu(), n)]
            results.append(r)
        return results

    def predict_file(self, path: str | Path) -> dict:
        import soundfile as sf

        wav = read_audio(str(path))
        rate = sf.info(str(path)).samplerate
        if rate != self.sample_rate:
            import torchaudio.functional as AF

            wav = AF.resample(torch.from_numpy(wav), rate, self.sample_rate).numpy()
        return self.predict_batch([wav])[0]
