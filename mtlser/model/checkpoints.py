"""Reading pretrained backbone weights from the user's local copy, safely, without transformers or fairseq.

``backbone.init`` takes one of (the format is recognised, never configured):

- a **Hugging Face model dir**: ``config.json`` plus ``model.safetensors`` or
  ``pytorch_model.bin`` (sharded ``*.index.json`` too), e.g. facebook/wav2vec2-base,
  facebook/hubert-base-ls960, microsoft/wavlm-base-plus. ``config.json`` is read as
  JSON and mapped with torchaudio's own ``_get_config``/``_get_config_wavlm``;
  keys are renamed as torchaudio's ``import_huggingface_model`` does. A weights
  file inside such a dir is taken as the dir.
- a **torchaudio bundle**: ``torchaudio:WAV2VEC2_BASE`` (any name in
  ``torchaudio.pipelines`` built on Wav2Vec2Model), read from
  ``backbone.cache_dir`` or torch hub's cache (where ``bundle.get_model()`` put it),
  or the cached file itself (``wav2vec2_fairseq_base_ls960.pth``): the architecture
  then comes from the bundle whose file name it is.
- a **fairseq checkpoint** (``wav2vec_small.pt``, ``hubert_base_ls960.pt``,
  fine-tuned ``*_960h.pt``, or WavLM's own ``WavLM-Base+.pt``): read by
  :func:`mtlser.model.safe_load.safe_torch_load` (no code from the file runs);
  the architecture comes from its ``cfg``/``args``, keys are renamed with
  torchaudio's ``import_fairseq`` mapping.
- a **state dict in torchaudio's naming** (``.pth``/``.safetensors``) of another
  origin: the architecture comes from ``backbone.size``/``backbone.custom``.

Every reader returns a :class:`Pretrained`; :func:`load_state_dict_strict` then
loads every tensor or fails listing what is missing or unexpected.
Task heads (quantizer, CTC ``lm_head``/``proj``, HuBERT's ``label_embs_concat``...)
are dropped and named in the log; anything else unknown is an error.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from mtlser.model.architectures import architecture, conv_layers_as_tuples
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)

FAMILIES = ("wav2vec2", "hubert", "wavlm")
BUNDLE_PREFIX = "torchaudio:"
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


@dataclass
class Pretrained:
    """What a checkpoint holds, in torchaudio's terms.

    format: hf | torchaudio | fairseq | state_dict (a torchaudio-named dict of unknown origin).
    family: wav2vec2 | hubert | wavlm, as the checkpoint says (None: it cannot tell).
    arch_kwargs: ``torchaudio.models.wav2vec2_model`` / ``wavlm_model`` arguments.
    state: tensors named as ``Wav2Vec2Model.state_dict()`` (no aux head).
    source: the file the tensors come from (errors name it).
    mask_embedding: the pre-trained mask vector (fairseq ``mask_emb``, HF ``masked_spec_embed``), if any.
    normalize: whether the model was pre-trained on normalised waveforms (None: unknown).
    ignored: checkpoint keys deliberately not loaded (task heads).
    """

    format: str
    family: str | None
    arch_kwargs: dict
    state: dict[str, torch.Tensor]
    source: Path
    mask_embedding: torch.Tensor | None = None
    normalize: bool | None = None
    ignored: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- generic helpers
def load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """A flat state dict from ``.safetensors`` or a weights-only torch file."""
    if not path.is_file():
        raise MtlserError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle with code, or not a torch file at all
        raise MtlserError(
            f"{path}: cannot be read as a weights-only torch file ({type(e).__name__}: {e}). "
            "mtlser never unpickles arbitrary objects; convert it to safetensors or a plain state dict."
        ) from None
    if not _is_tensor_dict(obj):
        raise MtlserError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    return dict(obj)


def safetensors_error(path: Path, exc: BaseException, head: bytes | None = None) -> MtlserError:
    """One line for a ``.safetensors`` file that safetensors cannot read: a pickle (torch.save) under that name,
    or a truncated or corrupt file. ``head``: the file's first bytes when it is not a file (a member of a zip)."""
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(2)
        except OSError as e:
            return MtlserError(f"{path}: cannot read it ({e.strerror})")
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch.save's zip, or a bare pickle
        return MtlserError(f"{path}: a pickle (torch.save) file, not safetensors; a .safetensors name is read only as "
                           "safetensors, never unpickled: give the file that was written as safetensors")
    why = str(exc).splitlines()[0][:150] if str(exc) else type(exc).__name__
    return MtlserError(f"{path}: truncated or corrupt ({why}); copy it again, or retrain the fold (--force)")


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; an unreadable one is one clear error (:func:`safetensors_error`)."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise MtlserError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except Exception as e:
        raise safetensors_error(Path(path), e) from None


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _weight_norm_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old ``weight_norm`` names -> the parametrization names torchaudio's model uses today.

    fairseq, torchaudio's cached bundles and older HF files store the positional
    convolution as ``weight_g``/``weight_v``; torch's parametrized weight norm
    calls them ``parametrizations.weight.original0``/``original1`` (same tensors).
    """
    out = {}
    for k, v in state.items():
        if k.endswith(".weight_g"):
            k = k[: -len("weight_g")] + "parametrizations.weight.original0"
        elif k.endswith(".weight_v"):
            k = k[: -len("weight_v")] + "parametrizations.weight.original1"
        out[k] = v
    return out


def _check_family(arch: str, found: str | None, source: Path, how: str) -> None:
    if found is not None and found != arch:
        raise MtlserError(
            f"{source}: is a {found} checkpoint ({how}), but backbone.arch is '{arch}'. "
            f"Set backbone.arch: {found}, or point backbone.init at a {arch} checkpoint.")


def _wavlm_qkv(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Separate q/k/v projections -> torchaudio WavLM's packed ``nn.MultiheadAttention`` (torchaudio's helper)."""
    from torchaudio.models.wav2vec2.utils.import_huggingface import transform_wavlm_encoder_state

    prefix = "encoder.transformer."
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        transform_wavlm_encoder_state(sub, num_layers)
    except KeyError as e:
        raise MtlserError(f"WavLM attention weights incomplete: {e} missing") from None
    out = {k: v for k, v in state.items() if not k.startswith(prefix)}
    out.update({prefix + k: v for k, v in sub.items()})
    return out


