"""The model card of a packed model: facts gathered from what stages 2-5 wrote, and their text.

Every figure on a card is read from a file of the experiment (nothing is measured here):

- the fold's own test figures: ``foldNN/decode_test/result.json`` (its held-out speakers);
- the experiment's cross-validation figures: ``exp/<tag>/results.json`` (mean ± std over folds, the seed,
  the 95 % CI), and its seed group's ``exp/<name>_seeds/results.json`` when it is one seed of a group;
- protocol and corpus: the folds dir the decode points at (``decode_test/data_dir``, ``protocol``);
- training time and hardware: ``history.tsv`` (seconds per epoch) and ``env.json`` (versions, git
  commit, GPU, platform of the training run); the selected epoch and its rule: ``best.json``; a model whose
  training did not finish (packed with --allow-unfinished): ``unfinished``, "unfinished, N of M epochs"
  (mtlser.expdir.read_training), said at the top of its README.md;
- the install lines: torch's CPU-only index, and the wheel stage 6 put beside the packs
  (:mod:`mtlser.export.wheel`), with the torch/torchaudio pairs known to work (KNOWN_TORCH_PAIRS).

A final model (trained on every speaker) and an ensemble of the fold models have no held-out
figure: every speaker was seen in training. Their cards say so and give the fold models'
cross-validation figure as what it is, an estimate for one fold model on unseen speakers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from mtlser import expdir
from mtlser.data.fold_names import FINAL, is_fold_name

logger = logging.getLogger(__name__)


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except ValueError:
        logger.warning("%s: not valid JSON; left off the model card", path)
        return None


def _training_time(model_dir: Path) -> tuple[float | None, int | None]:
    """(seconds of training, epochs run) from history.tsv: its train_time_s column, and its rows as counted by
    :func:`mtlser.expdir.epochs_run`; (None, None) without one."""
    path = model_dir / expdir.HISTORY_TSV
    if not path.is_file():
        return None, None
    epochs = expdir.epochs_run(model_dir)
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) < 2 or "train_time_s" not in rows[0]:
        return None, epochs
    col = rows[0].index("train_time_s")
    try:
        return sum(float(r[col]) for r in rows[1:]), epochs
    except (ValueError, IndexError):
        return None, epochs


def _protocol(model_dir: Path) -> tuple[dict, str | None]:
    """The protocol table of the folds dir this fold was decoded from, and the recipe (corpus) dir's name."""
    data_dir = expdir.decoded_data_dir(model_dir / expdir.DECODE_TEST)
    if data_dir is not None:
        folds_dir = data_dir.parent.parent  # data/<protocol>/foldNN/test
    else:  # the final model: no test set; its experiment's folds know the protocol
        folds_dir = expdir.experiment_folds_dir(model_dir.parent)
        if folds_dir is None:
            return {}, None
    recipe = folds_dir.parent.parent.name if folds_dir.parent.name == "data" else None
    return expdir.read_protocol(folds_dir), recipe


def _version() -> str:
    import mtlser

    return getattr(mtlser, "__version__", "unknown")


def model_kind(model_dir: Path) -> str:
    """What a model dir is to its card: a fold model, the final model (every speaker), or another model."""
    if is_fold_name(model_dir.name):
        return "fold"
    return "final" if model_dir.name == FINAL else "model"


