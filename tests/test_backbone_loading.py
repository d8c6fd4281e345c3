"""Pretrained backbones from local files: every format, numerically checked against Hugging Face.

Tiny random models are built with transformers (test-only dependency), every
parameter perturbed so no tensor keeps a default value (a swapped layer-norm
weight/bias would otherwise go unnoticed), written in each format we can produce
offline, loaded through mtlser and compared hidden state by hidden state with
HF's ``output_hidden_states=True`` on a padded batch (valid frames only) and on
an unpadded utterance: max abs difference <= 1e-4 in fp32, eval mode.

Hidden state L of pre-LN ("stable layer norm") models: mtlser returns the
encoder's output, after its final layer norm, which is HF's ``last_hidden_state``
and what transformers 4 returned as ``hidden_states[-1]``. transformers 5 (5.24
here) returns the last layer *before* that norm in ``hidden_states[-1]``
(``capture_outputs(tie_last_hidden_states=False)``), so the reference for state L
is ``last_hidden_state``; for post-LN models both are the same tensor (asserted).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlser.model import checkpoints
from mtlser.model.backbone import load_backbone
from mtlser.utils import MtlserError

transformers = pytest.importorskip("transformers")
# HF's WavLM attention mixes a bool padding mask with a float bias; the warning is about the reference model.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

TOL = 1e-4
ARCHS = ("wav2vec2", "hubert", "wavlm")
VARIANTS = ("base", "large")  # base: group-norm CNN, post-LN; large: layer-norm CNN with bias, pre-LN
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, projection_dropout=0.0, layer_drop=0.0)
#: 3 conv layers (x20 downsampling), 2 transformer layers of 64 dims.
CONV = dict(conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2))
FAIRSEQ_CONV = "[(16, 10, 5)] + [(16, 3, 2)] * 2"  # the same stack, written as fairseq writes it


# ----------------------------------------------------------------------------- reference models
@functools.lru_cache(maxsize=None)
def hf_model(arch: str, variant: str):
    """A tiny random HF model (eval mode), every parameter perturbed away from its init value."""
    cfg_cls, model_cls = {
        "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
        "hubert": (transformers.HubertConfig, transformers.HubertModel),
        "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
    }[arch]
    extra = dict(num_buckets=16, max_bucket_distance=64) if arch == "wavlm" else {}  # buckets used at T ~ 200
    large = variant == "large"
    cfg = cfg_cls(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, **CONV,
                  num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer" if large
                  else "group", do_stable_layer_norm=large, conv_bias=large, hidden_dropout=0.0,
                  attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0, **extra)
    torch.manual_seed(ARCHS.index(arch) * 10 + VARIANTS.index(variant))
    model = model_cls(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def batch():
    """Two utterances, 4000 and 2600 samples (199 and 129 frames), zero-padded."""
    g = torch.Generator().manual_seed(0)
    wavs = 0.3 * torch.randn(2, 4000, generator=g)
    lens = torch.tensor([4000, 2600])
    wavs[1, 2600:] = 0.0
    return wavs, lens


@torch.no_grad()
def hf_states(model, wavs, lens):
    if lens is None:
        out = model(wavs, output_hidden_states=True)
        frames = torch.full((wavs.shape[0],), out.last_hidden_state.shape[1])
    else:
        mask = (torch.arange(wavs.shape[1])[None, :] < lens[:, None]).long()
        out = model(wavs, attention_mask=mask, output_hidden_states=True)
        frames = model._get_feat_extract_output_lengths(lens)
    states = list(out.hidden_states)
    if not model.config.do_stable_layer_norm:
        assert torch.equal(states[-1], out.last_hidden_state)
    states[-1] = out.last_hidden_state  # see the module doc
    return states, frames


@torch.no_grad()
def max_diff(backbone, model) -> float:
    """Max |mtlser - HF| over all hidden states: padded batch (valid frames) and one unpadded utterance."""
    backbone.eval()
    wavs, lens = batch()
    worst = 0.0
    for w, n in ((wavs, lens), (wavs[1:, :2600], None)):
        ref, ref_frames = hf_states(model, w, n)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # ours runs clean (HF's WavLM warns about its own mask types)
            ours, frames = backbone.extract_features(w, n)
        assert len(ours) == len(ref) == model.config.num_hidden_layers + 1
        if n is not None:
            assert frames.tolist() == ref_frames.tolist()
        for r, o in zip(ref, ours):
            assert r.shape == o.shape, (r.shape, o.shape)
            for b in range(w.shape[0]):
                worst = max(worst, (r[b, : ref_frames[b]] - o[b, : ref_frames[b]]).abs().max().item())
    return worst


# ----------------------------------------------------------------------------- writers, one per format
def legacy_weight_norm(state: dict) -> dict:
    """Name the positional conv's weight norm as files written before torch's parametrizations do."""
    return {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                               "weight_v"): v for k, v in state.items()}


def write_hf_safetensors(model, d: Path) -> Path:
    model.save_pretrained(d)
    return d


def write_hf_bin_task_model(model, d: Path) -> Path:
    """What a hub pytorch_model.bin of a *ForCTC / *ForPreTraining model holds: the encoder under a prefix,
    old weight-norm names, and task heads to ignore."""
    arch = model.config.model_type
    state = {f"{arch}.{k}": v for k, v in legacy_weight_norm(model.state_dict()).items()}
    state["lm_head.weight"] = torch.randn(5, 64)
    state["lm_head.bias"] = torch.randn(5)
    state["quantizer.codevectors"] = torch.randn(1, 8, 16)
    d.mkdir(parents=True)
    torch.save(state, d / "pytorch_model.bin")
    cfg = model.config.to_dict()
    cfg["architectures"] = [f"{type(model).__name__.replace('Model', '')}ForCTC"]
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def torchaudio_kwargs(model) -> dict:
    """The torchaudio architecture of a tiny HF model, written out by hand (not by mtlser's mapping)."""
    c = model.config
    kw = dict(extractor_mode="layer_norm" if c.feat_extract_norm == "layer" else "group_norm",
              extractor_conv_layer_config=[[16, 10, 5], [16, 3, 2], [16, 3, 2]], extractor_conv_bias=c.conv_bias,
              encoder_embed_dim=64, encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2,
              encoder_num_heads=4, encoder_ff_interm_features=96, encoder_layer_norm_first=c.do_stable_layer_norm)
    if c.model_type == "wavlm":
        kw.update(encoder_num_buckets=16, encoder_max_distance=64)
    return kw


def write_torchaudio_pth(model, d: Path, name: str = "tiny.pth") -> Path:
    """A torchaudio state dict as torchaudio.pipelines caches them (converted by torchaudio's own importer)."""
    from torchaudio.models.wav2vec2.utils import import_huggingface_model

    d.mkdir(parents=True, exist_ok=True)
    torch.save(legacy_weight_norm(import_huggingface_model(model).state_dict()), d / name)
    return d / name


# fairseq: names and config fields as in fairseq/models/wav2vec/wav2vec2.py and hubert.py, and WavLM's own
# unilm/wavlm/WavLM.py. Written here independently of mtlser's reader (which uses torchaudio's _map_key).
_HF_TO_FAIRSEQ = (
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"feature_projection\.layer_norm\.", "layer_norm."),
    (r"feature_projection\.projection\.", "post_extract_proj."),
    (r"encoder\.pos_conv_embed\.conv\.bias", "encoder.pos_conv.0.bias"),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
    (r"encoder\.layers\.(\d+)\.attention\.rel_attn_embed\.", r"encoder.layers.\1.self_attn.relative_attention_bias."),
    (r"encoder\.layers\.(\d+)\.attention\.gru_rel_pos_linear\.", r"encoder.layers.\1.self_attn.grep_linear."),
    (r"encoder\.layers\.(\d+)\.attention\.gru_rel_pos_const", r"encoder.layers.\1.self_attn.grep_a"),
    (r"encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"masked_spec_embed", "mask_emb"),
)


def fairseq_state(model) -> dict:
    out = {}
    group_norm = model.config.feat_extract_norm == "group"
    for k, v in model.state_dict().items():
        m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)", k)
        if m:  # group norm: module 2 of layer 0's Sequential; layer norm: inside TransposeLast-LN-TransposeLast
            out[f"feature_extractor.conv_layers.{m[1]}.{'2' if group_norm else '2.1'}.{m[2]}"] = v
            continue
        for pattern, repl in _HF_TO_FAIRSEQ:
            if re.match(pattern, k):
                k = re.sub(pattern, repl, k, count=1)
                break
        out[k] = v
    return out


