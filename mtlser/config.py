"""Experiment configuration: plain YAML loaded into typed dataclasses.

Every hyperparameter lives in the YAML files under ``conf/`` (one file per
experiment); this module is where each field is documented, once, in the
``doc`` of its field. Defaults are the paper's settings (Li et al.: wav2vec2-
base fine-tuned whole, Adam 5e-5, weight decay 1e-5, batch 16, 100 epochs,
lambda 0.1), so a YAML lists what its experiment is about and the resolved
config saved in the experiment dir (``config.yaml``) lists everything. Where a
default is not the paper's (``train.model_selection``, ``train.precision``), its
doc says so and the paper configs under ``conf/`` set the paper's value.

Any field can be overridden on the command line, SpeechBrain/ESPnet style::

    python -m mtlser.train --config conf/train_mtl.yaml --loss.lambda 0 --optim.lr 1e-4

``python -m mtlser.config`` prints every field with its default and doc.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtlser.utils import MtlserError


def doc(text: str, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with its documentation attached (metadata['doc'])."""
    kw: dict[str, Any] = {"metadata": {"doc": text}}
    if default is not dataclasses.MISSING:
        kw["default"] = default
    if default_factory is not dataclasses.MISSING:
        kw["default_factory"] = default_factory
    return field(**kw)


@dataclass
class BackboneConfig:
    arch: str = doc("Self-supervised backbone: wav2vec2 | hubert | wavlm.", "wav2vec2")
    init: str | None = doc(
        "Pretrained weights, read locally, never downloaded (docs/backbones.md): a Hugging Face model dir "
        "(config.json + model.safetensors or pytorch_model.bin); torchaudio:BUNDLE (e.g. "
        "torchaudio:WAV2VEC2_BASE, its file read from `cache_dir`) or such a bundle's cached .pth file; a fairseq "
        "checkpoint (wav2vec_small.pt, hubert_base_ls960.pt, WavLM-Base+.pt); or a state dict in torchaudio's "
        "naming (architecture from `size`). The checkpoint sets the architecture and must be an `arch` model. "
        "null = random init, for smoke tests only (a loud warning is logged).", None)
    cache_dir: str | None = doc(
        "Directory holding the weights file of a torchaudio:BUNDLE `init`; null = torch hub's cache "
        "($TORCH_HOME/hub/checkpoints, where bundle.get_model() stores it).", None)
    size: str = doc(
        "Architecture when `init` does not carry one (null init, or a bare torchaudio state dict): base | large | "
        "custom. `custom` takes torchaudio.models.wav2vec2_model arguments from `custom`.", "base")
    custom: dict = doc(
        "torchaudio.models.wav2vec2_model keyword arguments for size=custom, e.g. a tiny model for the "
        "mini corpus (extractor_conv_layer_config, encoder_embed_dim, encoder_num_layers, ...).", default_factory=dict)
    freeze_feature_encoder: bool = doc(
        "Freeze the 7-layer CNN feature encoder. The paper trains it (false); freezing is common "
        "practice and much faster.", False)
    freeze: bool = doc(
        "Probing, SUPERB style: the whole backbone stays frozen in eval mode (no dropout, masking or LayerDrop) "
        "and out of the optimizer; only the layer fusion and the heads train. Not the paper (it fine-tunes).",
        False)
    freeze_steps: int = doc("Keep the whole backbone frozen for the first N optimizer steps (heads warm up).", 0)
    lr_scale: float = doc("Backbone learning rate = optim.lr * lr_scale (fusion and heads use optim.lr).", 1.0)
    mask_time_prob: float = doc(
        "wav2vec2-style time masking of the transformer input during training (fairseq mask_prob, HF "
        "mask_time_prob): each utterance gets about mask_time_prob * valid_frames / mask_time_length spans, so "
        "roughly this share of its valid frames is replaced by the (pre-trained) mask embedding; padding is never "
        "masked, nor utterances shorter than one span. The paper uses none (0).", 0.0)
    mask_time_length: int = doc("Length in frames of each masked span.", 10)
    layer_drop: float = doc(
        "Probability of skipping a transformer layer in training (LayerDrop). Kept at 0 while layers "
        "are fused: a dropped layer would feed the fusion a copy of its input.", 0.0)
    dropout: float = doc("Dropout after attention and feed-forward blocks (fairseq `dropout`).", 0.1)
    attention_dropout: float = doc("Dropout on attention weights (fairseq `attention_dropout`).", 0.1)
    activation_dropout: float = doc("Dropout inside the feed-forward block (fairseq `activation_dropout`).", 0.0)
    projection_dropout: float = doc("Dropout after the feature projection (fairseq `dropout_input`).", 0.1)
    normalize_waveform: bool = doc(
        "Normalise each waveform to zero mean and unit variance before the CNN. wav2vec2-base was "
        "pre-trained without it (fairseq normalize=False); large-lv60 models expect it.", False)
    padding_invariant_cnn: bool = doc(
        "Take the statistics of the CNN's first-layer GroupNorm (group_norm extractors: wav2vec2-base, "
        "HuBERT-base) over each utterance's own samples, not over the zero-padded batch, so an utterance's "
        "features do not depend on its batch mates (as in pre-training, where batches were cropped, and as "
        "one utterance alone at inference). false = over the padded batch, Hugging Face's and torchaudio's "
        "behaviour. Needed for data.pad_ladder and data.cache_cnn_features to leave the maths unchanged. "
        "No effect on layer_norm extractors (large), which are per frame anyway.", True)
    pos_conv_impl: str = doc(
        "How the transformer's positional convolution (grouped Conv1d, kernel 128, 16 groups in base) is "
        "computed: fft (by FFT in float32: same weights and maths, far fewer FLOPs; the direct grouped "
        "conv is the slowest op of a bf16 step on an H100) | conv (torchaudio's Conv1d).", "fft")
    cnn_norm_impl: str = doc(
        "How the CNN's first-layer GroupNorm and its GELU run (group_norm extractors): rows (torch's GroupNorm "
        "kernel one utterance at a time with padding_invariant_cnn, then GELU; reads the lengths on the host: "
        "one sync per step) | fused (one batched function over the whole padded batch, valid frames as a mask "
        "on the device: no host sync, no per-row loop, and its backward recomputes instead of storing the "
        "norm's output: one activation of (batch, 512, samples / 5) less). Same maths.", "rows")
    cnn_channels_last: bool = doc(
        "Run the CNN's convolutions as 2-d convolutions in channels-last memory layout (what cuDNN's "
        "tensor-core kernels prefer); the CNN output then reaches the transformer without a transpose copy. "
        "Same maths.", False)
    cnn_precision: str = doc(
        "Precision of the CNN when train.precision autocasts: autocast (the CNN in bf16/fp16 like the rest) | "
        "fp32 (the CNN in float32; on GPUs cuDNN then uses TF32 tensor cores where "
        "torch.backends.cudnn.allow_tf32, torch's default, allows). The transformer keeps autocasting.",
        "autocast")


