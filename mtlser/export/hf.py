"""Export to Hugging Face transformers: a ``*ForSequenceClassification`` that answers as mtlser does.

    python -m mtlser.export hf --model-dir exp/<tag>/fold01 --out hf/fold01
    transformers.pipeline("audio-classification", model="hf/fold01", top_k=None)(wav)

mtlser's emotion posterior is ``softmax(W · mean_t(Σ_l softmax(α)_l H_l[t]) + b)``. transformers'
``Wav2Vec2ForSequenceClassification`` (``HubertFor…``, ``WavLMFor…`` alike) with
``use_weighted_layer_sum`` computes ``softmax(C · mean_t(P · Σ_l softmax(w)_l H_l[t] + p) + c)``.
With ``w = α``, the emotion head as the projector (``P, p = W, b``: a linear map commutes with the
mean over frames) and an identity classifier (``C = I, c = 0``) the two are the same function.
The conditions under which they really are, and what the export does about each:

- **Hidden states.** transformers' ``hidden_states`` are the transformer's input and every layer's
  output, as mtlser's fusion takes them, except that for pre-LN ("stable layer norm") encoders
  transformers 5.x records the last one *before* the final layer norm (mtlser, and transformers
  4.x, after it). The exported config sets ``tie_last_hidden_states: true``, which makes
  transformers return the normed state there (a config switch of transformers 5.x since
  huggingface/transformers#48087). The export checks the result, so a transformers that ignores
  the switch makes it refuse rather than write a different model.
- **Waveform normalisation**: the feature extractor's ``do_normalize`` is the model's
  ``backbone.normalize_waveform`` (zero mean, unit variance over each input's own samples, as
  mtlser); ``sampling_rate`` is the model's.
- **Padding.** A CNN with a group-norm first layer (wav2vec2-base, HuBERT-base, the mini recipe's)
  normalises over time; transformers does so over the zero-padded batch, mtlser over each
  utterance alone (``backbone.padding_invariant_cnn``). One input per call — what the
  audio-classification pipeline does unless given a ``batch_size`` — is exact; padded batches are
  not, and the export says so (log, the model card, ``mtlser_export.json``) with the difference it
  measured. ``return_attention_mask`` is on, so that padding is at least masked in attention and
  pooling. Layer-norm CNNs (large models) are exact padded too, and checked.
- **The CTC head** (class tokens) has no place in a sequence classifier: emotions only.
- An **ensemble** averages several models; a transformers model is one: refused.

Before anything is written, the export loads what it is about to write with transformers
(``AutoFeatureExtractor`` + ``AutoModelForAudioClassification``) and compares its probabilities with
mtlser's on probe signals of several lengths, the shortest being the model's receptive field. Any
difference above :data:`TOLERANCE` is a refusal (exit 1), and the output dir is left as it was.
transformers is needed for this (``pip install 'mtlser[hf]'``); mtlser itself never imports it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from mtlser.expdir import ENV_JSON, MODEL_YAML
from mtlser.infer.output import HOP_S, WINDOW_S
from mtlser.infer.package import CARD_JSON, ModelFiles
from mtlser.infer.onnx_graph import probe_signals  # noqa: F401 (also the HF export check's inputs)
from mtlser.infer.predictor import SERPredictor, read_model
from mtlser.model.lengths import DEFAULT_CONV_LAYERS
from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_dir, check_output

logger = logging.getLogger(__name__)

#: Largest difference in any emotion's probability, mtlser vs the exported model, that counts as exact.
TOLERANCE = 1e-5
#: What an export dir holds (transformers' files and the export's own): a dir holding only these is replaced.
HF_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "mtlser_export.json", "README.md")
#: transformers' class names per backbone family, and the attribute of the base model in them.
_CLASSES = {"wav2vec2": ("Wav2Vec2Config", "Wav2Vec2ForSequenceClassification", "wav2vec2"),
            "hubert": ("HubertConfig", "HubertForSequenceClassification", "hubert"),
            "wavlm": ("WavLMConfig", "WavLMForSequenceClassification", "wavlm")}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise MtlserError("exporting to Hugging Face needs transformers, to build the model and check it "
                          "against mtlser: pip install 'mtlser[hf]' (or pip install transformers)") from None
    return transformers


def hf_config(model, meta: dict):
    """A transformers config for an mtlser model: its architecture, its labels, the weighted layer sum."""
    transformers = _transformers()
    info, cfg, emotions = meta["info"], meta["config"], meta["emotions"]
    arch, kw = info["arch"], info["arch_kwargs"]
    conv = kw.get("extractor_conv_layer_config") or DEFAULT_CONV_LAYERS
    config_cls = getattr(transformers, _CLASSES[arch][0])
    extra = {}
    if arch == "wavlm":
        extra = {"num_buckets": kw["encoder_num_buckets"], "max_bucket_distance": kw["encoder_max_distance"]}
    mask_prob = float(cfg.backbone.mask_time_prob)
    return config_cls(
        conv_dim=[int(c[0]) for c in conv], conv_kernel=[int(c[1]) for c in conv],
        conv_stride=[int(c[2]) for c in conv],
        conv_bias=bool(kw.get("extractor_conv_bias", False)),
        feat_extract_norm="group" if kw.get("extractor_mode", "group_norm") == "group_norm" else "layer",
        feat_extract_activation="gelu", hidden_act="gelu", layer_norm_eps=1e-5,
        hidden_size=int(kw["encoder_embed_dim"]), num_hidden_layers=int(kw["encoder_num_layers"]),
        num_attention_heads=int(kw["encoder_num_heads"]), intermediate_size=int(kw["encoder_ff_interm_features"]),
        num_conv_pos_embeddings=int(kw["encoder_pos_conv_kernel"]),
        num_conv_pos_embedding_groups=int(kw["encoder_pos_conv_groups"]),
        do_stable_layer_norm=bool(kw.get("encoder_layer_norm_first", False)),
        # The fine-tuning recipe's regularisation, for whoever trains the export further (inactive in eval).
        hidden_dropout=float(kw.get("encoder_dropout", 0.0)),
        attention_dropout=float(kw.get("encoder_attention_dropout", 0.0)),
        activation_dropout=float(kw.get("encoder_ff_interm_dropout", 0.0)),
        feat_proj_dropout=float(kw.get("encoder_projection_dropout", 0.0)),
        layerdrop=float(kw.get("encoder_layer_drop", 0.0)),
        final_dropout=float(cfg.model.head_dropout),
        mask_time_prob=mask_prob, mask_time_length=int(cfg.backbone.mask_time_length), mask_feature_prob=0.0,
        apply_spec_augment=mask_prob > 0,
        use_weighted_layer_sum=model.fusion is not None, classifier_proj_size=len(emotions),
        num_labels=len(emotions), id2label=dict(enumerate(emotions)), label2id={e: i for i, e in enumerate(emotions)},
        # The last hidden state after the final layer norm of pre-LN encoders, as mtlser fuses it (module doc).
        tie_last_hidden_states=True,
        **extra,
    )


def _torchaudio_name(key: str) -> str | None:
    """A base-model parameter's torchaudio name (the inverse of mtlser.model.checkpoints.hf_state_to_torchaudio)."""
    if key.startswith("feature_extractor."):
        return key
    if key.startswith("feature_projection."):
        return "encoder." + key
    if key.startswith("encoder."):
        return "encoder.transformer." + key[len("encoder."):]
    return None