def model_facts(model_dir: Path, kind: str, corpus: str | None = None) -> dict:
    """The card's facts for a training dir: ``kind`` is fold, final or ensemble-member."""
    info = yaml.safe_load((model_dir / expdir.MODEL_YAML).read_text(encoding="utf-8"))
    cfg = yaml.safe_load((model_dir / expdir.CONFIG_YAML).read_text(encoding="utf-8")) or {}
    env = _json(model_dir / expdir.ENV_JSON) or {}
    best = _json(model_dir / expdir.BEST_JSON) or {}
    result = _json(model_dir / expdir.DECODE_TEST / expdir.RESULT_JSON)
    protocol, recipe = _protocol(model_dir)
    seconds, epochs = _training_time(model_dir)
    facts = {
        "name": model_dir.name,
        "kind": kind,
        "corpus": corpus or recipe,
        "protocol": protocol.get("protocol"),
        "valid_split": (expdir.valid_split_text(protocol) if kind != "final" else
                        "none (every utterance trained on, for the folds' median epoch: final_epochs.json)"),
        "epoch_selection": {k: best.get(k) for k in ("selection", "metric") if best.get(k)} or None,
        "emotions": list(info["emotions"]),
        "backbone": {"arch": info["arch"], "layers": info.get("num_hidden_states", 1) - 1,
                     "width": info["arch_kwargs"].get("encoder_embed_dim"),
                     "init": (cfg.get("backbone") or {}).get("init")},
        "fusion": (cfg.get("model") or {}).get("fusion"),
        "lambda": (cfg.get("loss") or {}).get("lambda"),
        "ctc_targets": (cfg.get("data") or {}).get("token_type") if (cfg.get("loss") or {}).get("lambda") else None,
        "selected_epoch": best.get("epoch"),
        "epochs_run": epochs,
        "training_time_s": round(seconds, 1) if seconds is not None else None,
        "training_hardware": {k: env.get(k) for k in ("gpu", "platform", "cpu") if env.get(k)},
        "training_date": env.get("date"),
        "versions": {k: env.get(k) for k in ("torch", "torchaudio", "python") if env.get(k)},
        "git_commit": env.get("git_commit"),
        "git_dirty": env.get("git_dirty"),
        "mtlser_version": _version(),
    }
    training = expdir.read_training(model_dir)
    if training is not None and not training.finished:  # only then: a finished model's card keeps its facts
        facts["unfinished"] = training.describe()
    if result is not None and kind == "fold":
        facts["test"] = {k: result.get(k) for k in ("speakers", "n", "wa", "ua", "ctc_ter")}
    if info.get("attributes"):  # only then: the paper's cards keep their facts
        from mtlser.score.report import utterance_terms

        facts["attributes"] = info["attributes"]
        facts["objective"] = utterance_terms(cfg.get("loss") or {}, cfg.get("data") or {})
        if result is not None and kind == "fold":
            facts["test"]["macro_f1"] = result.get("macro_f1")
            facts["test"]["attributes"] = result.get("attributes")
            if not info["emotions"]:  # a class-free model: no WA, UA or F1 to state
                for k in ("wa", "ua", "macro_f1"):
                    facts["test"].pop(k)
    return facts


def experiment_facts(exp_dir: Path) -> dict | None:
    """The cross-validation summary of an experiment (results.json), or None before stage 5."""
    from mtlser.recipe.names import seed_group_of

    res = _json(exp_dir / expdir.RESULTS_JSON)
    if res is None:
        return None
    keys = ("num_folds", "n", "wa", "wa_std", "ua", "ua_std", "pooled_wa", "pooled_ua", "seed", "wa_ci", "ua_ci",
            "ci_rule", "chance")
    facts = {k: res.get(k) for k in keys}
    if res.get("attributes"):  # only then: the paper's cards keep their facts
        facts["attributes"] = res["attributes"]
        if "wa" not in res:  # a class-free experiment: attributes only
            return {k: v for k, v in facts.items() if not k.startswith(("wa", "ua", "pooled_")) and k != "chance"}
    group = seed_group_of(exp_dir)
    g = _json(group / expdir.RESULTS_JSON) if group else None
    if g:
        # What a rerun with another seed would move: the group this seed's experiment belongs to.
        facts["seed_group"] = {"dir": str(group), **{k: g.get(k) for k in (
            "seeds", "num_folds", "wa", "wa_std", "wa_seed_std", "wa_ci", "ua", "ua_std", "ua_seed_std", "ua_ci",
            "ci_rule")}}
    return facts


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _pct(x) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) else "—"


def _ci(ci) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}] %" if ci else "none"


def uncertainty_lines(cv: dict) -> list[str]:
    """How much of the cross-validation figure is the seed and the speakers, and chance beside it."""
    chance = cv.get("chance") or {}
    lines = [f"Trained with seed {cv.get('seed')}; 95 % CI of the UA: {_ci(cv.get('ua_ci'))} "
             f"({cv.get('ci_rule') or 'not recorded'}); chance on these folds: WA {_pct(chance.get('wa'))} %, "
             f"UA {_pct(chance.get('ua'))} %."]
    g = cv.get("seed_group")
    if g:
        lines += ["", f"Over seeds {' '.join(str(s) for s in g.get('seeds') or [])} × {g.get('num_folds')} folds "
                  f"(`{g['dir']}`): WA {_pct(g.get('wa'))} %, UA {_pct(g.get('ua'))} %; std over seeds (what a rerun "
                  f"moves) WA {_pct(g.get('wa_seed_std'))}, UA {_pct(g.get('ua_seed_std'))} points; 95 % CI of the "
                  f"UA {_ci(g.get('ua_ci'))} ({g.get('ci_rule')})."]
    else:
        lines += ["", "One seed: how far a rerun with another seed moves these figures was not measured "
                  "(ser.sh --seeds \"0 1 2\" measures it)."]
    return lines