@dataclass
class ModelConfig:
    fusion: str = doc(
        "How the L+1 hidden states become one: softmax (the paper: H = sum_l softmax(alpha)_l H_l, "
        "alpha initialised to 0) | last (the last layer only).", "softmax")
    head_dropout: float = doc("Dropout on the fused features before both heads.", 0.0)


@dataclass
class LossConfig:
    lambda_: float = doc(
        "YAML key `lambda`: weight of the CTC term, L = L_CE + lambda * L_CTC. 0.1 in the paper; 0 gives "
        "the single-task baseline (the CTC head is then not built).", 0.1)
    ctc_reduction: str = doc(
        "How per-utterance CTC losses make L_CTC: sum (summed over the batch, as Hugging Face's "
        "Wav2Vec2 default that the public MTL-SER code inherits) | mean_batch (sum / batch size, ESPnet) | "
        "mean (each divided by its target length, then averaged: torch's default).", "sum")
    class_weights: list | None = doc(
        "Per-class weights for the cross entropy, in the emotion inventory's order (IEMOCAP: ang hap sad neu); "
        "null = unweighted (the paper).", None)
    class_weighting: str = doc(
        "none (CE weights are loss.class_weights, or none) | balanced (weights n / (K n_k) from the class counts "
        "n_k of the fold's training set, computed when training starts and recorded as loss.class_weights in "
        "the fold's config.yaml and checkpoint; for unbalanced corpora such as MSP-Podcast).", "none")
    ce_weight: float = doc(
        "Weight w_ce of the cross entropy, L = w_ce * L_CE + attr_weight * L_attr + lambda * L_CTC; 1 in the paper. "
        "0 trains no class task (the emotion head is still built); data with no classes (an empty inventory) "
        "builds no emotion head and no CE term whatever this weight.", 1.0)
    attributes: bool = doc(
        "Train a regression head for the data's dimensional attributes (utt2attr + its declaration `attributes`, "
        "mtlser.data.attributes) on the same pooled fusion as the emotion head. false = no attribute head (the paper).",
        False)
    attr_weight: float = doc("Weight of L_attr when loss.attributes is true.", 1.0)
    attr_loss: str = doc(
        "L_attr: ccc (mean over attributes of 1 - CCC over the batch, the MSP-Podcast challenge baselines' loss) | "
        "mse (mean squared error with each attribute scaled to [0, 1] by its declared scale).", "ccc")


