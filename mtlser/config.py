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
import difflib
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from mtlser.utils import MtlserError


#: A field's range: None when the value is allowed, else what was expected ("a finite number > 0").
Check = Callable[[Any], "str | None"]


def at_least(low: float, *, strict: bool = False, below: float | None = None) -> Check:
    """Numbers >= ``low`` (> with ``strict``) and, with ``below``, < ``below``; a float must be finite too
    (nan passes every comparison test written the other way round, inf every lower bound)."""
    def check(value: Any) -> str | None:
        if math.isfinite(value) and (value > low if strict else value >= low) and (below is None or value < below):
            return None
        if below is not None:
            return f"{'a probability' if (low, below) == (0, 1) else 'a number'} in [{low}, {below})"
        return f"{'a finite number ' if isinstance(value, float) else ''}{'>' if strict else '>='} {low}"
    return check


def each(check: Check, length: int | None = None) -> Check:
    """A list whose items all pass ``check`` (and that has ``length`` items when given)."""
    def check_list(value: list) -> str | None:
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if numbers and (length is None or len(value) == length) and not any(check(float(v)) for v in value):
            return None
        return f"a list of {f'{length} ' if length else ''}numbers, each {check(math.nan)}"
    return check_list


def one_of(*choices: str) -> Check:
    return lambda value: None if value in choices else f"one of {', '.join(choices)}"


POSITIVE = at_least(0, strict=True)
NON_NEGATIVE = at_least(0)
AT_LEAST_ONE = at_least(1)
PROBABILITY = at_least(0, below=1)


def doc(text: str, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING,
        check: Check | None = None):
    """A dataclass field with its documentation attached (metadata['doc']), and the range of its values
    (metadata['check'], applied to every value from_dict reads: YAML, overrides, a model dir's config)."""
    kw: dict[str, Any] = {"metadata": {"doc": text, "check": check}}
    if default is not dataclasses.MISSING:
        kw["default"] = default
    if default_factory is not dataclasses.MISSING:
        kw["default_factory"] = default_factory
    return field(**kw)


@dataclass
class BackboneConfig:
    arch: str = doc("Self-supervised backbone: wav2vec2 | hubert | wavlm.", "wav2vec2",
                    check=one_of("wav2vec2", "hubert", "wavlm"))
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
        "custom. `custom` takes torchaudio.models.wav2vec2_model arguments from `custom`.", "base",
        check=one_of("base", "large", "custom"))
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
    freeze_steps: int = doc("Keep the whole backbone frozen for the first N optimizer steps (heads warm up).",
                            0, check=NON_NEGATIVE)
    lr_scale: float = doc("Backbone learning rate = optim.lr * lr_scale (fusion and heads use optim.lr).",
                          1.0, check=NON_NEGATIVE)
    mask_time_prob: float = doc(
        "wav2vec2-style time masking of the transformer input during training (fairseq mask_prob, HF "
        "mask_time_prob): each utterance gets about mask_time_prob * valid_frames / mask_time_length spans, so "
        "roughly this share of its valid frames is replaced by the (pre-trained) mask embedding; padding is never "
        "masked, nor utterances shorter than one span. The paper uses none (0).", 0.0, check=PROBABILITY)
    mask_time_length: int = doc("Length in frames of each masked span.", 10, check=AT_LEAST_ONE)
    layer_drop: float = doc(
        "Probability of skipping a transformer layer in training (LayerDrop). Kept at 0 while layers "
        "are fused: a dropped layer would feed the fusion a copy of its input.", 0.0, check=PROBABILITY)
    dropout: float = doc("Dropout after attention and feed-forward blocks (fairseq `dropout`).", 0.1, check=PROBABILITY)
    attention_dropout: float = doc("Dropout on attention weights (fairseq `attention_dropout`).",
                                   0.1, check=PROBABILITY)
    activation_dropout: float = doc("Dropout inside the feed-forward block (fairseq `activation_dropout`).",
                                    0.0, check=PROBABILITY)
    projection_dropout: float = doc("Dropout after the feature projection (fairseq `dropout_input`).",
                                    0.1, check=PROBABILITY)
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
        "conv is the slowest op of a bf16 step on an H100) | conv (torchaudio's Conv1d).", "fft",
        check=one_of("fft", "conv"))
    cnn_norm_impl: str = doc(
        "How the CNN's first-layer GroupNorm and its GELU run (group_norm extractors): rows (torch's GroupNorm "
        "kernel one utterance at a time with padding_invariant_cnn, then GELU; reads the lengths on the host: "
        "one sync per step) | fused (one batched function over the whole padded batch, valid frames as a mask "
        "on the device: no host sync, no per-row loop, and its backward recomputes instead of storing the "
        "norm's output: one activation of (batch, 512, samples / 5) less). Same maths.", "rows",
        check=one_of("rows", "fused"))
    cnn_channels_last: bool = doc(
        "Run the CNN's convolutions as 2-d convolutions in channels-last memory layout (what cuDNN's "
        "tensor-core kernels prefer); the CNN output then reaches the transformer without a transpose copy. "
        "Same maths.", False)
    cnn_precision: str = doc(
        "Precision of the CNN when train.precision autocasts: autocast (the CNN in bf16/fp16 like the rest) | "
        "fp32 (the CNN in float32; on GPUs cuDNN then uses TF32 tensor cores where "
        "torch.backends.cudnn.allow_tf32, torch's default, allows). The transformer keeps autocasting.",
        "autocast", check=one_of("autocast", "fp32"))


