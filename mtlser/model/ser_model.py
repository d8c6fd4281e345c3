"""The paper's model: backbone -> layer fusion -> emotion head (CE) + CTC head.

    H = sum_l softmax(alpha)_l * H_l                  over the L+1 hidden states, alpha = 0 at init
    emotion logits = W_e * meanpool_valid(H) + b_e    4 classes, cross entropy
    token logits   = W_c * H_t + b_c                  per frame, CTC over emotion-tagged phone classes
    L = L_CE + lambda * L_CTC

``forward`` returns ``(loss, stats, batch_size)`` (ESPnet's convention).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlser.model.heads import AttributeHead, attribute_loss
from mtlser.model.backbone import Backbone, build_backbone, conv_layers_as_tuples, set_fast_path
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)


class LayerFusion(nn.Module):
    """Learned softmax-weighted sum of hidden states (s3prl's Featurizer, the paper's fusion)."""

    def __init__(self, num_states: int):
        super().__init__()
        # Zero logits: the fusion starts as the plain average of all states.
        self.logits = nn.Parameter(torch.zeros(num_states))

    @property
    def weights(self) -> Tensor:
        return F.softmax(self.logits, dim=0)

    def forward(self, states: list[Tensor]) -> Tensor:
        assert len(states) == self.logits.numel(), (
            f"fusion was built for {self.logits.numel()} hidden states but got {len(states)}; "
            "the backbone's layer count and the fusion must match")
        w = self.weights.to(states[0].dtype)
        fused = w[0] * states[0]
        for i in range(1, len(states)):
            fused = fused + w[i] * states[i]
        return fused  # (B, T, D)


def fp32_or_wider(x: Tensor) -> Tensor:
    """Losses and posteriors in float32 under autocast; float64 stays float64 (the exactness tests)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def valid_mask(frame_lens: Tensor | None, T: int, device: torch.device) -> Tensor | None:
    if frame_lens is None:
        return None
    return torch.arange(T, device=device)[None, :] < frame_lens[:, None]  # (B, T)


def mean_pool(x: Tensor, frame_lens: Tensor | None) -> Tensor:
    """Mean over valid frames: (B, T, D) -> (B, D)."""
    if frame_lens is None:
        return x.mean(dim=1)
    mask = valid_mask(frame_lens, x.shape[1], x.device).to(x.dtype)
    return (x * mask[..., None]).sum(1) / frame_lens.clamp(min=1).to(x.dtype)[:, None]


def ctc_required_frames(targets: Tensor, target_lens: Tensor) -> Tensor:
    """Frames CTC needs for each target: its length plus one blank between repeated tokens."""
    if targets.shape[1] < 2:
        return target_lens.clone()
    same = targets[:, 1:] == targets[:, :-1]
    pos = torch.arange(1, targets.shape[1], device=targets.device)[None, :]
    repeats = (same & (pos < target_lens[:, None])).sum(1)
    return target_lens + repeats