@dataclass
class OptimConfig:
    name: str = doc("adam (the paper; weight decay as L2) | adamw (decoupled weight decay).", "adam")
    lr: float = doc("Learning rate of fusion and heads (backbone: lr * backbone.lr_scale).", 5e-5)
    weight_decay: float = doc("Weight decay.", 1e-5)
    betas: list = doc("Adam betas.", default_factory=lambda: [0.9, 0.999])
    eps: float = doc("Adam epsilon.", 1e-8)
    grad_clip: float = doc("Clip the global gradient norm to this value; 0 = no clipping (the paper states none).", 0.0)


@dataclass
class SchedulerConfig:
    name: str = doc("constant (the paper states none) | warmup_linear (linear warm-up, then linear decay to 0) | "
                    "warmup_constant.", "constant")
    warmup_steps: int = doc("Warm-up length in optimizer steps.", 0)


@dataclass
class DataConfig:
    emotions: list | None = doc(
        "Emotion classes in index order (the CE class and the CTC tag of each). null = the data's inventory, "
        "the `emotions` file stage 0 writes into data/all and stage 2 copies into the folds (mtlser.data.emotions); "
        "training then records it here in config.yaml. A list is a check: it must equal the data's inventory, "
        "labels and order, or training stops before it starts, naming both.", None)
    token_type: str = doc(
        "CTC target set: the text_<token_type> file of the data dir. phncls (the paper: emotion-tagged "
        "phoneme classes; phncls_notag without the tag), phn, char, bpe<N> (plain; with _emo: tagged) "
        "(mtlser.text.tokenize). The recipe sets it from --token-type/--emo-tag/--nbpe.", "phncls")
    batch_size: int = doc("Utterances per batch (the paper: 16).", 16)
    batching: str = doc(
        "random (utterances in random order) | bucket (each epoch: shuffle, sort by duration within windows "
        "of `bucket_window` batches, shuffle the batches; same maths, less padding).", "bucket")
    bucket_window: int = doc("Batches per sorting window for batching=bucket.", 50)
    max_duration: float = doc("Utterances longer than this (seconds) are cut to a random window of this length "
                              "in training; 0 = no limit (the paper).", 0.0)
    pad_ladder: float = doc(
        "Pad each batch up to the next length of a geometric ladder with this ratio between consecutive "
        "lengths (multiples of 20 ms), so a few dozen shapes repeat across epochs (cuDNN/cuFFT plans, "
        "allocator blocks and compiled graphs are reused); costs about (ratio - 1) / 2 extra padding. "
        "1 = pad to the batch's longest utterance only. The loss is unchanged with "
        "backbone.padding_invariant_cnn.", 1.05)
    cache_cnn_features: bool = doc(
        "With backbone.freeze_feature_encoder: compute the CNN output once per utterance, store it under "
        "cnn_cache_dir (shared by the folds of an experiment) and train the transformer on it; epochs skip "
        "the CNN. No effect when the CNN is trained (the paper).", True)
    cnn_cache_dir: str = doc(
        "Where cached CNN features go: a subdir per CNN fingerprint (weights, extractor, normalisation), "
        "memory-mapped float32. Empty = cnn_cache/ next to the fold dirs (exp/<tag>/cnn_cache); a path such as "
        "dump/cnn_cache (relative to the working dir, the recipe dir) shares it across experiments too.", "")
    cache_audio: bool = doc("Keep decoded waveforms in memory after the first epoch.", False)
    num_workers: int = doc(
        "DataLoader worker processes that read and collate batches off the training process, ahead of the "
        "step (0 = load in the training process). Same batches, same training (random crops of "
        "data.max_duration are then drawn in the workers).", 0)
    sample_rate: int = doc("Expected sample rate; stage 2 converts other audio once.", 16000)