def fairseq_model_cfg(model, name: str | None) -> dict:
    c = model.config
    cfg = dict(extractor_mode="layer_norm" if c.feat_extract_norm == "layer" else "default",
               conv_feature_layers=FAIRSEQ_CONV, conv_bias=c.conv_bias, encoder_layers=2, encoder_embed_dim=64,
               encoder_ffn_embed_dim=96, encoder_attention_heads=4, activation_fn="gelu",
               layer_norm_first=c.do_stable_layer_norm, conv_pos=16, conv_pos_groups=4, dropout=0.1,
               attention_dropout=0.1, activation_dropout=0.0, encoder_layerdrop=0.05, dropout_input=0.1,
               mask_prob=0.65, latent_temp=(2.0, 0.5, 0.999995))
    if name is not None:
        cfg["_name"] = name
    if c.model_type == "wavlm":
        cfg.update(relative_position_embedding=True, num_buckets=16, max_distance=64, gru_rel_pos=True)
    return cfg


def _fake_module(name: str, **classes):
    mod = types.ModuleType(name)
    for cls_name, cls in classes.items():
        cls.__module__, cls.__qualname__ = name, cls_name
        setattr(mod, cls_name, cls)
    return mod


class _DictConfig:  # pickled as omegaconf 2.x pickles: NEWOBJ + BUILD of its __dict__ (checked with omegaconf 2.4)
    pass