def epoch_selection_text(facts: dict) -> str:
    """How the reported epoch was chosen (best.json's rule), and which epoch of how many (one model)."""
    sel = facts.get("epoch_selection") or {}
    if sel.get("selection") == "last":
        rule = ("the last epoch (train.model_selection last: nothing selected"
                + ("" if facts.get("kind") == "final" else "; a valid split is trained on") + ")")
    elif sel.get("selection") == "valid":
        rule = f"the best epoch by valid {str(sel.get('metric')).upper()} (the valid split: training speakers only)"
    else:
        return "not recorded"
    if facts.get("members"):
        return rule + "; each member's epoch under Training"
    if facts.get("selected_epoch") is None:
        return rule
    return rule + f": epoch {facts['selected_epoch']} of {facts.get('epochs_run') or '?'}"


def card_text(facts: dict) -> str:
    """README.md of a pack (the facts in words; card.json holds them as data)."""
    name, kind = facts["name"], facts["kind"]
    cv = facts.get("cross_validation")
    lines = [f"# mtlser model `{name}`", ""]
    what = {"fold": f"the model of cross-validation fold `{name}`, trained without its test speaker(s)",
            "final": "the final model, trained once on every speaker of the corpus",
            "model": "a model trained by mtlser (not from a cross-validation fold dir, so no held-out figure is known)",
            "ensemble": f"an ensemble of {len(facts.get('members', []))} fold models; its emotion probabilities are "
                        "the mean of theirs"}[kind]
    objective = facts.get("objective")  # a model with attributes names its terms; the paper's card reads as it did
    if objective and kind == "ensemble":
        what = f"an ensemble of {len(facts.get('members', []))} fold models; its output is the {facts['combine']}"
    task = f"mtlser, multi-task: {objective} + λ·CTC" if objective else "Li et al., multi-task: CE + λ·CTC"
    lines += [f"Speech emotion recognition ({task}) — {what}.", ""]
    if facts.get("unfinished"):
        lines += [f"**Training did not finish** ({facts['unfinished']}): packed with --allow-unfinished; its "
                  "figures are those of a model stopped early, not of the configured training.", ""]
    lines += ["| | |", "|---|---|",
              f"| corpus | {facts.get('corpus') or 'not recorded'} |",
              f"| fold protocol (stage 2) | {facts.get('protocol') or 'not recorded'} |",
              f"| valid split (stage 2) | {facts.get('valid_split') or 'not recorded'} |",
              f"| epoch selection (stage 3) | {epoch_selection_text(facts)} |",
              f"| emotions (class order) | {' '.join(facts['emotions']) or 'none: attributes only'} |"]
    if facts.get("attributes"):
        lines.append("| attributes (output order, scale) | "
                     + ", ".join(f"{a['name']} [{a['min']:g}, {a['max']:g}]" for a in facts["attributes"]) + " |")
    bb = facts.get("backbone") or {}
    if bb:
        lines.append(f"| backbone | {bb.get('arch')}, {bb.get('layers')} layers × {bb.get('width')}, initialised "
                     f"from {bb.get('init') or 'random weights'} |")
    if facts.get("lambda") is not None:
        lines.append(f"| objective | {objective or 'CE'} + {facts['lambda']:g} · CTC" +
                     (f" over `{facts['ctc_targets']}`" if facts.get("ctc_targets") else "") +
                     f", {facts.get('fusion')} fusion |")
    lines.append("")
    lines += ["## How well it does", ""]
    test = facts.get("test")
    if test:
        held_out = f"On this fold's held-out speaker(s) {', '.join(test.get('speakers') or [])}"
        if "wa" in test:
            lines.append(f"{held_out}: **WA {_pct(test.get('wa'))} %, UA {_pct(test.get('ua'))} %** "
                         f"({test.get('n')} utterances).")
        else:  # a class-free model: its attributes only
            lines.append(f"{held_out} ({test.get('n')} utterances):")
        attr = test.get("attributes")
        if attr:
            lines.append((f"Macro-F1 {_pct(test.get('macro_f1'))} %; " if "macro_f1" in test else "")
                         + "attributes (CCC / Pearson r / MAE): "
                         + "; ".join(f"{a} {attr['ccc'][a]:.3f} / {attr['pearson'][a]:.3f} / {attr['mae'][a]:.2f}"
                                     for a in attr["attributes"])
                         + f"; mean CCC {attr['mean_ccc']:.3f}.")
    else:
        lines.append({"ensemble": "No held-out figure: every speaker of the corpus was seen in training by some "
                               "member.",
                      "final": "No held-out figure: every speaker of the corpus was seen in training.",
                      }.get(kind, "No held-out figure was found for this model (no scored decode of its test set)."))
    if cv:
        lines.append("")
        cv_head = (f"Cross-validation of the experiment's fold models ({cv.get('num_folds')} folds, "
                   f"{cv.get('n')} test utterances): ")
        caveat = ("." if kind == "fold" else "; this estimates one fold model on unseen speakers, not this "
                  "model, whose figure on new speakers has not been measured.")
        if "wa" in cv:
            lines.append(cv_head + f"WA {_pct(cv.get('wa'))} ± {_pct(cv.get('wa_std'))} %, "
                         f"UA {_pct(cv.get('ua'))} ± {_pct(cv.get('ua_std'))} % (mean ± std over folds)" + caveat)
        cv_attr = cv.get("attributes")
        if cv_attr:
            lines.append(("Attributes" if "wa" in cv else cv_head + "attributes")
                         + " (CCC, mean ± std over folds): "
                         + "; ".join(f"{a} {cv_attr['ccc'][a]['mean']:.3f} ± {cv_attr['ccc'][a]['std']:.3f}"
                                     for a in cv_attr["attributes"])
                         + f"; mean CCC {cv_attr['mean_ccc']['mean']:.3f} ± {cv_attr['mean_ccc']['std']:.3f}"
                         + ("." if "wa" in cv else caveat))
        if "wa" in cv:
            lines += ["", *uncertainty_lines(cv)]
        else:
            ci = cv_attr["mean_ccc"].get("ci") if cv_attr else None
            lines += ["", f"Trained with seed {cv.get('seed')}; 95 % CI of the mean CCC: "
                      + (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "none")
                      + f" ({cv.get('ci_rule') or 'not recorded'})."]
    lines += ["", "## Training", ""]
    members = facts.get("members")
    rows = [facts] if not members else members
    for m in rows:
        hw = m.get("training_hardware") or {}
        t = m.get("training_time_s")
        device = hw.get("gpu") if hw.get("gpu") and not str(hw.get("gpu")).startswith("none") else "CPU"
        lines.append(f"- `{m['name']}`: {m.get('epochs_run') or '?'} epoch(s)"
                     + (f" (selected epoch {m['selected_epoch']})" if m.get("selected_epoch") else "")
                     + (f", {_duration(t)}" if t is not None else "")
                     + f" on {device}" + (f" ({hw['cpu']})" if hw.get("cpu") else "")
                     + (f", {hw.get('platform')}" if hw.get("platform") else "")
                     + (f"; {m.get('training_date')}" if m.get("training_date") else "")
                     + (f"; **{m['unfinished']}**" if m.get("unfinished") else ""))
    commit = facts.get("git_commit") or (members[0].get("git_commit") if members else None)
    lines += ["", f"Trained at mtlser commit `{commit or 'unknown'}`"
              + (" (with uncommitted changes)" if facts.get("git_dirty") else "")
              + f"; packed by mtlser {facts.get('mtlser_version')}.", ""]
    lines += ["## Use", "", *install_lines(facts), "",
              f"    mtlser-infer --model {name}.zip recordings/ --output labels.jsonl", "",
              "    from mtlser.infer import SERPredictor",
              f"    SERPredictor.from_pretrained('{name}.zip').predict_file('a.wav')", ""]
    return "\n".join(lines)


