"""The benchmark's baseline: Hugging Face ``transformers.Wav2Vec2Model`` under mtlser's heads.

What a plain fine-tuning script does (the public MTL-SER code is built on it):
HF's model in fp32 with its default attention (sdpa), the attention mask passed,
random batches padded to their longest utterance. Only the heads are mtlser's
(:class:`mtlser.model.ser_model.SERModel`: fusion of all hidden states, mean
pool + linear CE head, linear CTC head, L = CE + lambda * CTC), so both sides
of the benchmark optimise the same objective: tests/test_speed.py checks that
this model and mtlser's plain path give the same loss and gradients from the
same weights.

transformers is a test/benchmark dependency only (tools/requirements-test.txt).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def hf_config(arch_kwargs: dict):
    """A transformers.Wav2Vec2Config for torchaudio ``wav2vec2_model`` arguments (post-LN, group norm)."""
    from transformers import Wav2Vec2Config

    conv = arch_kwargs.get("extractor_conv_layer_config") or [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert arch_kwargs.get("extractor_mode", "group_norm") == "group_norm", "the baseline covers base-style models"
    return Wav2Vec2Config(
        conv_dim=[c[0] for c in conv], conv_kernel=[c[1] for c in conv], conv_stride=[c[2] for c in conv],
        conv_bias=bool(arch_kwargs.get("extractor_conv_bias", False)), feat_extract_norm="group",
        hidden_size=arch_kwargs["encoder_embed_dim"], num_hidden_layers=arch_kwargs["encoder_num_layers"],
        num_attention_heads=arch_kwargs["encoder_num_heads"],
        intermediate_size=arch_kwargs["encoder_ff_interm_features"],
        num_conv_pos_embeddings=arch_kwargs["encoder_pos_conv_kernel"],
        num_conv_pos_embedding_groups=arch_kwargs["encoder_pos_conv_groups"],
        do_stable_layer_norm=bool(arch_kwargs.get("encoder_layer_norm_first", False)),
        # mtlser's (the paper's) settings, not HF's defaults: no LayerDrop, no SpecAugment, same dropouts.
        layerdrop=0.0, mask_time_prob=0.0, apply_spec_augment=False,
        hidden_dropout=arch_kwargs["encoder_dropout"], attention_dropout=arch_kwargs["encoder_attention_dropout"],
        activation_dropout=arch_kwargs["encoder_ff_interm_dropout"],
        feat_proj_dropout=arch_kwargs["encoder_projection_dropout"],
    )


class HFBackbone(nn.Module):
    """``transformers.Wav2Vec2Model`` behind mtlser's Backbone interface (hidden states 0..L, frame lengths)."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.model = hf_model
        self.num_layers = hf_model.config.num_hidden_layers
        self.hidden_size = hf_model.config.hidden_size

    def extract_features(self, wavs: Tensor, lengths: Tensor | None) -> tuple[list[Tensor], Tensor | None]:
        attention_mask = None
        frame_lens = None
        if lengths is not None:
            attention_mask = (torch.arange(wavs.shape[1], device=wavs.device)[None, :] < lengths[:, None]).long()
            frame_lens = self.model._get_feat_extract_output_lengths(lengths)
        out = self.model(wavs, attention_mask=attention_mask, output_hidden_states=True)
        return list(out.hidden_states), frame_lens


def build_baseline(arch_kwargs: dict, num_emotions: int, vocab_size: int, ctc_weight: float, ctc_reduction: str,
                   seed: int = 0):
    """(SERModel over HF's Wav2Vec2Model, the same weights as a torchaudio model for mtlser's Backbone)."""
    from torchaudio.models.wav2vec2.utils import import_huggingface_model
    from transformers import Wav2Vec2Model

    from mtlser.model.ser_model import SERModel

    torch.manual_seed(seed)
    hf = Wav2Vec2Model(hf_config(arch_kwargs))
    model = SERModel(HFBackbone(hf), num_emotions=num_emotions, vocab_size=vocab_size, ctc_weight=ctc_weight,
                     ctc_reduction=ctc_reduction)
    return model, import_huggingface_model(hf)