@dataclass
class ModelConfig:
    fusion: str = doc(
        "How the L+1 hidden states become one: softmax (the paper: H = sum_l softmax(alpha)_l H_l, "
        "alpha initialised to 0) | last (the last layer only).", "softmax", check=one_of("softmax", "last"))
    head_dropout: float = doc("Dropout on the fused features before both heads.", 0.0, check=PROBABILITY)


@dataclass
class LossConfig:
    lambda_: float = doc(
        "YAML key `lambda`: weight of the CTC term, L = L_CE + lambda * L_CTC. 0.1 in the paper; 0 gives "
        "the single-task baseline (the CTC head is then not built).", 0.1, check=NON_NEGATIVE)
    ctc_reduction: str = doc(
        "How per-utterance CTC losses make L_CTC: sum (summed over the batch, as Hugging Face's "
        "Wav2Vec2 default that the public MTL-SER code inherits) | mean_batch (sum / batch size, ESPnet) | "
        "mean (each divided by its target length, then averaged: torch's default).", "sum",
        check=one_of("sum", "mean_batch", "mean"))
    class_weights: list | None = doc(
        "Per-class weights for the cross entropy, in the emotion inventory's order (IEMOCAP: ang hap sad neu); "
        "null = unweighted (the paper).", None, check=each(NON_NEGATIVE))
    class_weighting: str = doc(
        "none (CE weights are loss.class_weights, or none) | balanced (weights n / (K n_k) from the class counts "
        "n_k of the fold's training set, computed when training starts and recorded as loss.class_weights in "
        "the fold's config.yaml and checkpoint; for unbalanced corpora such as MSP-Podcast).", "none",
        check=one_of("none", "balanced"))
    ce_weight: float = doc(
        "Weight w_ce of the cross entropy, L = w_ce * L_CE + attr_weight * L_attr + lambda * L_CTC; 1 in the paper. "
        "0 trains no class task (the emotion head is still built); data with no classes (an empty inventory) "
        "builds no emotion head and no CE term whatever this weight.", 1.0, check=NON_NEGATIVE)
    attributes: bool = doc(
        "Train a regression head for the data's dimensional attributes (utt2attr + its declaration `attributes`, "
        "mtlser.data.attributes) on the same pooled fusion as the emotion head. false = no attribute head (the paper).",
        False)
    attr_weight: float = doc("Weight of L_attr when loss.attributes is true.", 1.0, check=NON_NEGATIVE)
    attr_loss: str = doc(
        "L_attr: ccc (mean over attributes of 1 - CCC over the batch, the MSP-Podcast challenge baselines' loss) | "
        "mse (mean squared error with each attribute scaled to [0, 1] by its declared scale).", "ccc",
        check=one_of("ccc", "mse"))


@dataclass
class OptimConfig:
    name: str = doc("adam (the paper; weight decay as L2) | adamw (decoupled weight decay).", "adam",
                    check=one_of("adam", "adamw"))
    lr: float = doc("Learning rate of fusion and heads (backbone: lr * backbone.lr_scale).", 5e-5, check=POSITIVE)
    weight_decay: float = doc("Weight decay.", 1e-5, check=NON_NEGATIVE)
    betas: list = doc("Adam betas.", default_factory=lambda: [0.9, 0.999], check=each(PROBABILITY, 2))
    eps: float = doc("Adam epsilon.", 1e-8, check=POSITIVE)
    grad_clip: float = doc("Clip the global gradient norm to this value; 0 = no clipping (the paper states none).",
                           0.0, check=NON_NEGATIVE)


