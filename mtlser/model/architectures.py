"""The backbone architectures: torchaudio ``wav2vec2_model``/``wavlm_model`` arguments as plain data.

An architecture is a dict of constructor arguments (the published sizes below, a custom
dict from the config, or what a checkpoint's config says). It is what ``model.yaml``
records, so a trained model is rebuilt without its pretrained checkpoint. Both the
backbone (:mod:`mtlser.model.backbone`) and the checkpoint readers
(:mod:`mtlser.model.checkpoints`) read these tables; neither imports the other for them.
"""

from __future__ import annotations

from torch import nn

from mtlser.utils import MtlserError

#: torchaudio.models.wav2vec2_model arguments of the published sizes (dropouts set later).
_BASE = dict(
    extractor_mode="group_norm",
    extractor_conv_layer_config=None,
    extractor_conv_bias=False,
    encoder_embed_dim=768,
    encoder_projection_dropout=0.1,
    encoder_pos_conv_kernel=128,
    encoder_pos_conv_groups=16,
    encoder_num_layers=12,
    encoder_num_heads=12,
    encoder_attention_dropout=0.1,
    encoder_ff_interm_features=3072,
    encoder_ff_interm_dropout=0.0,
    encoder_dropout=0.1,
    encoder_layer_norm_first=False,
    encoder_layer_drop=0.0,
    aux_num_out=None,
)
_LARGE = dict(
    _BASE,
    extractor_mode="layer_norm",
    extractor_conv_bias=True,
    encoder_embed_dim=1024,
    encoder_num_layers=24,
    encoder_num_heads=16,
    encoder_ff_interm_features=4096,
    encoder_layer_norm_first=True,
)
#: WavLM adds relative position buckets (torchaudio.models.wavlm_model).
_WAVLM_EXTRA = dict(encoder_num_buckets=320, encoder_max_distance=800)

SIZES = {"base": _BASE, "large": _LARGE}
ARCHS = ("wav2vec2", "hubert", "wavlm")


def conv_layers_as_tuples(kw: dict) -> dict:
    """torchaudio wants the CNN spec as (channels, kernel, stride) tuples; YAML and bundles give lists."""
    kw = dict(kw)
    if kw.get("extractor_conv_layer_config") is not None:
        kw["extractor_conv_layer_config"] = [tuple(c) for c in kw["extractor_conv_layer_config"]]
    return kw


def conv_layers_as_lists(kw: dict) -> dict:
    """The inverse of :func:`conv_layers_as_tuples`, for yaml.safe_dump (which refuses tuples)."""
    kw = dict(kw)
    if kw.get("extractor_conv_layer_config") is not None:
        kw["extractor_conv_layer_config"] = [list(c) for c in kw["extractor_conv_layer_config"]]
    return kw


def architecture(arch: str, size: str = "base", custom: dict | None = None) -> dict:
    """The constructor arguments for ``arch`` at ``size`` (or ``custom`` arguments)."""
    if arch not in ARCHS:
        raise MtlserError(f"unknown backbone arch '{arch}'; expected one of {ARCHS}")
    if size == "custom":
        if not custom:
            raise MtlserError("backbone size 'custom' needs the wav2vec2_model arguments in backbone.custom")
        kw = dict(_BASE)
        unknown = set(custom) - set(_BASE) - set(_WAVLM_EXTRA)
        if unknown:
            raise MtlserError(f"backbone.custom: unknown wav2vec2_model arguments {sorted(unknown)}; "
                              f"expected some of {sorted(_BASE)}")
        kw.update(custom)
        check_shapes(kw, "backbone.custom")
    elif size in SIZES:
        kw = dict(SIZES[size])
    else:
        raise MtlserError(f"unknown backbone size '{size}'; expected base, large or custom")
    if arch == "wavlm":
        kw = {**_WAVLM_EXTRA, **kw}
    return conv_layers_as_tuples(kw)


def check_shapes(kw: dict, where: str) -> None:
    """The constraints between wav2vec2_model arguments that torch would otherwise report deep inside a
    constructor (an attention head count that does not divide the width, ...)."""
    def positive_int(key: str) -> int:
        v = kw.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise MtlserError(f"{where}: {key} = {v!r}; expected a positive integer")
        return v

    dim, heads = positive_int("encoder_embed_dim"), positive_int("encoder_num_heads")
    groups = positive_int("encoder_pos_conv_groups")
    for key in ("encoder_num_layers", "encoder_ff_interm_features", "encoder_pos_conv_kernel"):
        positive_int(key)
    if dim % heads:
        raise MtlserError(f"{where}: encoder_embed_dim = {dim} is not divisible by encoder_num_heads = {heads} "
                          "(each attention head takes an equal share of the width)")
    if dim % groups:
        raise MtlserError(f"{where}: encoder_embed_dim = {dim} is not divisible by encoder_pos_conv_groups = {groups}")
    layers = kw.get("extractor_conv_layer_config")
    ok = layers is None or (isinstance(layers, (list, tuple)) and len(layers) > 0 and all(
        isinstance(layer, (list, tuple)) and len(layer) == 3
        and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in layer) for layer in layers))
    if not ok:
        raise MtlserError(f"{where}: extractor_conv_layer_config = {layers!r}; expected a list of [channels, kernel, "
                          "stride] triples of positive integers")


def build_torchaudio_model(arch: str, kw: dict) -> nn.Module:
    import torchaudio.models as tam

    kw = dict(kw)
    if arch == "wavlm":
        kw.pop("aux_num_out", None)
        kw.setdefault("aux_num_out", None)
        return tam.wavlm_model(**kw)
    kw = {k: v for k, v in kw.items() if k not in _WAVLM_EXTRA}
    return tam.wav2vec2_model(**kw)