def hf_state(model, hf_model, family: str) -> dict[str, torch.Tensor]:
    """The transformers model's state dict filled from the mtlser model; refuses anything that does not map."""
    base = _CLASSES[family][2] + "."
    ours = {k: v.detach() for k, v in model.backbone.model.state_dict().items()}
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    dim = model.backbone.hidden_size
    for key, target in hf_model.state_dict().items():
        if not key.startswith(base):
            continue
        k = key[len(base):]
        if k == "masked_spec_embed":
            if model.backbone.mask_embedding is None:
                raise MtlserError("the transformers config asks for a mask embedding that the model lacks")
            out[key] = model.backbone.mask_embedding.detach()
            continue
        name = _torchaudio_name(k)
        value = None
        if family == "wavlm" and name is not None and ".attention." in name and name.rsplit(".", 2)[-2] in (
                "q_proj", "k_proj", "v_proj", "out_proj"):
            layer, proj, kind = name.rsplit(".", 2)  # ...layers.N.attention, q_proj, weight|bias
            if proj == "out_proj":
                src = f"{layer}.attention.out_proj.{kind}"
                value = ours.get(src)
            else:
                src = f"{layer}.attention.in_proj_{kind}"  # torchaudio packs q, k, v in one projection
                if src in ours:
                    i = ("q_proj", "k_proj", "v_proj").index(proj)
                    value = ours[src][i * dim:(i + 1) * dim]
            name = src
        elif name is not None:
            value = ours.get(name)
        if value is None or tuple(value.shape) != tuple(target.shape):
            raise MtlserError(f"transformers' parameter {key} {tuple(target.shape)} has no counterpart in the mtlser "
                              f"model ({name}); this architecture cannot be exported exactly")
        out[key] = value.clone()
        used.add(name)
    left = sorted(set(ours) - used)
    if left:
        raise MtlserError(f"mtlser parameters with no place in transformers' model: {left[:5]}; this architecture "
                          "cannot be exported exactly")
    head = model.emotion_head
    out["projector.weight"] = head.weight.detach().clone()
    out["projector.bias"] = head.bias.detach().clone()
    n = head.out_features
    out["classifier.weight"] = torch.eye(n)
    out["classifier.bias"] = torch.zeros(n)
    if model.fusion is not None:
        out["layer_weights"] = model.fusion.logits.detach().clone()  # softmax is taken of both
    return out