def _has_wavlm_keys(keys) -> bool:
    return any(re.search(r"(rel_attn_embed|relative_attention_bias|gru_rel_pos|grep_linear|grep_a)", k) for k in keys)


# ----------------------------------------------------------------------------- Hugging Face
#: transformers' config defaults (Wav2Vec2Config/HubertConfig/WavLMConfig, v4 and v5 agree), for
#: config.json files written with ``use_diff`` that leave defaults out.
_HF_DEFAULTS = dict(
    feat_extract_norm="group", feat_extract_activation="gelu", conv_dim=[512] * 7,
    conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_bias=False,
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
    hidden_dropout=0.1, activation_dropout=0.1, attention_dropout=0.1, feat_proj_dropout=0.0, layerdrop=0.1,
    layer_norm_eps=1e-5, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
    do_stable_layer_norm=False, add_adapter=False, feat_proj_layer_norm=True, conv_pos_batch_norm=False,
    num_buckets=320, max_bucket_distance=800,
)
#: model_type values of other architectures, to name them in the error.
_HF_OTHER = ("data2vec-audio", "wav2vec2-conformer", "wav2vec2-bert", "unispeech", "unispeech-sat", "sew", "sew-d")


def hf_architecture(config: dict, source: Path) -> tuple[str, dict]:
    """(family, torchaudio arguments) from a parsed ``config.json``."""
    from torchaudio.models.wav2vec2.utils.import_huggingface import _get_config, _get_config_wavlm

    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        other = " (a different architecture)" if model_type in _HF_OTHER else ""
        raise MtlserError(f"{source}: model_type is {model_type!r}{other}; mtlser loads wav2vec2, hubert and "
                          "wavlm models")
    cfg = SimpleNamespace(**{**_HF_DEFAULTS, **config})
    unsupported = []
    if cfg.hidden_act != "gelu" or cfg.feat_extract_activation != "gelu":
        unsupported.append(f"hidden_act={cfg.hidden_act!r}, feat_extract_activation={cfg.feat_extract_activation!r} "
                           "(torchaudio uses gelu)")
    if abs(float(cfg.layer_norm_eps) - 1e-5) > 1e-12:
        unsupported.append(f"layer_norm_eps={cfg.layer_norm_eps} (torchaudio uses 1e-5)")
    if cfg.add_adapter:
        unsupported.append("add_adapter=true")
    if model_type == "hubert" and (not cfg.feat_proj_layer_norm or cfg.conv_pos_batch_norm):
        unsupported.append("feat_proj_layer_norm=false or conv_pos_batch_norm=true")
    if cfg.feat_extract_norm not in ("group", "layer"):
        unsupported.append(f"feat_extract_norm={cfg.feat_extract_norm!r}")
    if not (len(cfg.conv_dim) == len(cfg.conv_kernel) == len(cfg.conv_stride)):
        unsupported.append("conv_dim, conv_kernel and conv_stride of different lengths")
    if unsupported:
        raise MtlserError(f"{source}: unsupported settings for torchaudio's model: {'; '.join(unsupported)}")
    kw = _get_config_wavlm(cfg) if model_type == "wavlm" else _get_config(cfg)
    kw["extractor_conv_layer_config"] = [tuple(int(x) for x in c) for c in kw["extractor_conv_layer_config"]]
    kw["extractor_conv_bias"] = bool(kw["extractor_conv_bias"])
    kw["encoder_layer_norm_first"] = bool(kw["encoder_layer_norm_first"])
    kw["aux_num_out"] = None
    return model_type, kw