@dataclass
class TrainConfig:
    epochs: int = doc("Training epochs (the paper: 100), >= 1. A rerun with more epochs continues a finished fold "
                      "(other changed fields refuse: mtlser.train.resume).", 100)
    seed: int = doc("Seed of every random choice in training (init, batches, dropout).", 1)
    device: str = doc("auto (cuda when present) | cpu | cuda | cuda:N.", "auto")
    precision: str = doc("auto (bf16 on a GPU that supports it, else fp32) | fp32 | bf16 (autocast) | fp16 "
                         "(autocast with loss scaling). The paper's configs set fp32 (the paper names no reduced "
                         "precision); bf16 is a speed option whose effect on WA/UA has not been measured here "
                         "(docs/speed.md: on CPU the loss is within 2e-2 and the gradient cosine > 0.99 of fp32).",
                         "auto")
    sdpa_backend: str = doc(
        "Attention kernel (torch scaled_dot_product_attention) on GPUs: efficient (memory-efficient kernel: "
        "takes the padding mask, no per-shape planning; math if it refuses the inputs) | default (torch's "
        "choice: cuDNN on H100, which re-plans for every new shape, ~7.6 ms CPU per layer) | math | flash "
        "(refuses a padding mask) | cudnn. CPUs always use torch's choice.", "efficient")
    cudnn_benchmark: bool = doc(
        "Let cuDNN time its convolution algorithms once per shape (the CNN; shapes repeat with data.pad_ladder). "
        "Off unless the benchmark shows it pays: choosing by timing makes GPU runs less reproducible.", False)
    compile: str = doc(
        "torch.compile the transformer layers: none | default | reduce-overhead (CUDA graphs, one per padded "
        "length of data.pad_ladder). Off unless the benchmark shows it pays (bench/train_throughput.py "
        "--compile).", "none")
    compile_scope: str = doc(
        "What train.compile compiles: layer (each transformer layer on its own; torch reuses one graph for the "
        "identical layers, but each is its own launch and the code between them runs eagerly) | transformer "
        "(the whole layer stack with the positional conv as one function: one graph per padded length) | "
        "backbone (CNN and transformer as one function; the CNN is captured whole only with "
        "backbone.cnn_norm_impl fused, which reads no lengths on the host).", "transformer")
    compile_dynamic: bool = doc(
        "With train.compile: the padded length as a symbol, one graph for every length (CUDA graphs are still "
        "recorded per length, cheaply), instead of one graph compiled per length (minutes each for "
        "wav2vec2-base: pays only over many epochs). The FFT positional conv picks its transform size from the "
        "length, so with backbone.pos_conv_impl fft dynamo still recompiles when that size changes.", False)
    defer_host_sync: bool = doc(
        "Keep each step's statistics (losses, accuracy, CTC skips, the finite-loss check) on the device and "
        "read them once per log_interval and at the end of the epoch, so the host can queue the next steps "
        "while the GPU works; the CTC loss masks unusable utterances instead of selecting them (no "
        "data-dependent shapes). Same losses and statistics; a non-finite loss is then reported at the next "
        "read, naming its step and utterances.", False)
    num_threads: int = doc("torch CPU threads; 0 = torch's default.", 0)
    model_selection: str = doc(
        "Which epoch's model the fold reports (best.safetensors, best.json): valid (ours: the best epoch on the "
        "fold's valid set by `select_metric`; needs stage 2's --valid share or session-mate) | last (the paper's "
        "protocol: no model selection, the model after the last epoch; every training-side utterance trains, the "
        "fold's valid/ set too when stage 2 made one). The paper configs set last. Default valid, so that a "
        "config without this field selects as before.", "valid")
    select_metric: str = doc("Validation metric that picks the best epoch (model_selection valid): ua | wa | loss.",
                             "ua")
    patience: int = doc("Stop when the selection metric has not improved for this many epochs; 0 = never "
                        "(model_selection last has no metric: 0 only).", 0)
    log_interval: int = doc("Log training statistics every N steps.", 50)
    stop_after_epoch: int = doc(
        "End the run after this many epochs are trained, unfinished, as a preemption would right after that "
        "epoch's checkpoint; rerun with 0 to resume (bit-identical to a run never stopped). For tests and "
        "for splitting a run into jobs; 0 = off.", 0)
    keep_epoch_checkpoints: bool = doc(
        "Also keep the model of every epoch as epochN.safetensors in the fold dir, loadable as best.safetensors "
        "is (python -m mtlser.infer --weights epochN.safetensors).", False)
    tensorboard: bool = doc("Write per-epoch TensorBoard scalars (losses, valid WA/UA, learning rate, speed) to "
                            "tensorboard/ in the fold dir: `tensorboard --logdir exp/<tag>`.", True)