class _ListConfig:
    pass


class _AnyNode:
    pass


class _ContainerMetadata:
    pass


@pytest.fixture
def omegaconf_like(monkeypatch):
    """Build omegaconf-shaped objects (classes named omegaconf.*) from plain data; omegaconf itself is not a
    dependency. The layout is omegaconf's: containers keep ``_content``, value nodes ``_val``, both
    ``_metadata`` and a ``_parent`` back-link (a cycle)."""
    monkeypatch.setitem(sys.modules, "omegaconf", _fake_module("omegaconf"))
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", _fake_module("omegaconf.dictconfig",
                                                                          DictConfig=_DictConfig))
    monkeypatch.setitem(sys.modules, "omegaconf.listconfig", _fake_module("omegaconf.listconfig",
                                                                          ListConfig=_ListConfig))
    monkeypatch.setitem(sys.modules, "omegaconf.nodes", _fake_module("omegaconf.nodes", AnyNode=_AnyNode))
    monkeypatch.setitem(sys.modules, "omegaconf.base", _fake_module("omegaconf.base",
                                                                    ContainerMetadata=_ContainerMetadata))

    def build(value, parent=None):
        meta = _ContainerMetadata()
        meta.__dict__.update(ref_type=typing_any(), key=None, flags={}, optional=True)
        if isinstance(value, dict):
            node = _DictConfig()
            node.__dict__.update(_metadata=meta, _parent=parent, _content={})
            node._content.update({k: build(v, node) for k, v in value.items()})
        elif isinstance(value, (list, tuple)):
            node = _ListConfig()
            node.__dict__.update(_metadata=meta, _parent=parent, _content=[])
            node._content.extend(build(v, node) for v in value)
        else:
            node = _AnyNode()
            node.__dict__.update(_metadata=meta, _parent=parent, _val=value)
        return node

    return build


def typing_any():
    import typing

    return typing.Any