@dataclass
class SchedulerConfig:
    name: str = doc("constant (the paper states none) | warmup_linear (linear warm-up, then linear decay to 0) | "
                    "warmup_constant.", "constant", check=one_of("constant", "warmup_linear", "warmup_constant"))
    warmup_steps: int = doc("Warm-up length in optimizer steps.", 0, check=NON_NEGATIVE)


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
    batch_size: int = doc("Utterances per batch (the paper: 16).", 16, check=AT_LEAST_ONE)
    batching: str = doc(
        "random (utterances in random order) | bucket (each epoch: shuffle, sort by duration within windows "
        "of `bucket_window` batches, shuffle the batches; same maths, less padding).", "bucket",
        check=one_of("random", "bucket"))
    bucket_window: int = doc("Batches per sorting window for batching=bucket.", 50, check=AT_LEAST_ONE)
    max_duration: float = doc("Utterances longer than this (seconds) are cut to a random window of this length "
                              "in training; 0 = no limit (the paper).", 0.0, check=NON_NEGATIVE)
    pad_ladder: float = doc(
        "Pad each batch up to the next length of a geometric ladder with this ratio between consecutive "
        "lengths (multiples of 20 ms), so a few dozen shapes repeat across epochs (cuDNN/cuFFT plans, "
        "allocator blocks and compiled graphs are reused); costs about (ratio - 1) / 2 extra padding. "
        "1 = pad to the batch's longest utterance only. The loss is unchanged with "
        "backbone.padding_invariant_cnn.", 1.05, check=AT_LEAST_ONE)
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
        "data.max_duration are then drawn in the workers).", 0, check=NON_NEGATIVE)
    sample_rate: int = doc("Expected sample rate; stage 2 converts other audio once.", 16000, check=AT_LEAST_ONE)


