"""Self-supervised speech backbones (wav2vec2, HuBERT, WavLM) on torchaudio's components.

The model is torchaudio's ``Wav2Vec2Model`` (feature extractor CNN + encoder),
built from a plain dict of ``wav2vec2_model``/``wavlm_model`` arguments (the
*architecture*), so a trained model can be rebuilt from its experiment dir
without the pretrained checkpoint. :class:`Backbone` adds what torchaudio's
``extract_features`` lacks for layer fusion:

- hidden state 0, the transformer's input (after the positional convolution
  and, for post-LN models like wav2vec2-base, the encoder layer norm): what
  Hugging Face returns as ``hidden_states[0]``;
- the final layer norm on the last state of pre-LN models (large), as HF does;
- WavLM's relative position bias carried from layer to layer, and its padding
  given as a key padding mask (torchaudio's WavLM attention rejects the additive
  mask its own ``extract_features`` passes, so padded batches fail there);
- time masking drawn from torch's RNG (so it is checkpointed with the trainer);
- :meth:`Backbone.freeze` for probing (SUPERB): no gradients, always eval mode.

Layer numbering: 0 = transformer input, 1..L = transformer layer outputs;
wav2vec2-base has L = 12, so the fusion takes 13 states of 768 dims.

Usage::

    backbone = load_backbone("wav2vec2", "/path/to/wav2vec2-base")   # formats: mtlser.model.checkpoints
    states, frame_lens = backbone.extract_features(wavs, wav_lens)   # 13 x (B, T, 768), (B,)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from typing import Any

import torch
from torch import Tensor, nn

from mtlser.model import checkpoints
from mtlser.model import lengths as lengths_mod
# The architecture tables live in their own module (checkpoints reads them too); re-exported here.
from mtlser.model.architectures import (  # noqa: F401
    ARCHS,
    SIZES,
    architecture,
    build_torchaudio_model,
    check_shapes,
    conv_layers_as_lists,
    conv_layers_as_tuples,
)

logger = logging.getLogger(__name__)


class Backbone(nn.Module):
    """A torchaudio Wav2Vec2Model that returns every hidden state (see module doc)."""

    def __init__(self, arch: str, arch_kwargs: dict, model: nn.Module | None = None,
                 mask_time_prob: float = 0.0, mask_time_length: int = 10, normalize_waveform: bool = False,
                 padding_invariant_cnn: bool = False, pos_conv_impl: str = "conv"):
        super().__init__()
        assert pos_conv_impl in ("conv", "fft"), f"pos_conv_impl must be conv or fft, got {pos_conv_impl!r}"
        # Speed and padding switches (mtlser.model.fast_ops); the defaults here are torchaudio's own maths.
        self.padding_invariant_cnn = padding_invariant_cnn
        self.pos_conv_impl = pos_conv_impl
        self.cnn_norm_impl = "rows"  # rows | fused (fast_ops.group_norm_gelu)
        self.cnn_channels_last = False
        self.cnn_precision = "autocast"  # autocast | fp32 (the CNN outside autocast)
        self.cnn_matrices = None  # fast_ops.CnnMatrices: the CNN as matrix products (CPU inference, bf16_inference)
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs)
        self.model = model if model is not None else build_torchaudio_model(arch, arch_kwargs)
        self.num_layers: int = len(self.model.encoder.transformer.layers)
        self.hidden_size: int = self.model.encoder.feature_projection.projection.out_features
        self.mask_time_prob = mask_time_prob
        self.mask_time_length = mask_time_length
        self.normalize_waveform = normalize_waveform
        # The learned vector that replaces masked frames (fairseq's mask_emb, HF's masked_spec_embed): uniform
        # init as both do; load_backbone copies the pre-trained one when the checkpoint has it.
        self.mask_embedding = nn.Parameter(torch.zeros(self.hidden_size).uniform_()) if mask_time_prob > 0 else None
        self.frozen = False

    def freeze(self) -> None:
        """Probing (SUPERB): the whole backbone fixed, run in eval mode without building a graph.

        Eval mode for good, as s3prl runs a frozen upstream: dropout, time masking and
        LayerDrop would only add noise to features nothing here can adapt to.
        """
        self.frozen = True
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "Backbone":
        return super().train(mode and not self.frozen)

    @property
    def feature_extractor(self) -> nn.Module:
        return self.model.feature_extractor

    @property
    def conv_spec(self) -> list[tuple[int, int]]:
        """(kernel, stride) of each CNN layer, for the length arithmetic of :mod:`mtlser.model.lengths`."""
        return [(layer.kernel_size, layer.stride) for layer in self.model.feature_extractor.conv_layers]

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Frames the CNN makes from ``lengths`` samples."""
        return lengths_mod.num_frames(lengths, self.conv_spec)

    def min_samples(self) -> int:
        """The shortest input that gives one frame (the CNN's receptive field): 400 samples for wav2vec2."""
        return lengths_mod.receptive_field(self.conv_spec)

    def _normalize(self, waveforms: Tensor, lengths: Tensor | None) -> Tensor:
        if lengths is None:
            mean = waveforms.mean(dim=1, keepdim=True)
            var = waveforms.var(dim=1, keepdim=True, unbiased=False)
            return (waveforms - mean) / torch.sqrt(var + 1e-7)
        mask = torch.arange(waveforms.shape[1], device=waveforms.device)[None, :] < lengths[:, None]
        n = lengths.clamp(min=1).to(waveforms.dtype)[:, None]
        mean = (waveforms * mask).sum(1, keepdim=True) / n
        var = (((waveforms - mean) * mask) ** 2).sum(1, keepdim=True) / n
        return ((waveforms - mean) / torch.sqrt(var + 1e-7)) * mask

    def time_mask(self, batch: int, frames: int, frame_lens: Tensor | None, device: torch.device) -> Tensor:
        """Which frames to mask, (B, T) bool: wav2vec2's span masking, valid frames only.

        As fairseq's ``compute_mask_indices`` (static spans, overlap allowed): an utterance
        of n valid frames gets floor(mask_time_prob * n / span + u) spans, u ~ U(0, 1)
        (probabilistic rounding), each starting uniformly where it fits inside the valid
        frames; so about mask_time_prob of the valid frames are masked (fewer where spans
        overlap), padding never, and utterances shorter than one span not at all.
        Drawn from torch's RNG, so the trainer's checkpoint resumes it exactly.
        """
        span = self.mask_time_length
        valid = frame_lens if frame_lens is not None else torch.full((batch,), frames, device=device)
        room = (valid - span + 1).clamp(min=0)  # (B,) start positions where a whole span fits
        num = torch.floor(self.mask_time_prob * valid / span + torch.rand(batch, device=device)).long()
        num = torch.where(room > 0, num, torch.zeros_like(num))  # (B,)
        max_num = int(num.max()) if batch > 0 else 0
        if max_num == 0:
            return torch.zeros(batch, frames, dtype=torch.bool, device=device)
        starts = (torch.rand(batch, max_num, device=device) * room[:, None]).long()  # (B, N) in [0, room)
        used = torch.arange(max_num, device=device)[None, :] < num[:, None]  # (B, N)
        t = torch.arange(frames, device=device)[None, None, :]  # (1, 1, T)
        covered = (t >= starts[..., None]) & (t < starts[..., None] + span) & used[..., None]  # (B, N, T)
        return covered.any(dim=1)

    def extract_features(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[list[Tensor], Tensor | None]:
        """Hidden states 0..L and frame lengths.

        Args:
            waveforms: (B, S) float, 16 kHz.
            lengths: (B,) valid samples per row, or None when nothing is padded.
        Returns:
            (states, frame_lengths): L+1 tensors (B, T, D); (B,) valid frames (None if lengths is None).
        """
        assert waveforms.ndim == 2, f"waveforms must be (batch, samples), got {tuple(waveforms.shape)}"
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            x, frame_lens = self._cnn(waveforms, lengths)  # (B, T, C)
            return self._transformer(x, frame_lens), frame_lens

    def cnn(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The CNN feature encoder alone: (B, S) samples -> (B, T, C) features and (B,) valid frames."""
        assert waveforms.ndim == 2, f"waveforms must be (batch, samples), got {tuple(waveforms.shape)}"
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self._cnn(waveforms, lengths)

    def transformer_states(self, features: Tensor, frame_lens: Tensor | None) -> list[Tensor]:
        """Hidden states 0..L from CNN features (B, T, C): :meth:`cnn`'s output, or a cached copy of it."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self._transformer(features, frame_lens)

    def _cnn(self, waveforms: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """torchaudio's FeatureExtractor, unrolled where a switch asks for it (mtlser.model.fast_ops):

        - ``padding_invariant_cnn``: the first layer's GroupNorm (group_norm extractor) takes its
          statistics over each utterance's own frames, so a row's features do not depend on the
          padding in its batch;
        - ``cnn_norm_impl`` fused: that GroupNorm and its GELU as one batched function (no host sync);
        - ``cnn_channels_last``: the convolutions in channels-last layout;
        - ``cnn_precision`` fp32: the CNN outside autocast, in float32 (TF32 on GPUs that allow it).
        """
        if self.normalize_waveform:
            waveforms = self._normalize(waveforms, lengths)
        extractor = self.model.feature_extractor
        if self.cnn_matrices is not None:
            return self._cnn_matmuls(waveforms, lengths)
        plain = self.cnn_norm_impl == "rows" and not self.cnn_channels_last and self.cnn_precision == "autocast"
        if plain and (not self.padding_invariant_cnn or lengths is None):
            return extractor(waveforms, lengths)
        from mtlser.model.fast_ops import cnn_conv, group_norm_gelu, valid_group_norm

        precision = contextlib.nullcontext()
        if self.cnn_precision == "fp32" and torch.is_autocast_enabled(waveforms.device.type):
            precision = torch.autocast(device_type=waveforms.device.type, enabled=False)
            waveforms = waveforms.float()
        with precision:
            x = waveforms.unsqueeze(1)  # (B, 1, S)
            for layer in extractor.conv_layers:  # torchaudio's ConvLayerBlock, unrolled
                x = cnn_conv(layer.conv, x, self.cnn_channels_last)
                if lengths is not None:
                    lengths = lengths_mod.layer_frames(lengths, layer.kernel_size, layer.stride)
                norm_lens = lengths if self.padding_invariant_cnn else None
                if isinstance(layer.layer_norm, nn.GroupNorm):
                    if self.cnn_norm_impl == "fused":
                        x = group_norm_gelu(x, norm_lens, layer.layer_norm)
                        continue
                    x = valid_group_norm(x, norm_lens, layer.layer_norm)
                elif layer.layer_norm is not None:
                    x = layer.layer_norm(x)  # per-frame layer norm: padding cannot reach it
                x = nn.functional.gelu(x)
        return x.transpose(1, 2), lengths  # (B, T, C)

    def _cnn_matmuls(self, waveforms: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        from mtlser.model.fast_ops import cnn_as_matmuls

        if lengths is None:
            return cnn_as_matmuls(self.cnn_matrices, waveforms), None
        frame_lens = self.frame_lengths(lengths)
        if not self.padding_invariant_cnn:  # the norm over the padded row, as nn.GroupNorm takes it
            return cnn_as_matmuls(self.cnn_matrices, waveforms), frame_lens
        x = None
        for i, n in enumerate(lengths.tolist()):  # each row alone: its norm over its own frames
            row = cnn_as_matmuls(self.cnn_matrices, waveforms[i:i + 1, :n])[0]
            if x is None:
                x = row.new_zeros(len(lengths), int(frame_lens.max()), row.shape[1])
            x[i, :len(row)] = row
        return x, frame_lens

    def bf16_inference(self) -> "Backbone":
        """Turn this backbone (a copy kept for the purpose) into a CPU bf16 inference one: the linear layers'
        weights stored in bf16 and prepacked for oneDNN (:class:`mtlser.model.fast_ops.PackedLinear`), the CNN
        as matrix products in bf16 (:func:`mtlser.model.fast_ops.cnn_as_matmuls`), and so the positional
        convolution, per group (:class:`~mtlser.model.fast_ops.PosConvAsMatmuls`; the FFT form pays off on a GPU in
        training, not at inference on a CPU). Layer norms, the fusion and the heads stay float32. It replaces this
        backbone's modules: call it on a copy."""
        from mtlser.model.fast_ops import CnnMatrices, PackedFeedForward, PackedLinear, PosConvAsMatmuls

        assert not self.training, "bf16_inference is for inference (eval mode, no gradients)"
        for layer in self.model.encoder.transformer.layers:
            if hasattr(layer.feed_forward, "intermediate_dense"):  # torchaudio's FeedForward
                layer.feed_forward = PackedFeedForward(layer.feed_forward, torch.bfloat16)
        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:  # a subclass (nn.MultiheadAttention's out_proj) is read by weight
                    setattr(parent, name, PackedLinear.of(child, torch.bfloat16))
                elif isinstance(child, nn.Linear):
                    child.to(torch.bfloat16)
        self.cnn_matrices = CnnMatrices(self.model.feature_extractor, torch.bfloat16)
        transformer = self.model.encoder.transformer
        if hasattr(transformer.pos_conv_embed, "conv"):  # wav2vec2/HuBERT/WavLM's ConvolutionalPositionalEmbedding
            transformer.pos_conv_embed = PosConvAsMatmuls(transformer.pos_conv_embed, torch.bfloat16)
            self.pos_conv_impl = "conv"
        return self

    def _transformer(self, features: Tensor, frame_lens: Tensor | None) -> list[Tensor]:
        encoder = self.model.encoder
        x = encoder.feature_projection(features)  # (B, T, D)
        attn_mask = None
        if frame_lens is not None:
            # torchaudio's Encoder._preprocess, with masked_fill instead of x[pad] = 0 (no host sync on GPUs).
            B, T, _ = x.shape
            pad = torch.arange(T, device=x.device)[None, :] >= frame_lens[:, None]  # (B, T)
            x = x.masked_fill(pad[..., None], 0.0)
            attn_mask = (-10000.0 * pad[:, None, None, :].to(dtype=features.dtype)).expand(B, 1, T, T)
        if self.training and self.mask_embedding is not None and self.mask_time_prob > 0:
            mask = self.time_mask(x.shape[0], x.shape[1], frame_lens, x.device)  # (B, T)
            x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)
        key_padding_mask = None
        if self.arch == "wavlm":
            # torchaudio's WavLM attention takes padding as a (B, T) key mask, never attn_mask; additive and in
            # x's dtype (as the position bias it is added to), -10000 at pads like Encoder._preprocess.
            if frame_lens is not None:
                pads = torch.arange(x.shape[1], device=x.device)[None, :] >= frame_lens[:, None]  # (B, T)
                key_padding_mask = pads.to(x.dtype) * -10000.0
            attn_mask = None
        transformer = encoder.transformer
        # Transformer._preprocess: + positional conv (+ layer norm for post-LN models), dropout.
        if self.pos_conv_impl == "fft":
            from mtlser.model.fast_ops import fft_pos_conv

            x = x + fft_pos_conv(x, transformer.pos_conv_embed)
        else:
            x = x + transformer.pos_conv_embed(x)
        if transformer.layer_norm_first:
            x = transformer.layer_norm(x)
        x = transformer.dropout(x)
        states = [x]
        position_bias = None  # WavLM: made by layer 0 from its relative position embedding, reused by the rest
        for layer in transformer.layers:
            if self.training and transformer.layer_drop > 0 and torch.rand(1).item() < transformer.layer_drop:
                states.append(x)  # LayerDrop: the layer passes its input through
                continue
            x, position_bias = layer(x, attn_mask, position_bias=position_bias, key_padding_mask=key_padding_mask)
            states.append(x)
        if not transformer.layer_norm_first:
            # torchaudio's Transformer.layer_norm_first is True for post-LN models (it is the negation of
            # wav2vec2_model's encoder_layer_norm_first). Pre-LN models (large) end with a layer norm that
            # HF applies to the last hidden state.
            states[-1] = transformer.layer_norm(states[-1])
        return states

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[list[Tensor], Tensor | None]:
        return self.extract_features(waveforms, lengths)


def _set_dropouts(kw: dict, overrides: dict[str, float]) -> dict:
    names = {
        "dropout": "encoder_dropout",
        "attention_dropout": "encoder_attention_dropout",
        "activation_dropout": "encoder_ff_interm_dropout",
        "projection_dropout": "encoder_projection_dropout",
        "layer_drop": "encoder_layer_drop",
    }
    kw = dict(kw)
    for ours, theirs in names.items():
        if overrides.get(ours) is not None:
            kw[theirs] = float(overrides[ours])
    return kw


def load_backbone(
    arch: str = "wav2vec2",
    init: str | os.PathLike | None = None,
    *,
    size: str = "base",
    custom: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    mask_time_prob: float = 0.0,
    mask_time_length: int = 10,
    normalize_waveform: bool = False,
    freeze: bool = False,
    **dropouts: float,
) -> Backbone:
    """Build a backbone and load pretrained weights from a local copy.

    Args:
        arch: wav2vec2 | hubert | wavlm; must match what the checkpoint is.
        init: a Hugging Face model dir, ``torchaudio:BUNDLE``, a torchaudio bundle file, a fairseq
            checkpoint, a torchaudio-named state dict (see :mod:`mtlser.model.checkpoints`), or None
            (random init: smoke tests only, warns loudly).
        size, custom: the architecture when ``init`` does not carry one (None, or a bare state dict).
        cache_dir: where ``torchaudio:BUNDLE`` weights are (default: torch hub's checkpoints dir).
        freeze: probing; see :meth:`Backbone.freeze`.
        dropouts: dropout, attention_dropout, activation_dropout, projection_dropout, layer_drop;
            these override the checkpoint's own values (the config is the training recipe).
    Returns:
        The backbone; ``backbone.arch_kwargs`` is the architecture actually built, enough to
        rebuild it without the checkpoint (the trainer writes it to model.yaml).
    """
    if init is None or str(init) == "":
        kw = _set_dropouts(architecture(arch, size, custom), dropouts)
        logger.warning(
            "backbone %s (%s) is RANDOMLY INITIALISED: no `backbone.init` given. Fine for smoke tests and the "
            "mini corpus; for real results point backbone.init at a pretrained checkpoint (docs/backbones.md).",
            arch, size)
        backbone = Backbone(arch, kw, mask_time_prob=mask_time_prob, mask_time_length=mask_time_length,
                            normalize_waveform=normalize_waveform)
    else:
        pre = checkpoints.read_pretrained(arch, init, size=size, custom=custom, cache_dir=cache_dir)
        kw = _set_dropouts(pre.arch_kwargs, dropouts)
        backbone = Backbone(arch, kw, mask_time_prob=mask_time_prob, mask_time_length=mask_time_length,
                            normalize_waveform=normalize_waveform)
        checkpoints.load_state_dict_strict(backbone.model, pre.state, source=str(pre.source))
        if backbone.mask_embedding is not None and pre.mask_embedding is not None:
            if tuple(pre.mask_embedding.shape) == tuple(backbone.mask_embedding.shape):
                with torch.no_grad():
                    backbone.mask_embedding.copy_(pre.mask_embedding)
        if pre.ignored:
            logger.info("%s: not loaded, heads of the pre-training/fine-tuning task: %d tensors (%s%s)", pre.source,
                        len(pre.ignored), ", ".join(pre.ignored[:4]), " ..." if len(pre.ignored) > 4 else "")
        if pre.normalize is not None and pre.normalize != normalize_waveform:
            # HF preprocessor configs say do_normalize=true even for wav2vec2-base, which fairseq trained on raw
            # waveforms, so only fairseq's and torchaudio's own flags are worth a warning.
            log = logger.info if pre.format == "hf" else logger.warning
            log("%s was pre-trained %s waveform normalisation, but backbone.normalize_waveform is %s; "
                "set it to %s to feed the model what it was trained on", pre.source,
                "with" if pre.normalize else "without", normalize_waveform, pre.normalize)
        logger.info("backbone %s loaded from %s (%s format; %d layers, %d dims)", arch, pre.source, pre.format,
                    backbone.num_layers, backbone.hidden_size)
    if freeze:
        backbone.freeze()
    return backbone


def build_backbone(cfg: Any) -> Backbone:
    """From a :class:`mtlser.config.BackboneConfig`."""
    backbone = load_backbone(
        cfg.arch, cfg.init, size=cfg.size, custom=copy.deepcopy(cfg.custom) or None, cache_dir=cfg.cache_dir,
        mask_time_prob=cfg.mask_time_prob, mask_time_length=cfg.mask_time_length,
        normalize_waveform=cfg.normalize_waveform, freeze=cfg.freeze,
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout, projection_dropout=cfg.projection_dropout,
        layer_drop=cfg.layer_drop,
    )
    set_fast_path(backbone, cfg)
    return backbone


def set_fast_path(backbone: Backbone, cfg: Any) -> None:
    """The computation switches of a BackboneConfig (no parameters involved): see docs/speed.md."""
    backbone.padding_invariant_cnn = cfg.padding_invariant_cnn
    backbone.pos_conv_impl = cfg.pos_conv_impl
    backbone.cnn_norm_impl = cfg.cnn_norm_impl
    backbone.cnn_channels_last = cfg.cnn_channels_last
    backbone.cnn_precision = cfg.cnn_precision