def write_fairseq(model, d: Path, style: str, omegaconf_like=None) -> Path:
    """A fairseq-format checkpoint of ``model``.

    Styles: ``args`` (wav2vec_small.pt: an argparse.Namespace, legacy torch format), ``cfg`` (hubert_base_ls960.pt:
    an omegaconf DictConfig with model/task sections, optimizer state and numpy scalars), ``wavlm`` (WavLM's own
    WavLM-Base+.pt: a plain dict cfg), ``finetuned`` (a *_960h.pt: encoder under w2v_encoder.w2v_model., CTC proj,
    pre-training config in w2v_args).
    """
    d.mkdir(parents=True, exist_ok=True)
    arch = model.config.model_type
    state = fairseq_state(model)
    if arch == "wav2vec2":
        state.update({"quantizer.vars": torch.randn(1, 8, 8), "project_q.weight": torch.randn(8, 8),
                      "final_proj.weight": torch.randn(8, 64)})
    elif arch == "hubert":
        state.update({"label_embs_concat": torch.randn(10, 8), "final_proj.weight": torch.randn(8, 64)})
    path = d / f"{arch}_{style}.pt"
    if style == "args":
        ns = argparse.Namespace(arch=arch, task="audio_pretraining", normalize=False,
                                **{k: v for k, v in fairseq_model_cfg(model, None).items()})
        ckpt = {"args": ns, "model": state, "optimizer_history": [{"optimizer_name": "Adam", "num_updates": 4}],
                "extra_state": {"epoch": 3}, "last_optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-5}]}}
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    elif style == "cfg":
        cfg = {"common": {"seed": 1}, "model": fairseq_model_cfg(model, arch),
               "task": {"_name": f"{arch}_pretraining", "normalize": False, "labels": ["km"]}}
        ckpt = {"args": None, "cfg": omegaconf_like(cfg), "model": state,
                "extra_state": {"metrics": {"loss": np.float64(2.5)}, "train_iterator": {"epoch": 2}},
                "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(3)}}}}
        torch.save(ckpt, path)
    elif style == "wavlm":
        cfg = {k: v for k, v in fairseq_model_cfg(model, None).items()}
        cfg["normalize"] = False
        torch.save({"cfg": cfg, "model": state}, path)
    elif style == "finetuned":
        state = {f"w2v_encoder.w2v_model.{k}": v for k, v in state.items()
                 if not k.startswith(("quantizer", "project_q", "final_proj", "label_embs"))}
        state.update({"w2v_encoder.proj.weight": torch.randn(5, 64), "w2v_encoder.proj.bias": torch.randn(5)})
        cfg = {"model": {"_name": f"{arch}_ctc", "w2v_path": "/gone/pretrained.pt",
                         "w2v_args": {"model": fairseq_model_cfg(model, arch), "task": {"normalize": False}}},
               "task": {"_name": "audio_finetuning", "normalize": False}}
        torch.save({"cfg": omegaconf_like(cfg), "model": state}, path)
    return path


# ----------------------------------------------------------------------------- numerical equivalence
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fmt", ["hf_safetensors", "hf_bin", "torchaudio_pth", "fairseq"])
def test_every_format_matches_hf_hidden_states(arch, variant, fmt, tmp_path, omegaconf_like):
    model = hf_model(arch, variant)
    kw = {}
    if fmt == "hf_safetensors":
        init = write_hf_safetensors(model, tmp_path / "hf")
    elif fmt == "hf_bin":
        init = write_hf_bin_task_model(model, tmp_path / "hf")
    elif fmt == "torchaudio_pth":
        init = write_torchaudio_pth(model, tmp_path / "ta")
        kw = dict(size="custom", custom=torchaudio_kwargs(model))
    else:
        style = {"wav2vec2": "args", "hubert": "cfg", "wavlm": "wavlm"}[arch]
        init = write_fairseq(model, tmp_path / "fs", style, omegaconf_like)
    backbone = load_backbone(arch, init, **kw, **NO_DROPOUT)
    diff = max_diff(backbone, model)
    print(f"max abs diff {arch}/{variant}/{fmt}: {diff:.2e}")
    assert diff <= TOL


def test_fine_tuned_fairseq_checkpoint_loads_its_encoder(tmp_path, omegaconf_like):
    model = hf_model("wav2vec2", "base")
    init = write_fairseq(model, tmp_path, "finetuned", omegaconf_like)
    assert max_diff(load_backbone("wav2vec2", init, **NO_DROPOUT), model) <= TOL


def test_hf_weights_file_stands_for_its_dir(tmp_path):
    model = hf_model("hubert", "base")
    d = write_hf_safetensors(model, tmp_path / "hf")
    assert max_diff(load_backbone("hubert", d / "model.safetensors", **NO_DROPOUT), model) <= TOL


@pytest.fixture
def tiny_bundles(monkeypatch, tmp_path):
    """torchaudio.pipelines as mtlser sees it, plus one tiny bundle per arch (real bundles are 95M+ parameters)."""
    real = checkpoints.torchaudio_bundles()
    fake = {}
    for arch in ARCHS:
        model = hf_model(arch, "base")
        params = dict(torchaudio_kwargs(model), encoder_projection_dropout=0.1, encoder_attention_dropout=0.1,
                      encoder_ff_interm_dropout=0.0, encoder_dropout=0.1, encoder_layer_drop=0.05, aux_num_out=None)
        params["extractor_conv_layer_config"] = [tuple(c) for c in params["extractor_conv_layer_config"]]
        name = f"{'WAVLM' if arch == 'wavlm' else arch.upper()}_TINY"
        fake[name] = types.SimpleNamespace(_path=f"{arch}_tiny_bundle.pth", _params=params,
                                           _model_type="WavLM" if arch == "wavlm" else "Wav2Vec2",
                                           _normalize_waveform=False)
        write_torchaudio_pth(model, tmp_path / "cache", f"{arch}_tiny_bundle.pth")
    monkeypatch.setattr(checkpoints, "torchaudio_bundles", lambda: {**real, **fake})
    return tmp_path / "cache"


@pytest.mark.parametrize("arch", ARCHS)
def test_torchaudio_bundle_by_name_and_by_file(arch, tiny_bundles):
    model = hf_model(arch, "base")
    name = f"{'WAVLM' if arch == 'wavlm' else arch.upper()}_TINY"
    by_name = load_backbone(arch, f"torchaudio:{name}", cache_dir=tiny_bundles, **NO_DROPOUT)
    assert max_diff(by_name, model) <= TOL
    # The cached file alone: the architecture comes from the bundle whose file it is.
    by_file = load_backbone(arch, tiny_bundles / f"{arch}_tiny_bundle.pth", **NO_DROPOUT)
    assert max_diff(by_file, model) <= TOL
    assert by_file.arch_kwargs["encoder_num_layers"] == 2


def test_real_bundle_registry_names_files_and_families():
    assert checkpoints.bundle_for_file(Path("wav2vec2_fairseq_base_ls960.pth")) == "WAV2VEC2_BASE"
    bundles = checkpoints.torchaudio_bundles()
    assert {"WAV2VEC2_BASE", "HUBERT_BASE", "WAVLM_BASE_PLUS"} <= set(bundles)
    assert bundles["WAVLM_BASE_PLUS"]._model_type == "WavLM"


def test_missing_bundle_file_names_the_file_and_cache_dir(tmp_path):
    with pytest.raises(MtlserError, match=r"wav2vec2_fairseq_base_ls960\.pth: not found.*backbone\.cache_dir"):
        load_backbone("wav2vec2", "torchaudio:WAV2VEC2_BASE", cache_dir=tmp_path)
    with pytest.raises(MtlserError, match=r"no such torchaudio bundle.*torchaudio:WAV2VEC2_BASE"):
        load_backbone("wav2vec2", "torchaudio:WAV2VEC3_HUGE")
    with pytest.raises(MtlserError, match=r"HUBERT_BASE: is a hubert checkpoint \(torchaudio bundle "
                                          r"torchaudio:HUBERT_BASE\)"):
        load_backbone("wav2vec2", "torchaudio:HUBERT_BASE", cache_dir=tmp_path)


def test_loaded_architecture_rebuilds_without_the_checkpoint(tmp_path):
    """model.yaml's arch_kwargs (YAML round trip, as the trainer writes and mtlser.infer reads) rebuild the
    exact model; with the loaded weights it reproduces the outputs after the checkpoint is gone."""
    import yaml

    from mtlser.model.backbone import Backbone

    model = hf_model("wavlm", "large")
    d = write_hf_safetensors(model, tmp_path / "hf")
    loaded = load_backbone("wavlm", d, **NO_DROPOUT).eval()
    kw = yaml.safe_load(yaml.safe_dump({k: (list(map(list, v)) if k == "extractor_conv_layer_config" else v)
                                        for k, v in loaded.arch_kwargs.items()}))
    kw["extractor_conv_layer_config"] = [tuple(c) for c in kw["extractor_conv_layer_config"]]
    weights = {k: v.clone() for k, v in loaded.state_dict().items()}
    shutil.rmtree(d)
    rebuilt = Backbone("wavlm", kw)
    rebuilt.load_state_dict(weights, strict=True)
    assert max_diff(rebuilt, model) <= TOL


# ----------------------------------------------------------------------------- errors: one clear message
def test_missing_path(tmp_path):
    with pytest.raises(MtlserError, match=r"nope: pretrained backbone not found \(backbone\.init\).*never downloads"):
        load_backbone("wav2vec2", tmp_path / "nope")


def test_dir_without_config_json(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(MtlserError, match=r"without config\.json"):
        load_backbone("wav2vec2", tmp_path)


def test_hf_dir_without_weights(tmp_path):
    d = write_hf_safetensors(hf_model("wav2vec2", "base"), tmp_path / "hf")
    (d / "model.safetensors").unlink()
    with pytest.raises(MtlserError, match=r"hf: no weights; expected one of model\.safetensors"):
        load_backbone("wav2vec2", d)


@pytest.mark.parametrize("arch, wrong", [("wav2vec2", "wavlm"), ("wavlm", "hubert"), ("hubert", "wav2vec2")])
def test_arch_mismatch_hf(arch, wrong, tmp_path):
    d = write_hf_safetensors(hf_model(arch, "base"), tmp_path / "hf")
    with pytest.raises(MtlserError, match=rf"config\.json: is a {arch} checkpoint .* backbone\.arch is '{wrong}'"):
        load_backbone(wrong, d)


def test_arch_mismatch_fairseq(tmp_path, omegaconf_like):
    path = write_fairseq(hf_model("hubert", "base"), tmp_path, "cfg", omegaconf_like)
    with pytest.raises(MtlserError, match=rf"{path.name}: is a hubert checkpoint \(its fairseq config\)"):
        load_backbone("wavlm", path)


def test_arch_mismatch_torchaudio_state_dict(tmp_path):
    path = write_torchaudio_pth(hf_model("wav2vec2", "base"), tmp_path)
    with pytest.raises(MtlserError, match=r"tiny\.pth: holds wav2vec2/HuBERT attention weights.*'wavlm'"):
        load_backbone("wavlm", path)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    model = hf_model("wav2vec2", "large")
    d = write_hf_safetensors(model, tmp_path / "hf")
    from safetensors.torch import load_file, save_file

    state = load_file(str(d / "model.safetensors"))
    del state["encoder.layers.1.final_layer_norm.bias"]
    state["encoder.layers.1.adapter.weight"] = torch.zeros(3)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(MtlserError) as e:
        load_backbone("wav2vec2", d)
    msg = str(e.value)
    assert "model.safetensors: does not match" in msg
    assert "1 missing keys ['encoder.transformer.layers.1.final_layer_norm.bias']" in msg
    assert "1 unexpected keys ['encoder.transformer.layers.1.adapter.weight']" in msg


def test_wrong_size_for_a_bare_state_dict(tmp_path):
    model = hf_model("wav2vec2", "base")
    path = write_torchaudio_pth(model, tmp_path)
    three_layers = dict(torchaudio_kwargs(model), encoder_num_layers=3)
    with pytest.raises(MtlserError, match=r"tiny\.pth: does not match .* missing keys "
                                          r"\['encoder\.transformer\.layers\.2\..*backbone\.size"):
        load_backbone("wav2vec2", path, size="custom", custom=three_layers)
    wider = dict(torchaudio_kwargs(model), encoder_ff_interm_features=128)
    with pytest.raises(MtlserError, match=r"tiny\.pth: shape mismatch for 6 tensors, e\.g\. encoder\.transformer\."
                                          r"layers\.0\.feed_forward\.intermediate_dense\.weight: checkpoint "
                                          r"\(96, 64\) vs model \(128, 64\)"):
        load_backbone("wav2vec2", path, size="custom", custom=wider)


def test_fairseq_missing_key(tmp_path, omegaconf_like):
    path = write_fairseq(hf_model("wavlm", "base"), tmp_path, "wavlm")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["model"]["encoder.layers.1.fc2.weight"]
    torch.save(ckpt, path)
    with pytest.raises(MtlserError, match=r"wavlm_wavlm\.pt: .*missing keys \['encoder\.transformer\.layers\.1\."
                                          r"feed_forward\.output_dense\.weight'\]"):
        load_backbone("wavlm", path)


def test_hf_weights_without_config_are_refused(tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in hf_model("wav2vec2", "base").state_dict().items()}
    save_file(state, str(tmp_path / "weights.safetensors"))
    with pytest.raises(MtlserError, match=r"weights\.safetensors: a bare state dict that is not in torchaudio's "
                                          r"naming \(Hugging Face weights: give the directory with their config"):
        load_backbone("wav2vec2", tmp_path / "weights.safetensors")


def test_unsupported_hf_model_type(tmp_path):
    d = write_hf_safetensors(hf_model("wav2vec2", "base"), tmp_path / "hf")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "data2vec-audio"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MtlserError, match=r"config\.json: model_type is 'data2vec-audio' \(a different architecture\)"):
        load_backbone("wav2vec2", d)


def test_hf_config_with_defaults_left_out(tmp_path):
    """config.json written with use_diff (only non-default values) maps through transformers' defaults."""
    model = hf_model("wavlm", "base")
    d = write_hf_safetensors(model, tmp_path / "hf")
    cfg = json.loads((d / "config.json").read_text())
    for key in ("conv_bias", "feat_extract_norm", "do_stable_layer_norm", "layer_norm_eps", "hidden_act"):
        cfg.pop(key)
    (d / "config.json").write_text(json.dumps(cfg))
    assert max_diff(load_backbone("wavlm", d, **NO_DROPOUT), model) <= TOL


# ----------------------------------------------------------------------------- safe loading of fairseq pickles
class _Exploit:
    """Unpickling this runs a command (the classic pickle attack)."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        import subprocess

        return (subprocess.call, (self.cmd,))


class _OsExploit(_Exploit):
    def __reduce__(self):
        import os

        return (os.system, (self.cmd,))


def test_fairseq_pickle_code_never_runs(tmp_path):
    """A checkpoint whose config would run a command: the model loads, the command does not run."""
    model = hf_model("wav2vec2", "base")
    marker = tmp_path / "pwned"
    path = write_fairseq(model, tmp_path, "args")
    ckpt = {"args": argparse.Namespace(arch="wav2vec2", conv_feature_layers=FAIRSEQ_CONV,
                                       **{k: v for k, v in fairseq_model_cfg(model, None).items()
                                          if k != "conv_feature_layers"}),
            "model": fairseq_state(model), "extra_state": _Exploit(["touch", str(marker)])}
    torch.save(ckpt, path)
    assert max_diff(load_backbone("wav2vec2", path, **NO_DROPOUT), model) <= TOL
    assert not marker.exists()
    torch.save({"args": _OsExploit(f"touch {marker}"), "model": fairseq_state(model)}, path)
    with pytest.raises(MtlserError, match=r"cannot be read safely.*never runs code"):
        load_backbone("wav2vec2", path)
    assert not marker.exists()


def test_conv_feature_layers_are_parsed_not_evaluated(tmp_path):
    assert checkpoints.parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2", tmp_path) == \
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    for bad in ("__import__('os').system('true')", "[(1, 2, 3)] * 10**9", "[(1, 2)]"):
        with pytest.raises(MtlserError, match=r"conv_feature_layers"):
            checkpoints.parse_conv_layers(bad, tmp_path)


def test_real_omegaconf_layout_is_understood():
    """plain() on the stand-ins of omegaconf 2.4's pickled layout (recorded from a real DictConfig)."""
    from mtlser.model.safe_load import _stand_in, plain

    def make(name, state):
        obj = _stand_in(name)()
        obj.__setstate__(state)
        return obj

    root = make("omegaconf.dictconfig.DictConfig", {"_metadata": None, "_parent": None, "_content": {}})
    model = make("omegaconf.dictconfig.DictConfig", {"_metadata": make("omegaconf.base.ContainerMetadata", {}),
                                                     "_parent": root, "_content": {}})
    model._state["_content"]["encoder_layers"] = make("omegaconf.nodes.IntegerNode",
                                                      {"_metadata": None, "_parent": model, "_val": 12})
    model._state["_content"]["extractor_mode"] = make("omegaconf.nodes.EnumNode", {"_val": _enum("default")})
    root._state["_content"]["model"] = model
    assert plain(root) == {"model": {"encoder_layers": 12, "extractor_mode": "default"}}


def _enum(value):
    from mtlser.model.safe_load import _stand_in

    return _stand_in("fairseq.dataclass.constants.Choices")(value)  # Enum members pickle as Cls(value)


# ----------------------------------------------------------------------------- config and experiment dir
def test_pretrained_mask_embedding_is_used_for_time_masking(tmp_path, omegaconf_like):
    model = hf_model("hubert", "base")
    d = write_hf_safetensors(model, tmp_path / "hf")
    bb = load_backbone("hubert", d, mask_time_prob=0.05)
    assert torch.equal(bb.mask_embedding.detach(), model.masked_spec_embed.detach())
    fs = write_fairseq(model, tmp_path / "fs", "cfg", omegaconf_like)  # fairseq's mask_emb
    assert torch.equal(load_backbone("hubert", fs, mask_time_prob=0.05).mask_embedding.detach(),
                       model.masked_spec_embed.detach())


def test_config_override_points_the_recipe_at_a_checkpoint(tmp_path):
    from mtlser.config import load_config
    from mtlser.model.backbone import build_backbone

    model = hf_model("wavlm", "base")
    d = write_hf_safetensors(model, tmp_path / "wavlm-base-plus")
    cfg = load_config(None, ["--backbone.arch", "wavlm", "--backbone.init", str(d), "--backbone.dropout", "0",
                             "--backbone.attention_dropout", "0", "--backbone.projection_dropout", "0",
                             # HF's CNN normalises over the padded batch; mtlser's default does not (docs/speed.md)
                             "--backbone.padding_invariant_cnn", "false"])
    assert cfg.backbone.pos_conv_impl == "fft"  # the FFT positional conv agrees with HF's Conv1d
    assert max_diff(build_backbone(cfg.backbone), model) <= TOL


def test_trained_model_dir_needs_no_checkpoint(tmp_path, make_data_dir):
    """The trainer records the loaded architecture in model.yaml; mtlser.infer rebuilds it after the
    pretrained checkpoint is deleted, with identical outputs."""
    from tests.conftest import tiny_config_dict

    from mtlser.config import load_config
    from mtlser.infer import load_model
    from mtlser.train.trainer import Trainer

    model = hf_model("wav2vec2", "large")
    d = write_hf_safetensors(model, tmp_path / "hf")
    make_data_dir("data/train", n_spk=2, n_utt=2)
    make_data_dir("data/valid", n_spk=2, n_utt=1)
    backbone = {"arch": "wav2vec2", "init": str(d), "size": "base", "custom": {}}
    cfg = load_config(None, tiny_config_dict(backbone=backbone, loss={"lambda": 0.0}))
    trainer = Trainer(cfg, tmp_path / "data", token_list=["<blank>"], exp_dir=tmp_path / "exp")
    trainer.write_model_files()
    trainer.save_best()
    shutil.rmtree(d)
    rebuilt, _ = load_model(tmp_path / "exp")
    assert rebuilt.backbone.arch_kwargs["encoder_layer_norm_first"] is True
    assert max_diff(rebuilt.backbone, model) <= TOL


def test_loading_imports_neither_transformers_nor_fairseq(tmp_path, omegaconf_like, monkeypatch):
    """transformers is a test-only dependency: reading an HF dir or a fairseq checkpoint must not import it.

    In-process (a subprocess would spend seconds importing torch): the three packages are made unimportable
    (a None entry in sys.modules makes ``import`` raise) and mtlser's model package is imported afresh.
    """
    import importlib

    model = hf_model("wavlm", "base")
    hf = write_hf_safetensors(model, tmp_path / "hf")
    fs = write_fairseq(hf_model("hubert", "base"), tmp_path / "fs", "cfg", omegaconf_like)
    for name in ("transformers", "fairseq", "omegaconf"):
        monkeypatch.setitem(sys.modules, name, None)
    import mtlser

    monkeypatch.setattr(mtlser, "model", sys.modules["mtlser.model"])  # restored after the fresh import rebinds it
    for name in [m for m in sys.modules if m.startswith("mtlser.model")]:
        monkeypatch.delitem(sys.modules, name)
    fresh = importlib.import_module("mtlser.model.backbone")
    assert max_diff(fresh.load_backbone("wavlm", hf, **NO_DROPOUT), model) <= TOL
    fresh.load_backbone("hubert", fs)
    with pytest.raises(ImportError):
        import transformers as _  # noqa: F401  (the block works)