def masked_cross_entropy(logits: Tensor, emotions: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """CE and accuracy over the utterances with a class (NO_CLASS_INDEX left out), as F.cross_entropy's
    weighted mean; 0 for a batch with none (F.cross_entropy would give 0/0 = NaN)."""
    known = emotions >= 0
    per = F.cross_entropy(logits, emotions, weight=weight, reduction="none")  # 0 where ignored
    w = known.to(per.dtype)
    if weight is not None:
        w = w * weight[emotions.clamp(min=0)]
    loss = per.sum() / w.sum().clamp(min=torch.finfo(per.dtype).tiny)
    acc = ((logits.argmax(-1) == emotions) & known).sum().to(per.dtype) / known.sum().clamp(min=1).to(per.dtype)
    return loss, acc


class SERModel(nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        num_emotions: int,
        vocab_size: int,
        fusion: str = "softmax",
        head_dropout: float = 0.0,
        ctc_weight: float = 0.1,
        ctc_reduction: str = "sum",
        class_weights: list[float] | None = None,
        attributes: list[tuple[str, float, float]] | None = None,
        attr_weight: float = 1.0,
        attr_loss: str = "ccc",
        ce_weight: float = 1.0,
    ):
        super().__init__()
        self.backbone = backbone
        #: train.defer_host_sync: statistics stay tensors on the device, CTC rows are masked, not selected.
        self.defer_sync = False
        self.fusion = LayerFusion(backbone.num_layers + 1) if fusion == "softmax" else None
        self.dropout = nn.Dropout(head_dropout)
        # No classes (a dimensional-only corpus: every utt2emo is '-'): no emotion head, no CE term.
        self.emotion_head = nn.Linear(backbone.hidden_size, num_emotions) if num_emotions > 0 else None
        #: Set by the trainer when the data hold utterances with no class (NO_CLASS_INDEX): the CE term then
        #: averages over the classed utterances of a batch, and a batch with none adds 0 (not 0/0).
        self.class_masking = False
        self.ctc_weight = ctc_weight
        self.ctc_reduction = ctc_reduction
        # lambda = 0 is the single-task baseline: no CTC head, no CTC compute.
        self.ctc_head = nn.Linear(backbone.hidden_size, vocab_size) if ctc_weight > 0 else None
        self.register_buffer(
            "class_weights",
            torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None,
            persistent=False,
        )
        # Built after the paper's heads, so a model without attributes draws the same initial weights.
        self.ce_weight = ce_weight
        self.attr_weight = attr_weight
        self.attr_loss = attr_loss
        self.attr_head = (AttributeHead(backbone.hidden_size, [a[1] for a in attributes], [a[2] for a in attributes])
                          if attributes else None)

    def encode(self, wavs: Tensor, wav_lens: Tensor | None,
               from_features: bool = False) -> tuple[Tensor, Tensor | None]:
        """Fused features (B, T, D) and frame lengths (B,).

        With ``from_features`` the inputs are CNN features (B, T, C) and frame lengths (B,), cached
        from a frozen CNN (mtlser.data.cnn_cache): the CNN is skipped.
        """
        states, frame_lens = self._states(wavs, wav_lens, from_features)
        return self.dropout(self._fuse(states)), frame_lens

    def _states(self, wavs: Tensor, wav_lens: Tensor | None, from_features: bool) -> tuple[list[Tensor], Tensor | None]:
        if from_features:
            assert wavs.ndim == 3, f"CNN features must be (batch, frames, channels), got {tuple(wavs.shape)}"
            return self.backbone.transformer_states(wavs, wav_lens), wav_lens
        return self.backbone.extract_features(wavs, wav_lens)

    def _fuse(self, states: list[Tensor]) -> Tensor:
        return self.fusion(states) if self.fusion is not None else states[-1]

    def heads(self, fused: Tensor, frame_lens: Tensor | None) -> tuple[Tensor, Tensor | None]:
        pooled = mean_pool(fused, frame_lens)
        emo_logits = self.emotion_head(pooled) if self.emotion_head is not None else None  # (B, E)
        ctc_logits = self.ctc_head(fused) if self.ctc_head is not None else None  # (B, T, V)
        self._pooled = pooled  # the attribute head's input (pooled once for both heads)
        return emo_logits, ctc_logits

    def attr_unit(self) -> Tensor | None:
        """The attribute head's output (B, K) on the [0, 1] scale for the last :meth:`heads` call."""
        return self.attr_head(self._pooled) if self.attr_head is not None else None

    def ctc_loss(self, ctc_logits: Tensor, frame_lens: Tensor, targets: Tensor, target_lens: Tensor) -> tuple[Tensor, Tensor]:
        """L_CTC over the utterances that can be aligned; returns (loss, usable mask).

        Utterances with no target (transcript of non-verbal tags only) or fewer frames
        than their targets need are skipped and counted, never turned into inf/NaN.
        """
        usable = (target_lens > 0) & (ctc_required_frames(targets, target_lens) <= frame_lens)
        if self.defer_sync:
            return self._ctc_loss_masked(ctc_logits, frame_lens, targets, target_lens, usable), usable
        if not bool(usable.any()):
            return ctc_logits.sum() * 0.0, usable
        log_probs = F.log_softmax(fp32_or_wider(ctc_logits[usable]), dim=-1).transpose(0, 1)  # (T, B', V)
        lens = target_lens[usable]
        per_utt = F.ctc_loss(
            log_probs, targets[usable].clamp(min=0), frame_lens[usable], lens,
            blank=0, reduction="none", zero_infinity=False,
        )
        if self.ctc_reduction == "sum":
            loss = per_utt.sum()
        elif self.ctc_reduction == "mean_batch":
            loss = per_utt.sum() / per_utt.numel()
        else:  # mean: torch's default, per-token
            loss = (per_utt / lens.to(per_utt.dtype)).mean()
        return loss, usable

    def _ctc_loss_masked(self, ctc_logits: Tensor, frame_lens: Tensor, targets: Tensor, target_lens: Tensor,
                         usable: Tensor) -> Tensor:
        """:meth:`ctc_loss` without reading ``usable`` on the host: every row goes through CTC, the
        unusable ones with an empty target (a finite loss) and weight 0, so no shape depends on the data."""
        log_probs = F.log_softmax(fp32_or_wider(ctc_logits), dim=-1).transpose(0, 1)  # (T, B, V)
        lens = torch.where(usable, target_lens, torch.zeros_like(target_lens))
        per_utt = F.ctc_loss(log_probs, targets.clamp(min=0), frame_lens, lens, blank=0, reduction="none",
                             zero_infinity=False) * usable.to(log_probs.dtype)
        n_usable = usable.sum().clamp(min=1).to(per_utt.dtype)
        if self.ctc_reduction == "sum":
            return per_utt.sum()
        if self.ctc_reduction == "mean_batch":
            return per_utt.sum() / n_usable
        return (per_utt / lens.clamp(min=1).to(per_utt.dtype)).sum() / n_usable  # mean: per-token

    def loss_and_logits(
        self,
        wavs: Tensor,
        wav_lens: Tensor | None,
        emotions: Tensor,
        targets: Tensor | None = None,
        target_lens: Tensor | None = None,
        from_features: bool = False,
        term_weights: tuple[float, float] | None = None,
        attributes: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float], Tensor]:
        """The objective, its statistics, and the emotion logits (B, E).

        L = ce_weight * L_CE + attr_weight * L_attr + lambda * L_CTC; L_CE is left out when ce_weight is 0
        (a dimensional-only model), L_attr when the model has no attribute head (``attributes``: the
        targets (B, K) on the declared scale).

        ``term_weights`` (w_ce, w_ctc) scale the two terms of the returned loss, not the statistics:
        under torchrun, a rank's share of its whole batch's loss (mtlser.train.distributed).
        """
        fused, frame_lens = self.encode(wavs, wav_lens, from_features)
        emo_logits, ctc_logits = self.heads(fused, frame_lens)
        # Python floats, or 0-d tensors left on the device (defer_sync: the trainer reads them in bulk).
        value = (lambda t: t.detach()) if self.defer_sync else (lambda t: t.detach().item())
        stats = {}
        loss_ce = None  # the utterance-level terms (CE, attributes), weighted alike under DDP
        if emo_logits is not None:
            logits = fp32_or_wider(emo_logits)
            weight = self.class_weights.to(logits.dtype) if self.class_weights is not None else None
            if self.class_masking:
                loss_ce, acc = masked_cross_entropy(logits, emotions, weight)
            else:
                loss_ce = F.cross_entropy(logits, emotions, weight=weight)
                acc = (emo_logits.argmax(-1) == emotions).float().mean()
            stats.update(loss_ce=value(loss_ce), acc=value(acc))
            if self.ce_weight != 1.0:  # the paper's objective stays the same expression, bit for bit
                loss_ce = self.ce_weight * loss_ce
        if self.attr_head is not None:
            assert attributes is not None, "the attribute head needs targets"
            unit = fp32_or_wider(self.attr_unit())
            loss_attr = attribute_loss(unit, self.attr_head.to_unit(attributes.to(unit.dtype)), self.attr_loss)
            stats["loss_attr"] = value(loss_attr)
            loss_attr = self.attr_weight * loss_attr
            loss_ce = loss_attr if loss_ce is None else loss_ce + loss_attr
        loss = loss_ce
        if ctc_logits is not None:
            assert targets is not None and target_lens is not None, "the CTC head needs targets"
            if frame_lens is None:
                frame_lens = torch.full((wavs.shape[0],), ctc_logits.shape[1], dtype=torch.long, device=wavs.device)
            loss_ctc, usable = self.ctc_loss(ctc_logits, frame_lens, targets, target_lens)
            loss = loss_ce + self.ctc_weight * loss_ctc
            stats["loss_ctc"] = value(loss_ctc)
            stats["ctc_skipped"] = value((~usable).sum().to(loss_ctc.dtype))
        stats["loss"] = value(loss)
        if term_weights is not None:
            loss = term_weights[0] * loss_ce
            if ctc_logits is not None:
                loss = loss + term_weights[1] * self.ctc_weight * loss_ctc
        return loss, stats, emo_logits

    def forward(
        self,
        wavs: Tensor,
        wav_lens: Tensor | None,
        emotions: Tensor,
        targets: Tensor | None = None,
        target_lens: Tensor | None = None,
        from_features: bool = False,
        term_weights: tuple[float, float] | None = None,
        attributes: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float], int]:
        """Args: wavs (B, S); wav_lens (B,); emotions (B,); targets (B, Lmax) padded with -1; target_lens (B,).
        With from_features: wavs are cached CNN features (B, T, C) and wav_lens frame lengths.

        Returns (loss, stats, batch_size).
        """
        loss, stats, _ = self.loss_and_logits(wavs, wav_lens, emotions, targets, target_lens, from_features,
                                              term_weights, attributes)
        return loss, stats, wavs.shape[0]

    @torch.no_grad()
    def predict(self, wavs: Tensor, wav_lens: Tensor | None, from_features: bool = False) -> dict[str, Tensor | None]:
        """Emotion posteriors and, with a CTC head, per-frame token log-probabilities (inputs as :meth:`encode`)."""
        device = wavs.device.type
        if not torch.is_autocast_enabled(device):
            fused, frame_lens = self.encode(wavs, wav_lens, from_features)
            emo_logits, ctc_logits = self.heads(fused, frame_lens)
            attr = self.attr_unit()
        else:
            # bf16/fp16 inference: the backbone (nearly all of the time) in the autocast dtype, the fusion, pooling
            # and heads in fp32 on fp32 copies of its states. Rounding the pooled vector and the logits to 8 bits
            # of mantissa changed labels of close classes for nothing (mtlser.infer.backends.agreement).
            states, frame_lens = self._states(wavs, wav_lens, from_features)
            with torch.autocast(device, enabled=False):
                fused = self.dropout(self._fuse([s.float() for s in states]))
                emo_logits, ctc_logits = self.heads(fused, frame_lens)
                attr = self.attr_unit()
        return {
            "attributes": self.attr_head.to_scale(fp32_or_wider(attr)) if attr is not None else None,
            "emo_probs": F.softmax(fp32_or_wider(emo_logits), dim=-1) if emo_logits is not None else None,
            "ctc_log_probs": F.log_softmax(fp32_or_wider(ctc_logits), dim=-1) if ctc_logits is not None else None,
            "frame_lens": frame_lens,
        }