@dataclass
class Config:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


#: YAML names that are not Python identifiers.
_YAML_TO_ATTR = {"lambda": "lambda_"}
_ATTR_TO_YAML = {v: k for k, v in _YAML_TO_ATTR.items()}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        last_err = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except MtlserError as e:
                last_err = e
        raise last_err  # type: ignore[misc]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise MtlserError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise MtlserError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise MtlserError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise MtlserError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise MtlserError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise MtlserError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is list or origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise MtlserError(f"{where}: expected a list, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise MtlserError(f"{where}: expected a mapping, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict, where: str) -> Any:
    if not isinstance(data, dict):
        raise MtlserError(f"{where}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        attr = _YAML_TO_ATTR.get(key, key)
        if attr not in fields:
            names = sorted(_ATTR_TO_YAML.get(n, n) for n in fields)
            raise MtlserError(f"{where}: unknown key '{key}'; expected one of {names}")
        tp = hints[attr]
        sub = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(tp):
            kwargs[attr] = from_dict(tp, value or {}, sub)
        else:
            kwargs[attr] = _coerce(value, tp, sub)
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[_ATTR_TO_YAML.get(f.name, f.name)] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def parse_overrides(args: list[str]) -> dict:
    """``['--loss.lambda', '0', '--optim.lr=1e-4']`` -> nested dict; values parsed as YAML scalars."""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise MtlserError(f"unexpected argument '{arg}'; overrides look like --section.key value (a value with "
                              "spaces is quoted as one: --train-opts \"--backbone.init '/my models/w2v'\")")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise MtlserError(f"override '{arg}' has no value")
            key, raw = arg[2:], args[i + 1]
            i += 2
        parts = key.replace("-", "_").split(".") if "." in key else [key]
        parts = [p if p != "lambda_" else "lambda" for p in parts]
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> Config:
    """Load a YAML config (None = all defaults) and apply command-line overrides."""
    data: dict = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise MtlserError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise MtlserError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise MtlserError(f"{path}: expected a mapping of sections (backbone:, loss:, train:, ...) at the top, "
                              f"got a {type(data).__name__}")
    if overrides:
        over = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        data = _merge(data, over)
    cfg = from_dict(Config, data, where)
    check_config(cfg, where)
    return cfg


def check_config(cfg: Config, where: str = "config") -> None:
    choices = {
        "backbone.arch": (cfg.backbone.arch, ("wav2vec2", "hubert", "wavlm")),
        "backbone.size": (cfg.backbone.size, ("base", "large", "custom")),
        "model.fusion": (cfg.model.fusion, ("softmax", "last")),
        "loss.ctc_reduction": (cfg.loss.ctc_reduction, ("sum", "mean_batch", "mean")),
        "optim.name": (cfg.optim.name, ("adam", "adamw")),
        "scheduler.name": (cfg.scheduler.name, ("constant", "warmup_linear", "warmup_constant")),
        "data.batching": (cfg.data.batching, ("random", "bucket")),
        "train.precision": (cfg.train.precision, ("auto", "fp32", "bf16", "fp16")),
        "train.sdpa_backend": (cfg.train.sdpa_backend, ("efficient", "default", "math", "flash", "cudnn")),
        "train.compile": (cfg.train.compile, ("none", "default", "reduce-overhead")),
        "backbone.pos_conv_impl": (cfg.backbone.pos_conv_impl, ("fft", "conv")),
        "backbone.cnn_norm_impl": (cfg.backbone.cnn_norm_impl, ("rows", "fused")),
        "backbone.cnn_precision": (cfg.backbone.cnn_precision, ("autocast", "fp32")),
        "train.compile_scope": (cfg.train.compile_scope, ("layer", "transformer", "backbone")),
        "train.select_metric": (cfg.train.select_metric, ("ua", "wa", "loss")),
        "train.model_selection": (cfg.train.model_selection, ("valid", "last")),
        "loss.attr_loss": (cfg.loss.attr_loss, ("ccc", "mse")),
        "loss.class_weighting": (cfg.loss.class_weighting, ("none", "balanced")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise MtlserError(f"{where}: {key} = {value!r}; expected one of {', '.join(allowed)}")
    if cfg.train.model_selection == "last" and cfg.train.patience > 0:
        raise MtlserError(f"{where}: train.patience = {cfg.train.patience} stops on a valid metric, but "
                          "train.model_selection = last has none; set train.patience 0 or model_selection valid")
    if cfg.loss.ce_weight < 0 or cfg.loss.attr_weight < 0:
        raise MtlserError(f"{where}: loss.ce_weight = {cfg.loss.ce_weight}, loss.attr_weight = "
                          f"{cfg.loss.attr_weight}; expected >= 0")
    if cfg.loss.ce_weight == 0 and not cfg.loss.attributes:
        raise MtlserError(f"{where}: loss.ce_weight = 0 and loss.attributes = false leave no utterance-level task; "
                          "set loss.attributes: true (data with utt2attr) or ce_weight > 0")
    if cfg.loss.lambda_ < 0:
        raise MtlserError(f"{where}: loss.lambda = {cfg.loss.lambda_}; expected >= 0")
    if cfg.data.pad_ladder < 1:
        raise MtlserError(f"{where}: data.pad_ladder = {cfg.data.pad_ladder}; expected >= 1 (1 = no ladder)")
    if cfg.data.batch_size < 1:
        raise MtlserError(f"{where}: data.batch_size = {cfg.data.batch_size}; expected >= 1")
    if cfg.data.emotions:  # [] is a dimensional-only model's (no classes; mtlser.train.build)
        from mtlser.data.emotions import check_labels

        cfg.data.emotions = check_labels(cfg.data.emotions, f"{where}: data.emotions")
    if (cfg.loss.class_weights is not None and cfg.data.emotions is not None
            and len(cfg.loss.class_weights) != len(cfg.data.emotions)):
        raise MtlserError(f"{where}: loss.class_weights has {len(cfg.loss.class_weights)} values for "
                          f"{len(cfg.data.emotions)} emotions")
    if cfg.backbone.freeze and cfg.backbone.mask_time_prob > 0:
        raise MtlserError(f"{where}: backbone.freeze = true runs the backbone in eval mode, so "
                          f"backbone.mask_time_prob = {cfg.backbone.mask_time_prob} would never mask; set it to 0")
    if cfg.backbone.mask_time_prob < 0 or cfg.backbone.mask_time_prob >= 1 or cfg.backbone.mask_time_length < 1:
        raise MtlserError(f"{where}: backbone.mask_time_prob = {cfg.backbone.mask_time_prob} must be in [0, 1) and "
                          f"backbone.mask_time_length = {cfg.backbone.mask_time_length} >= 1")
    if cfg.backbone.size == "custom" and not cfg.backbone.custom:
        raise MtlserError(f"{where}: backbone.size = custom needs backbone.custom (wav2vec2_model arguments)")
    if cfg.train.epochs < 1:
        raise MtlserError(f"{where}: train.epochs = {cfg.train.epochs}; expected >= 1")
    if cfg.train.stop_after_epoch < 0:
        raise MtlserError(f"{where}: train.stop_after_epoch = {cfg.train.stop_after_epoch}; expected >= 0 (0 = off)")
    if cfg.data.num_workers < 0:
        raise MtlserError(f"{where}: data.num_workers = {cfg.data.num_workers}; expected >= 0 (0 = load in the "
                          "training process)")
    bb = cfg.backbone
    probabilities = {"backbone.dropout": bb.dropout, "backbone.attention_dropout": bb.attention_dropout,
                     "backbone.activation_dropout": bb.activation_dropout,
                     "backbone.projection_dropout": bb.projection_dropout, "backbone.layer_drop": bb.layer_drop,
                     "model.head_dropout": cfg.model.head_dropout}
    for key, p in probabilities.items():
        if not 0 <= p < 1:
            raise MtlserError(f"{where}: {key} = {p}; expected a probability in [0, 1)")


def save_config(cfg: Config, path: str | Path) -> None:
    from mtlser.utils.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None))


def describe(cls: type = Config, prefix: str = "") -> list[str]:
    lines = []
    for f in dataclasses.fields(cls):
        name = _ATTR_TO_YAML.get(f.name, f.name)
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            lines.extend(describe(tp, f"{prefix}{name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"{prefix}{name} (default {default!r}): {f.metadata.get('doc', '')}")
    return lines


if __name__ == "__main__":
    print("\n".join(describe()))
    sys.exit(0)