def compare(predictor: SERPredictor, hf_dir: Path) -> dict:
    """Max |Δp| between mtlser and the transformers model in ``hf_dir``: one input at a time, and padded batches."""
    transformers = _transformers()
    fe = transformers.AutoFeatureExtractor.from_pretrained(str(hf_dir))
    hf = transformers.AutoModelForAudioClassification.from_pretrained(str(hf_dir)).eval()
    labels = [hf.config.id2label[i] for i in range(hf.config.num_labels)]
    if labels != predictor.emotions:
        raise MtlserError(f"exported labels {labels} differ from the model's emotions {predictor.emotions}")
    sr = predictor.sample_rate
    probes = probe_signals(sr, predictor.min_samples)
    ours = np.concatenate([predictor.predict_arrays([w])[0] for w in probes])  # each alone: the reference
    single = 0.0
    with torch.no_grad():
        for wav, p in zip(probes, ours):
            inputs = fe(wav, sampling_rate=sr, return_tensors="pt")
            theirs = hf(**inputs).logits.softmax(-1)[0].numpy()
            single = max(single, float(np.abs(theirs - p).max()))
        inputs = fe(probes, sampling_rate=sr, return_tensors="pt", padding=True)
        theirs = hf(**inputs).logits.softmax(-1).numpy()
    padded = float(np.abs(theirs - ours).max())
    return {"max_abs_diff_single": single, "max_abs_diff_padded_batch": padded,
            "probe_lengths": [len(p) for p in probes], "transformers_version": transformers.__version__}