#: torch / torchaudio pairs mtlser's inference was checked with (README "Using a trained model" says where and
#: when); the cards list them. Other pairs are untested.
KNOWN_TORCH_PAIRS = (("2.11.0", "2.11.0"), ("2.14.1", "2.11.1"))
#: torch's CPU-only wheels: a few hundred MB instead of PyPI's default build with the CUDA libraries (GBs).
CPU_TORCH_INSTALL = "pip install torch torchaudio --index-url https://download.pytorch.org/whl/cpu"


def install_lines(facts: dict) -> list[str]:
    """The card's install commands: CPU-only torch first, then the mtlser wheel stage 6 put beside the pack."""
    members = facts.get("members") or [facts]
    trained = members[0].get("versions") or {}
    wheel = facts.get("wheel")
    lines = [f"    {CPU_TORCH_INSTALL}   # no GPU: torch's CPU wheels, not the CUDA libraries",
             f"    pip install {wheel['file']}" if wheel else
             "    pip install 'mtlser @ <path or URL of the mtlser source>'", ""]
    lines.append((f"`{wheel['file']}` lies beside this pack (stage 6 built it from the {wheel['source']}); "
                  if wheel else "Stage 6 puts the wheel of the mtlser that trained a model beside its packs "
                  "(packed/mtlser-<version>-py3-none-any.whl); ")
                 + "installing torch first keeps pip from fetching the CUDA build. torch / torchaudio pairs known to "
                 "work: " + ", ".join(f"{t} / {a}" for t, a in KNOWN_TORCH_PAIRS)
                 + (f"; this model was trained with {trained['torch']} / {trained.get('torchaudio', '?')}"
                    if trained.get("torch") else "") + ". Other pairs are untested.")
    return lines