@dataclass
class TrainConfig:
    epochs: int = doc("Training epochs (the paper: 100), >= 1. A rerun with more epochs continues a finished fold "
                      "(other changed fields refuse: mtlser.train.resume).", 100, check=AT_LEAST_ONE)
    seed: int = doc("Seed of every random choice in training (init, batches, dropout).", 1, check=NON_NEGATIVE)
    device: str = doc("auto (cuda when present) | cpu | cuda | cuda:N.", "auto")
    precision: str = doc("auto (bf16 on a GPU that supports it, else fp32) | fp32 | bf16 (autocast) | fp16 "
                         "(autocast with loss scaling). The paper's configs set fp32 (the paper names no reduced "
                         "precision); bf16 is a speed option whose effect on WA/UA has not been measured here "
                         "(docs/speed.md: on CPU the loss is within 2e-2 and the gradient cosine > 0.99 of fp32).",
                         "auto", check=one_of("auto", "fp32", "bf16", "fp16"))
    sdpa_backend: str = doc(
        "Attention kernel (torch scaled_dot_product_attention) on GPUs: efficient (memory-efficient kernel: "
        "takes the padding mask, no per-shape planning; math if it refuses the inputs) | default (torch's "
        "choice: cuDNN on H100, which re-plans for every new shape, ~7.6 ms CPU per layer) | math | flash "
        "(refuses a padding mask) | cudnn. CPUs always use torch's choice.", "efficient",
        check=one_of("efficient", "default", "math", "flash", "cudnn"))
    cudnn_benchmark: bool = doc(
        "Let cuDNN time its convolution algorithms once per shape (the CNN; shapes repeat with data.pad_ladder). "
        "Off unless the benchmark shows it pays: choosing by timing makes GPU runs less reproducible.", False)
    compile: str = doc(
        "torch.compile the transformer layers: none | default | reduce-overhead (CUDA graphs, one per padded "
        "length of data.pad_ladder). Off unless the benchmark shows it pays (bench/train_throughput.py "
        "--compile).", "none", check=one_of("none", "default", "reduce-overhead"))
    compile_scope: str = doc(
        "What train.compile compiles: layer (each transformer layer on its own; torch reuses one graph for the "
        "identical layers, but each is its own launch and the code between them runs eagerly) | transformer "
        "(the whole layer stack with the positional conv as one function: one graph per padded length) | "
        "backbone (CNN and transformer as one function; the CNN is captured whole only with "
        "backbone.cnn_norm_impl fused, which reads no lengths on the host).", "transformer",
        check=one_of("layer", "transformer", "backbone"))
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
    num_threads: int = doc("torch CPU threads; 0 = torch's default.", 0, check=NON_NEGATIVE)
    model_selection: str = doc(
        "Which epoch's model the fold reports (best.safetensors, best.json): valid (ours: the best epoch on the "
        "fold's valid set by `select_metric`; needs stage 2's --valid share or session-mate) | last (the paper's "
        "protocol: no model selection, the model after the last epoch; every training-side utterance trains, the "
        "fold's valid/ set too when stage 2 made one). The paper configs set last. Default valid, so that a "
        "config without this field selects as before.", "valid", check=one_of("valid", "last"))
    select_metric: str = doc(
        "Validation metric that picks the best epoch (model_selection valid): ua | wa | loss | ccc (the mean "
        "over the attributes of the valid CCC, higher is better; a model with loss.attributes, with or without "
        "classes).", "ua", check=one_of("ua", "wa", "loss", "ccc"))
    patience: int = doc("Stop when the selection metric has not improved for this many epochs; 0 = never "
                        "(model_selection last has no metric: 0 only).", 0, check=NON_NEGATIVE)
    log_interval: int = doc("Log training statistics every N steps.", 50, check=AT_LEAST_ONE)
    stop_after_epoch: int = doc(
        "End the run after this many epochs are trained, unfinished, as a preemption would right after that "
        "epoch's checkpoint; rerun with 0 to resume (bit-identical to a run never stopped). For tests and "
        "for splitting a run into jobs; 0 = off.", 0, check=NON_NEGATIVE)
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
        raise MtlserError(f"{where} = {value!r}; expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise MtlserError(f"{where} = {value!r}; expected an integer")
        try:
            return int(value)
        except ValueError:
            raise MtlserError(f"{where} = {value!r}; expected an integer") from None
    if tp is float:
        if isinstance(value, bool):
            raise MtlserError(f"{where} = {value!r}; expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise MtlserError(f"{where} = {value!r}; expected a number") from None
    if tp is str:
        if not isinstance(value, str):
            raise MtlserError(f"{where} = {value!r}; expected a string")
        return value
    if tp is list or origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise MtlserError(f"{where} = {value!r}; expected a list")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise MtlserError(f"{where} = {value!r}; expected a mapping")
        return value
    return value


def from_dict(cls: type, data: dict, where: str, prefix: str = "",
              errors: list[tuple[str, str]] | None = None) -> Any:
    """``cls`` from a mapping of ``where`` (a YAML file, ``--train-opts``): every key known, every value of
    its field's type and range (the ``check`` beside its doc); errors name ``where`` and the dotted key.

    Every bad field is named, not only the first: into ``errors`` as (dotted key, message) when given (the
    caller raises), else raised here as one line.
    """
    found: list[tuple[str, str]] = [] if errors is None else errors
    kwargs = {}
    if not isinstance(data, dict):
        found.append((prefix.rstrip("."), f"{where}: {prefix.rstrip('.') or 'the config'} = {data!r}; expected a "
                                          "mapping"))
        data = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        attr = _YAML_TO_ATTR.get(key, key)
        if attr not in fields:
            found.append((f"{prefix}{key}", f"{where}: {unknown_key(cls, prefix, key)}"))
            continue
        tp = hints[attr]
        if dataclasses.is_dataclass(tp):
            kwargs[attr] = from_dict(tp, value or {}, where, f"{prefix}{key}.", found)
            continue
        try:
            kwargs[attr] = _coerce(value, tp, f"{where}: {prefix}{key}")
        except MtlserError as e:
            found.append((f"{prefix}{key}", str(e)))
            continue
        check = fields[attr].metadata.get("check")
        expected = check(kwargs[attr]) if check is not None and kwargs[attr] is not None else None
        if expected:
            found.append((f"{prefix}{key}", f"{where}: {prefix}{key} = {kwargs[attr]!r}; expected {expected}"))
    if errors is None:
        raise_all(found)
    return cls(**kwargs)


def raise_all(errors: list[tuple[str, str]]) -> None:
    """The bad fields found, (dotted key, message), as one line."""
    if errors:
        raise MtlserError(" | ".join(message for _, message in errors))


def check_value(key: str, value: Any, where: str) -> Any:
    """One field's value (dotted key, e.g. ``loss.lambda``; a string is read as YAML) typed and range-checked as
    from_dict does: for options that set a field under another name (the recipe's --lambdas, --seeds)."""
    section, name = key.split(".")
    if isinstance(value, str):
        value = parse_overrides([f"--{key}", value], where)[section][name]
    cfg = from_dict(Config, {section: {name: value}}, where)
    return getattr(getattr(cfg, section), _YAML_TO_ATTR.get(name, name))


def unknown_key(cls: type, prefix: str, key: str) -> str:
    """"unknown key 'train.epoch' (did you mean 'train.epochs'?)", or the keys there are."""
    names = sorted(_ATTR_TO_YAML.get(f.name, f.name) for f in dataclasses.fields(cls))
    close = difflib.get_close_matches(str(key), names, n=1)
    if close:
        return f"unknown key '{prefix}{key}' (did you mean '{prefix}{close[0]}'?)"
    return f"unknown key '{prefix}{key}'; expected one of {[prefix + n for n in names]}"


def to_dict(obj: Any) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[_ATTR_TO_YAML.get(f.name, f.name)] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


#: What overrides are called in errors when their caller does not say (python -m mtlser.train's own arguments).
COMMAND_LINE = "the command line"


def parse_overrides(args: list[str], source: str = COMMAND_LINE) -> dict:
    """``['--loss.lambda', '0', '--optim.lr=1e-4']`` -> nested dict; values parsed as YAML scalars."""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise MtlserError(f"{source}: unexpected argument '{arg}'; overrides look like --section.key value (a "
                              "value with spaces is quoted as one: --train-opts \"--backbone.init '/my models/w2v'\")")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise MtlserError(f"{source}: override '{arg}' has no value")
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
            if not isinstance(node, dict):
                raise MtlserError(f"{source}: override '{arg}' sets a key inside '{p}', which another override "
                                  "sets to a value")
        node[parts[-1]] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, overrides: list[str] | dict | None = None,
                source: str = COMMAND_LINE) -> Config:
    """Load a YAML config (None = all defaults) and apply overrides (``source``: where they come from)."""
    return resolve_config(path, [(source, overrides)] if overrides else [])


def resolve_config(path: str | Path | None, layers: list[tuple[str, list[str] | dict]]) -> Config:
    """The YAML config at ``path`` (None = all defaults) with each layer of overrides, ``(source, overrides)``,
    applied in turn (a later layer wins).

    Each field passes through :func:`from_dict` with the file or the layer it comes from, so a bad key or
    value is named with its source ("--train-opts: unknown key 'train.epoch' (did you mean 'train.epochs'?)"
    vs "conf/train_mini.yaml: ..."); the checks across fields then name the file and every layer.
    """
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
    # Every bad field of the file and of each layer, each with its source; a value that a later layer
    # replaces is not one (the config is what the layers make together).
    errors: list[tuple[str, str]] = []
    from_dict(Config, data, where, errors=errors)
    for source, overrides in layers:
        if not overrides:
            continue
        over = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides), source)
        replaced = {f"{section}.{name}" for section, fields in over.items() if isinstance(fields, dict)
                    for name in fields}
        errors = [(key, message) for key, message in errors if key not in replaced]
        from_dict(Config, over, source, errors=errors)
        data = _merge(data, over)
        where += f"{' +' if ' with ' in where else ' with'} {source}"
    raise_all(errors)
    cfg = from_dict(Config, data, where)
    check_config(cfg, where)
    return cfg


def check_config(cfg: Config, where: str = "config") -> None:
    """The checks across fields and of choices; each field's own range is checked where it is read (from_dict)."""
    if cfg.train.model_selection == "last" and cfg.train.patience > 0:
        raise MtlserError(f"{where}: train.patience = {cfg.train.patience} stops on a valid metric, but "
                          "train.model_selection = last has none; set train.patience 0 or model_selection valid")
    if cfg.train.model_selection == "valid" and cfg.train.select_metric == "ccc" and not cfg.loss.attributes:
        raise MtlserError(f"{where}: train.select_metric = ccc selects on the attributes' valid CCC, but "
                          "loss.attributes = false trains no attribute head; set loss.attributes: true (data with "
                          "utt2attr) or another select_metric (ua, wa, loss)")
    if cfg.loss.ce_weight == 0 and not cfg.loss.attributes:
        raise MtlserError(f"{where}: loss.ce_weight = 0 and loss.attributes = false leave no utterance-level task; "
                          "set loss.attributes: true (data with utt2attr) or ce_weight > 0")
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
    if cfg.backbone.size == "custom" and not cfg.backbone.custom:
        raise MtlserError(f"{where}: backbone.size = custom needs backbone.custom (wav2vec2_model arguments)")


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