def export_hf(model_path: str | Path, out: str | Path, tolerance: float = TOLERANCE, overwrite: bool = False) -> dict:
    """Write ``out`` (a transformers model dir) for a model dir or pack, or refuse (module doc). An ``out`` that
    is, contains or lies in the model, or a non-empty dir mtlser did not write (without ``overwrite``), is
    refused before any work."""
    check_output(out, [model_path], "--out", is_dir=True, overwrite=overwrite, expect=HF_FILES)
    transformers = _transformers()
    files = ModelFiles.open(model_path)
    if files.is_ensemble:
        raise MtlserError(f"{model_path}: an ensemble averages several models' probabilities and a transformers "
                          "model is one network; export one of its members, or the final model")
    info = files.read_yaml(MODEL_YAML)
    if info.get("attributes"):
        names = ", ".join(a["name"] for a in info["attributes"])
        if not info.get("emotions"):
            raise MtlserError(f"{model_path}: has no classes, only an attribute head ({names}); transformers' audio "
                              "classification is categorical, so there is nothing it could export; use "
                              "mtlser-infer or the pack instead")
        raise MtlserError(f"{model_path}: has an attribute head ({names}); transformers' audio classification is "
                          "categorical and has no place for regression outputs, so an export would drop them; use "
                          "mtlser-infer or the pack instead")
    model, meta = read_model(files)
    predictor = SERPredictor(model, meta)
    family = meta["info"]["arch"]
    config = hf_config(model, meta)
    hf = getattr(transformers, _CLASSES[family][1])(config).eval()
    hf.load_state_dict(hf_state(model, hf, family), strict=True)
    fe = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=predictor.sample_rate, padding_value=0.0,
        do_normalize=bool(meta["config"].backbone.normalize_waveform), return_attention_mask=True)
    group_norm = config.feat_extract_norm == "group"
    out = Path(out)
    with atomic_dir(out, overwrite, "--out") as tmp:
        hf.save_pretrained(str(tmp))
        fe.save_pretrained(str(tmp))
        check = compare(predictor, tmp)
        if check["max_abs_diff_single"] > tolerance:
            raise MtlserError(
                f"{model_path}: the transformers {check['transformers_version']} model gives probabilities up to "
                f"{check['max_abs_diff_single']:.2e} away from mtlser's (tolerance {tolerance:g}), so it is not "
                f"written{_why(meta)}. Nothing was written to {out}.")
        if not group_norm and check["max_abs_diff_padded_batch"] > tolerance:
            raise MtlserError(f"{model_path}: padded batches differ by {check['max_abs_diff_padded_batch']:.2e} "
                              f"(tolerance {tolerance:g}) although the CNN is per-frame; not written to {out}.")
        check.update(exact_for="one input per call" + ("" if group_norm else " and padded batches"),
                     tolerance=tolerance, source=str(model_path), class_tokens="not exported (emotions only)")
        if group_norm:
            check["padded_batches"] = (
                "not exact: the first CNN layer's group norm runs over the padded batch in transformers and over "
                f"each input in mtlser (max |dp| {check['max_abs_diff_padded_batch']:.2e} on the probe batch); "
                "call the pipeline without batch_size, or one file at a time")
        (tmp / "mtlser_export.json").write_text(json.dumps(check, indent=1) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_card(files, meta, check), encoding="utf-8")
    logger.info("exported %s to %s: max |dp| %.2e one input at a time (tolerance %g)", model_path, out,
                check["max_abs_diff_single"], tolerance)
    if group_norm:
        logger.warning("%s: padded batches are NOT exact (max |dp| %.2e): this model's CNN normalises its first "
                       "layer over time, and transformers does that over the padded batch. Use one input per call "
                       "(the pipeline's default batch_size).", out, check["max_abs_diff_padded_batch"])
    return check


def _why(meta: dict) -> str:
    if meta["info"]["arch_kwargs"].get("encoder_layer_norm_first"):
        return (" (a pre-LN encoder: this transformers probably ignores the config's tie_last_hidden_states and "
                "fuses the last hidden state before the final layer norm; transformers 4.x or a 5.x with that switch "
                "reproduces it)")
    return ""