def build_model(cfg, vocab_size: int, architecture: dict | None = None, num_emotions: int | None = None,
                attributes: list[tuple[str, float, float]] | None = None) -> SERModel:
    """Wire the model from a :class:`mtlser.config.Config`, top to bottom; training and inference both call this.

    Training gives the config alone: the backbone is built from ``cfg.backbone`` and its pretrained weights
    loaded. Inference gives the trained model's ``architecture`` (model.yaml: ``arch`` and ``arch_kwargs``) and
    ``num_emotions`` (the length of model.yaml's emotion list): the same model, weights to be loaded from the
    model dir, no pretrained checkpoint needed.
    """
    if num_emotions is None and cfg.data.emotions is None:
        raise MtlserError("data.emotions is null (= the data's inventory) and was not resolved: the trainer reads it "
                          "from the fold's data dir (mtlser.train.build.resolve_emotions) before building the model")
    if architecture is None:
        backbone = build_backbone(cfg.backbone)
    else:
        backbone = Backbone(architecture["arch"], conv_layers_as_tuples(architecture["arch_kwargs"]),
                            mask_time_prob=cfg.backbone.mask_time_prob, mask_time_length=cfg.backbone.mask_time_length,
                            normalize_waveform=cfg.backbone.normalize_waveform)
        set_fast_path(backbone, cfg.backbone)  # the same maths as in training (padding-invariant CNN)
    if cfg.backbone.layer_drop > 0 and cfg.model.fusion == "softmax" and architecture is None:
        logger.warning("backbone.layer_drop = %s while layers are fused: dropped layers feed the fusion copies "
                       "of their input. Set it to 0 unless that is what you want.", cfg.backbone.layer_drop)
    return SERModel(
        backbone,
        num_emotions=len(cfg.data.emotions) if num_emotions is None else num_emotions,
        vocab_size=vocab_size,
        fusion=cfg.model.fusion,
        head_dropout=cfg.model.head_dropout,
        ctc_weight=cfg.loss.lambda_,
        ctc_reduction=cfg.loss.ctc_reduction,
        class_weights=cfg.loss.class_weights,
        attributes=attributes,
        attr_weight=cfg.loss.attr_weight,
        attr_loss=cfg.loss.attr_loss,
        ce_weight=cfg.loss.ce_weight,
    )