def _read_hf_weights(d: Path) -> tuple[dict[str, torch.Tensor], Path]:
    for name in HF_WEIGHT_FILES:
        path = d / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return load_tensor_file(path), path
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as e:
            raise MtlserError(f"{path}: not a valid shard index ({e})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_tensor_file(d / shard))
        return state, path
    raise MtlserError(f"{d}: no weights; expected one of {', '.join(HF_WEIGHT_FILES)} next to config.json")


#: Top-level modules of HF task models (pre-training, CTC, classification) that are not the encoder.
_HF_HEAD_PREFIXES = ("quantizer.", "project_hid.", "project_q.", "lm_head.", "classifier.", "projector.",
                     "layer_weights", "tdnn.", "feature_extractor_head", "objective.", "dropout_features")


def hf_state_to_torchaudio(state: dict[str, torch.Tensor], family: str, num_layers: int
                           ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, list[str]]:
    """HF names -> torchaudio names (the mapping of torchaudio's ``import_huggingface._build``).

    Returns (state, mask embedding, ignored keys). Keys that fit nowhere keep their
    name, so the strict load reports them as unexpected.
    """
    marker = "feature_extractor.conv_layers.0.conv.weight"
    prefixes = [p for p in ("", "wav2vec2.", "hubert.", "wavlm.") if p + marker in state]
    prefix = prefixes[0] if prefixes else ""
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    mask_emb = None
    for key, value in state.items():
        if not key.startswith(prefix) or (prefix == "" and key.startswith(_HF_HEAD_PREFIXES)):
            ignored.append(key)
            continue
        k = key[len(prefix):]
        if k.startswith("feature_extractor."):
            out[k] = value
        elif k.startswith("feature_projection."):
            out["encoder." + k] = value
        elif k.startswith("encoder."):
            out["encoder.transformer." + k[len("encoder."):]] = value
        elif k == "masked_spec_embed":
            mask_emb = value
        else:
            out[key] = value  # unexpected: reported by the strict load
    if family == "wavlm":
        out = _wavlm_qkv(out, num_layers)
    return _weight_norm_names(out), mask_emb, ignored


def read_hf_dir(d: Path) -> Pretrained:
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise MtlserError(f"{d}: a directory without config.json, so not a Hugging Face model dir. Give the "
                          "dir that holds config.json and model.safetensors/pytorch_model.bin, or a checkpoint file.")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise MtlserError(f"{cfg_path}: not valid JSON ({e})") from None
    family, kw = hf_architecture(config, cfg_path)
    state, weights = _read_hf_weights(d)
    state, mask_emb, ignored = hf_state_to_torchaudio(state, family, kw["encoder_num_layers"])
    normalize = None
    prep = d / "preprocessor_config.json"
    if prep.is_file():
        try:
            normalize = json.loads(prep.read_text(encoding="utf-8")).get("do_normalize")
        except ValueError:
            pass
    return Pretrained("hf", family, kw, state, weights, mask_emb, normalize, ignored)


# ----------------------------------------------------------------------------- torchaudio bundles
def torchaudio_bundles() -> dict[str, object]:
    """Bundles of ``torchaudio.pipelines`` built on Wav2Vec2Model (wav2vec2, HuBERT, WavLM, XLS-R, MMS)."""
    import torchaudio.pipelines as pipelines

    out = {}
    for name in dir(pipelines):
        b = getattr(pipelines, name)
        if all(hasattr(b, a) for a in ("_path", "_params", "_model_type")) and b._model_type in ("Wav2Vec2", "WavLM"):
            out[name] = b
    return out


def _bundle_family(name: str) -> str:
    return "hubert" if name.startswith("HUBERT") else "wavlm" if name.startswith("WAVLM") else "wav2vec2"


def default_cache_dir() -> Path:
    """Where ``torchaudio.pipelines`` bundles cache their weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _from_bundle(name: str, bundle, path: Path) -> Pretrained:
    kw = conv_layers_as_tuples(bundle._params)
    kw["aux_num_out"] = None  # ASR bundles' CTC head is not ours
    state = _weight_norm_names(load_tensor_file(path))
    ignored = sorted(k for k in state if k.startswith("aux."))
    state = {k: v for k, v in state.items() if not k.startswith("aux.")}
    return Pretrained("torchaudio", _bundle_family(name), kw, state, path, normalize=bool(bundle._normalize_waveform),
                      ignored=ignored)


def read_torchaudio_bundle(arch: str, spec: str, cache_dir: str | os.PathLike | None) -> Pretrained:
    name = spec[len(BUNDLE_PREFIX):]
    bundles = torchaudio_bundles()
    if name not in bundles:
        raise MtlserError(f"backbone.init = {spec!r}: no such torchaudio bundle; expected one of "
                          f"{', '.join(BUNDLE_PREFIX + n for n in sorted(bundles))}")
    bundle = bundles[name]
    _check_family(arch, _bundle_family(name), Path(spec), f"torchaudio bundle {spec}")
    directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = directory / os.path.basename(bundle._path)
    if not path.is_file():
        raise MtlserError(
            f"{path}: not found, so {spec} cannot be loaded offline. mtlser never downloads: copy the file that "
            f"torchaudio.pipelines.{name}.get_model() caches on a machine with internet ($TORCH_HOME/hub/checkpoints/"
            f"{path.name}) into {directory}, or set backbone.cache_dir to the directory that holds it.")
    return _from_bundle(name, bundle, path)


def bundle_for_file(path: Path) -> str | None:
    """The bundle whose cached weights file has this name, e.g. wav2vec2_fairseq_base_ls960.pth -> WAV2VEC2_BASE."""
    for name, b in sorted(torchaudio_bundles().items()):
        if os.path.basename(b._path) == path.name:
            return name
    return None


# ----------------------------------------------------------------------------- fairseq
#: fairseq's default conv stack of wav2vec2/HuBERT base (used when a config leaves it out).
_FAIRSEQ_CONV = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
#: fairseq modules of the pre-training or fine-tuning task, not the encoder.
_FAIRSEQ_HEADS = ("quantizer", "project_q", "project_inp", "final_proj", "target_glu", "label_embs_concat", "proj",
                  "input_quantizer", "decoder")


def parse_conv_layers(text: str, source: Path) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string, e.g. ``"[(512,10,5)] + [(512,3,2)] * 4"``.

    fairseq ``eval``s it; we accept only list/tuple literals of integers joined by
    ``+`` and ``*`` (a small AST walk), so the checkpoint cannot run code.
    """
    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int and 0 <= node.value < 100_000:
            return node.value
        if isinstance(node, ast.List):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(value(e) for e in node.elts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return value(node.left) + value(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left, right = value(node.left), value(node.right)
            if not (isinstance(right, int) and right <= 64 or isinstance(left, int) and left <= 64):
                raise ValueError("repeat count too large")
            return left * right
        raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")

    try:
        layers = value(ast.parse(str(text), mode="eval").body)
        layers = [tuple(int(x) for x in layer) for layer in layers]
        if not layers or any(len(layer) != 3 for layer in layers):
            raise ValueError("expected a list of (dim, kernel, stride)")
    except (SyntaxError, ValueError, TypeError) as e:
        raise MtlserError(f"{source}: conv_feature_layers = {text!r} is not a list of (dim, kernel, stride) "
                          f"tuples ({e})") from None
    return layers


def _fairseq_configs(ckpt: dict, source: Path) -> tuple[dict, dict, bool]:
    """(model config, task config, fine-tuned?) as plain dicts, from ``cfg`` (omegaconf) or ``args`` (Namespace)."""
    from mtlser.model.safe_load import plain

    cfg = plain(ckpt.get("cfg"))
    args = plain(ckpt.get("args"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        model, task = cfg["model"], cfg.get("task") or {}
    elif isinstance(cfg, dict) and cfg:  # WavLM's own checkpoints: one flat WavLMConfig dict
        model, task = cfg, cfg
    elif isinstance(args, dict) and args:
        model, task = args, args
    else:
        raise MtlserError(f"{source}: a fairseq-style checkpoint without its model configuration ('cfg' or 'args'); "
                          "cannot tell the architecture")
    finetuned = "w2v_args" in model or "w2v_path" in model
    if finetuned:
        w2v = model.get("w2v_args")
        if not isinstance(w2v, dict) or not w2v:
            raise MtlserError(f"{source}: a fine-tuned fairseq checkpoint whose pre-training config (w2v_args) is "
                              f"empty (it points at {model.get('w2v_path')!r}); load that pre-trained checkpoint")
        if isinstance(w2v.get("model"), dict):
            model, task = w2v["model"], w2v.get("task") or task
        else:
            model = task = w2v
    return model, task, finetuned


def fairseq_architecture(model: dict, keys, source: Path) -> tuple[str, dict]:
    """(family, torchaudio arguments) from a fairseq model config (field names of fairseq's Wav2Vec2Config)."""
    name = model.get("_name") or model.get("arch")
    if _has_wavlm_keys(keys) or model.get("relative_position_embedding"):
        family = "wavlm"
    elif name in ("wav2vec2", "hubert"):
        family = name
    elif name is None:
        family = "hubert" if "label_embs_concat" in keys else "wav2vec2"
    else:
        raise MtlserError(f"{source}: fairseq model '{name}' is not supported; expected wav2vec2, hubert or WavLM")
    unsupported = []
    if model.get("activation_fn", "gelu") != "gelu":
        unsupported.append(f"activation_fn={model.get('activation_fn')!r}")
    if model.get("layer_type", "transformer") != "transformer":
        unsupported.append(f"layer_type={model.get('layer_type')!r}")
    if int(model.get("pos_conv_depth", 1) or 1) != 1:
        unsupported.append(f"pos_conv_depth={model.get('pos_conv_depth')}")
    if model.get("extractor_mode", "default") not in ("default", "layer_norm"):
        unsupported.append(f"extractor_mode={model.get('extractor_mode')!r}")
    if family == "wavlm" and not model.get("gru_rel_pos", True):
        unsupported.append("gru_rel_pos=false (torchaudio's WavLM always gates the position bias)")
    if unsupported:
        raise MtlserError(f"{source}: unsupported settings for torchaudio's model: {'; '.join(unsupported)}")
    kw = dict(
        extractor_mode="layer_norm" if model.get("extractor_mode") == "layer_norm" else "group_norm",
        extractor_conv_layer_config=parse_conv_layers(model.get("conv_feature_layers", _FAIRSEQ_CONV), source),
        extractor_conv_bias=bool(model.get("conv_bias", False)),
        encoder_embed_dim=int(model.get("encoder_embed_dim", 768)),
        encoder_projection_dropout=float(model.get("dropout_input", 0.0)),
        encoder_pos_conv_kernel=int(model.get("conv_pos", 128)),
        encoder_pos_conv_groups=int(model.get("conv_pos_groups", 16)),
        encoder_num_layers=int(model.get("encoder_layers", 12)),
        encoder_num_heads=int(model.get("encoder_attention_heads", 12)),
        encoder_attention_dropout=float(model.get("attention_dropout", 0.1)),
        encoder_ff_interm_features=int(model.get("encoder_ffn_embed_dim", 3072)),
        encoder_ff_interm_dropout=float(model.get("activation_dropout", 0.0)),
        encoder_dropout=float(model.get("dropout", 0.1)),
        encoder_layer_norm_first=bool(model.get("layer_norm_first", False)),
        encoder_layer_drop=float(model.get("encoder_layerdrop", 0.0)),
        aux_num_out=None,
    )
    if family == "wavlm":
        # WavLM's own WavLMConfig defaults (its released checkpoints store both).
        kw["encoder_num_buckets"] = int(model.get("num_buckets", 320))
        kw["encoder_max_distance"] = int(model.get("max_distance", 1280))
    return family, kw


#: WavLM-only parameter names (microsoft/unilm) -> torchaudio's WavLMSelfAttention names.
_WAVLM_RENAMES = (
    (r"encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.weight",
     r"encoder.transformer.layers.\1.attention.rel_attn_embed.weight"),
    (r"encoder\.layers\.(\d+)\.self_attn\.grep_linear\.(weight|bias)",
     r"encoder.transformer.layers.\1.attention.gru_rel_pos_linear.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.grep_a", r"encoder.transformer.layers.\1.attention.gru_rel_pos_const"),
)


def fairseq_state_to_torchaudio(state: dict[str, torch.Tensor], family: str, num_layers: int
                                ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, list[str]]:
    """fairseq names -> torchaudio names with torchaudio's ``import_fairseq._map_key``.

    Handles pre-trained (``encoder.layers...``) and fine-tuned (``w2v_encoder.w2v_model...``)
    checkpoints and WavLM's extra attention parameters. Returns (state, mask embedding, ignored keys).
    """
    from torchaudio.models.wav2vec2.utils.import_fairseq import _map_key

    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    mask_emb = None
    for key, value in state.items():
        k = key[len("w2v_encoder."):] if key.startswith("w2v_encoder.") else key
        bare = k[len("w2v_model."):] if k.startswith("w2v_model.") else k
        if bare == "mask_emb":
            mask_emb = value
            continue
        if bare.split(".")[0] in _FAIRSEQ_HEADS:
            ignored.append(key)
            continue
        renamed = None
        if family == "wavlm":
            for pattern, repl in _WAVLM_RENAMES:
                if re.fullmatch(pattern, bare):
                    renamed = re.sub(pattern, repl, bare)
        if renamed is None:
            try:
                renamed = _map_key(bare)
            except ValueError:
                renamed = key  # unexpected: reported by the strict load
        if renamed is None:
            ignored.append(key)
            continue
        out[renamed] = value
    if family == "wavlm":
        out = _wavlm_qkv(out, num_layers)
    return _weight_norm_names(out), mask_emb, ignored


def read_fairseq(ckpt: dict, source: Path) -> Pretrained:
    model_cfg, task_cfg, finetuned = _fairseq_configs(ckpt, source)
    state = ckpt["model"]
    family, kw = fairseq_architecture(model_cfg, list(state), source)
    state, mask_emb, ignored = fairseq_state_to_torchaudio(state, family, kw["encoder_num_layers"])
    normalize = task_cfg.get("normalize")
    if finetuned:
        logger.info("%s: a fine-tuned checkpoint; its encoder is loaded, its CTC output layer is not", source)
    normalize = None if normalize is None else bool(normalize)
    return Pretrained("fairseq", family, kw, state, source, mask_emb, normalize, ignored)


# ----------------------------------------------------------------------------- entry point
def _looks_torchaudio(keys) -> bool:
    return any(k.startswith("encoder.transformer.") for k in keys)


def read_pretrained(arch: str, init: str | os.PathLike, size: str = "base", custom: dict | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Pretrained:
    """Recognise the format of ``init`` and read it (see the module doc); check the family against ``arch``."""
    from mtlser.model.safe_load import safe_torch_load

    spec = os.fspath(init)
    if spec.startswith(BUNDLE_PREFIX):
        return read_torchaudio_bundle(arch, spec, cache_dir)
    path = Path(spec).expanduser()
    if not path.exists():
        raise MtlserError(f"{path}: pretrained backbone not found (backbone.init). Give a local Hugging Face "
                          f"model dir, a fairseq .pt, a torchaudio .pth, or {BUNDLE_PREFIX}BUNDLE_NAME; "
                          "mtlser never downloads.")
    if path.is_file() and path.name in HF_WEIGHT_FILES and (path.parent / "config.json").is_file():
        path = path.parent  # a weights file of an HF dir: its config.json is needed too
    if path.is_dir():
        pre = read_hf_dir(path)
        _check_family(arch, pre.family, path / "config.json", f"its config.json says model_type {pre.family}")
        return pre

    bundle = bundle_for_file(path)
    if bundle is not None:
        pre = _from_bundle(bundle, torchaudio_bundles()[bundle], path)
        _check_family(arch, pre.family, path, f"the file of torchaudio bundle {bundle}")
        return pre

    if path.suffix == ".safetensors":
        obj = load_tensor_file(path)
    else:
        obj = safe_torch_load(path)
    if isinstance(obj, dict) and _is_tensor_dict(obj.get("model")):
        pre = read_fairseq(obj, path)
        _check_family(arch, pre.family, path, "its fairseq config")
        return pre
    if not _is_tensor_dict(obj):
        raise MtlserError(f"{path}: neither a state dict nor a fairseq checkpoint (a dict with 'model' and "
                          f"'cfg'/'args'); got {type(obj).__name__}")
    keys = list(obj)
    if not _looks_torchaudio(keys):
        hint = ("Hugging Face weights: give the directory with their config.json"
                if any(k.split(".")[0] in ("encoder", "wav2vec2", "hubert", "wavlm") for k in keys) else
                "unknown key names")
        raise MtlserError(f"{path}: a bare state dict that is not in torchaudio's naming ({hint}); e.g. "
                          f"{keys[:3]}")
    # A torchaudio-named state dict of unknown origin: the architecture comes from the config.
    wavlm = _has_wavlm_keys(keys)
    if wavlm != (arch == "wavlm"):
        raise MtlserError(f"{path}: holds {'WavLM' if wavlm else 'wav2vec2/HuBERT'} attention weights, but "
                          f"backbone.arch is '{arch}'; set backbone.arch to match the checkpoint")
    state = _weight_norm_names(obj)
    ignored = sorted(k for k in state if k.startswith("aux."))
    state = {k: v for k, v in state.items() if not k.startswith("aux.")}
    logger.info("%s: a torchaudio state dict; architecture from backbone.size=%s", path, size)
    return Pretrained("state_dict", None, architecture(arch, size, custom), state, path, ignored=ignored)


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every parameter or fail listing what is missing/unexpected (never a silent random init)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise MtlserError(
            f"{source}: does not match the {type(model).__name__} architecture it describes: "
            f"{len(missing)} missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"{len(unexpected)} unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}. "
            "Check backbone.arch (and backbone.size for a bare state dict) against the checkpoint, and that "
            "the file is complete."
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise MtlserError(
            f"{source}: shape mismatch for {len(bad)} tensors, e.g. {k}: checkpoint {tuple(state[k].shape)} vs "
            f"model {tuple(own[k].shape)}. Check backbone.arch and backbone.size against the checkpoint."
        )
    model.load_state_dict(state, strict=True)