def _card(files: ModelFiles, meta: dict, check: dict) -> str:
    """The exported dir's README.md: Hugging Face metadata, what it is, and how exact."""
    facts = {}
    if files.has(CARD_JSON):
        facts = json.loads(files.read_text(CARD_JSON))
    elif files.base is not None and (files.base / ENV_JSON).is_file():
        from mtlser.export.card import model_facts, model_kind

        facts = model_facts(files.base, model_kind(files.base))
    emotions = meta["emotions"]
    lines = ["---", "library_name: transformers", "pipeline_tag: audio-classification",
             "tags: [speech-emotion-recognition, mtlser]", "---", "",
             f"# {facts.get('name') or Path(files.location).name} (exported from mtlser)", "",
             "Speech emotion recognition, Li et al. multi-task recipe (mtlser); emotions in class order: "
             f"{', '.join(emotions)}.", "",
             "    from transformers import pipeline",
             "    classify = pipeline('audio-classification', model='THIS_DIR', top_k=None)",
             f"    classify(wav)   # mono float array at {meta['sample_rate']} Hz (numpy), one file per call", "",
             "`classify('clip.wav')` (a file name) works only where ffmpeg is installed: the pipeline decodes files "
             "with it. Without ffmpeg, read the file yourself (soundfile, resampled to "
             f"{meta['sample_rate']} Hz) and pass the array, as above.", "",
             f"mtlser-infer labels recordings longer than {WINDOW_S:g} s in windows ({WINDOW_S:g} s, hop "
             f"{HOP_S:g} s) and averages them; the pipeline takes a recording whole, so on long recordings the "
             "two differ (pass `mtlser-infer --window 0` to compare whole recordings).", "",
             "## Exactness", "",
             f"- One input per call: the probabilities equal mtlser's within {check['max_abs_diff_single']:.1e} "
             f"(checked at export with transformers {check['transformers_version']}).",
             f"- Padded batches (pipeline with batch_size > 1): "
             f"{check.get('padded_batches', 'exact as well (per-frame CNN normalisation)')}.",
             "- The CTC class-token head of the multi-task model is not part of this export (emotions only)."]
    if meta["info"]["arch_kwargs"].get("encoder_layer_norm_first"):
        lines += ["- Pre-LN encoder: needs a transformers that honours `tie_last_hidden_states` in config.json "
                  "(checked: the version above) or transformers 4.x; other 5.x releases fuse the last hidden state "
                  "before the final layer norm and answer differently."]
    lines.append("")
    test, cv = facts.get("test"), facts.get("cross_validation")
    if test or cv:
        lines += ["## Figures (measured by mtlser, see its model card)", ""]
        if test:
            lines.append(f"- held-out speaker(s) {', '.join(test.get('speakers') or [])}: WA {100 * test['wa']:.1f} %, "
                         f"UA {100 * test['ua']:.1f} % ({test.get('n')} utterances)")
        if cv:
            lines.append(f"- cross-validation over {cv.get('num_folds')} folds: WA {100 * cv['wa']:.1f} ± "
                         f"{100 * cv['wa_std']:.1f} %, UA {100 * cv['ua']:.1f} ± {100 * cv['ua_std']:.1f} %"
                         + (f"; seed {cv['seed']}, 95 % CI of the UA [{100 * cv['ua_ci'][0]:.1f}, "
                            f"{100 * cv['ua_ci'][1]:.1f}] % ({cv.get('ci_rule')})" if cv.get("ua_ci") else ""))
            g = cv.get("seed_group")
            if g and g.get("ua_seed_std") is not None:
                lines.append(f"- over seeds {' '.join(str(s) for s in g['seeds'])}: UA {100 * g['ua']:.1f} %, std "
                             f"over seeds {100 * g['ua_seed_std']:.1f} points")
        lines.append(f"- corpus: {facts.get('corpus')}, protocol: {facts.get('protocol')}, mtlser commit "
                     f"`{facts.get('git_commit')}`")
        lines.append("")
    return "\n".join(lines)
