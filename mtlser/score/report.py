"""RESULTS.md (ESPnet style, with the environment) and the PNGs of an experiment."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlser import expdir
from mtlser.data.fold_names import fold_dirs
from mtlser.expdir import environment
from mtlser.score import runs
from mtlser.utils.fileio import atomic_open, atomic_write_text


def utterance_terms(loss: dict, data: dict) -> str:
    """The objective's utterance-level terms from a config's loss and data sections ("CE", "1 · L_attr (ccc)",
    ...). The paper's objective reads as it always did; an attribute head and a class-free model name their
    terms."""
    ce_w = loss.get("ce_weight", 1.0)
    ce = "" if data.get("emotions") == [] or ce_w == 0 else "CE" if ce_w == 1 else f"{ce_w:g} · CE"
    if ce and loss.get("class_weighting") == "balanced":
        ce += " (class-balanced)"
    attr = f"{loss.get('attr_weight', 1.0):g} · L_attr ({loss.get('attr_loss')})" if loss.get("attributes") else ""
    return " + ".join(t for t in (ce, attr) if t)


def experiment_setup(exp_dir: Path) -> list[str]:
    """Markdown lines: protocol, objective, targets, backbone of an experiment, from what stages 2-3 wrote."""
    lines = []
    configs = expdir.fold_files(exp_dir, expdir.CONFIG_YAML)
    folds_dir = expdir.experiment_folds_dir(exp_dir)
    if folds_dir is not None:
        p = expdir.read_protocol(folds_dir)
        if p:
            valid = expdir.valid_split_text(p) or "?"
            lines.append(f"- protocol: `{p.get('protocol')}` ({folds_dir}); valid set (stage 2) = {valid}")
            if p.get("test_corpus"):
                lines.append(f"- cross-corpus: trained and selected on `{p.get('train_corpora')}`, tested on the "
                             f"whole of `{p['test_corpus']}`")
    if configs:
        cfg = expdir.read_config(configs[0].parent)
        loss, data, bb, tr = (cfg.get(k) or {} for k in ("loss", "data", "backbone", "train"))
        lam = loss.get("lambda")
        head = utterance_terms(loss, data)
        attr = loss.get("attributes")
        if lam == 0:
            lines.append(f"- objective: L = {head} ({'single task, ' if not attr else ''}λ = 0: no CTC head)")
        else:
            lines.append(f"- objective: L = {head} + {lam:g} · CTC (CTC {loss.get('ctc_reduction')}), CTC targets "
                         f"`{data.get('token_type')}` (text_{data.get('token_type')})")
        init = bb.get("init") or "random init (no pretrained weights)"
        lines.append(f"- backbone: {bb.get('arch')} {bb.get('size')} from `{init}`; feature encoder "
                     f"{'frozen' if bb.get('freeze_feature_encoder') else 'fine-tuned'}; fusion "
                     f"{(cfg.get('model') or {}).get('fusion')}")
        if tr.get("model_selection") == "last":
            chosen = "the last epoch's model reported (no model selection: the paper's protocol; a valid set, " \
                     "if stage 2 made one, was trained on)"
        else:
            chosen = f"the best epoch by valid {tr.get('select_metric')} reported (model selection: ours)"
        lines.append(f"- training: {_epochs_text(exp_dir, tr.get('epochs'))}, precision {tr.get('precision')}; "
                     f"{chosen}")
    return lines


def _epochs_text(exp_dir: Path, configured) -> str:
    """The epochs the folds really trained (mtlser.expdir.read_training): "N epochs" when each ran the
    configured N, else each fold's count, early stops and unfinished folds named."""
    trainings = {d.name: expdir.read_training(d) for d in fold_dirs(exp_dir)}
    trainings = {name: t for name, t in trainings.items() if t is not None}
    if all(t.epochs_run == t.epochs == configured for t in trainings.values()):
        return f"{configured} epochs"
    return (f"{configured} epochs configured (train.epochs; trained: "
            + ", ".join(f"{name} **{t.describe()}**" if not t.finished else f"{name} {t.describe()}"
                        for name, t in trainings.items()) + ")")


def training_environment(exp_dir: Path) -> dict | None:
    """What the first fold's trainer recorded (env.json): the GPU and versions results were trained with."""
    envs = expdir.fold_files(exp_dir, expdir.ENV_JSON)
    return expdir.read_environment(envs[0].parent) if envs else None


def fusion_weights(exp_dir: Path) -> list[list[float]]:
    """Softmax fusion weights of each fold's selected model (empty if the model has no fusion)."""
    from safetensors import safe_open

    out = []
    for fold in fold_dirs(exp_dir):
        path = fold / expdir.BEST_WEIGHTS
        if not path.is_file():
            continue
        try:
            with safe_open(str(path), "pt") as f:
                if "fusion.logits" not in f.keys():
                    continue
                logits = f.get_tensor("fusion.logits").double()
        except Exception as e:  # a truncated or foreign file: one clear line
            from mtlser.model.checkpoints import safetensors_error

            raise safetensors_error(path, e) from None
        out.append(logits.softmax(0).tolist())
    return out


def plot_confusion(cm: np.ndarray, emotions: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    # Cells stay about 0.75 inch whatever the number of classes, so their two lines of text fit.
    side = max(4.2, 0.75 * len(emotions) + 1.2)
    fig, ax = plt.subplots(figsize=(side + 0.6, side))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(emotions)):
        for j in range(len(emotions)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(emotions)), emotions)
    ax.set_yticks(range(len(emotions)), emotions)
    ax.set_xlabel("hypothesis")
    ax.set_ylabel("reference")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def plot_fusion(weights: list[list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = np.array(weights)
    layers = np.arange(w.shape[1])
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.bar(layers, w.mean(0), alpha=0.6, label=f"mean over {len(w)} folds", zorder=1)
    # Each fold on top of the bars, so that a spread across folds stays visible.
    for i, row in enumerate(w):
        ax.plot(layers, row, color="0.3", lw=0.6, marker=".", ms=3, alpha=0.6, zorder=2,
                label="each fold" if i == 0 else None)
    ax.axhline(1 / w.shape[1], ls="--", color="k", lw=0.8, label="uniform (initial)", zorder=3)
    ax.set_xticks(layers)
    ax.set_xlabel("hidden state (0 = transformer input, l = layer l output)")
    ax.set_ylabel("softmax weight")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_report(exp_dir: Path, summary: dict, setup_dir: Path | None = None) -> None:
    """RESULTS.md and the PNGs; a seed group (``summary["runs"]``) takes its setup from ``setup_dir``, one of
    its seeds' experiments."""
    setup_dir = setup_dir or exp_dir
    group = "runs" in summary
    env = environment()
    emotions = summary["emotions"]
    name = exp_dir.name
    if emotions:
        cm = np.array(summary["confusion"])
        plot_confusion(cm, emotions, exp_dir / "confusion.png",
                       f"{name}: summed over {summary['num_folds']} folds"
                       + (f" × {summary['num_seeds']} seeds" if group else "") + " (row-normalised)")
    weights = fusion_weights(exp_dir)
    if weights:
        plot_fusion(weights, exp_dir / "fusion_weights.png", f"{name}: learned layer-fusion weights")
        summary["fusion_weights_mean"] = np.mean(weights, axis=0).tolist()

    # The trainer's resolved config (every field, overrides applied) of the first fold.
    folds = expdir.fold_files(setup_dir, expdir.CONFIG_YAML)
    config = folds[0] if folds else (setup_dir / expdir.CONFIG_YAML if (setup_dir / expdir.CONFIG_YAML).is_file()
                                     else None)
    # Training is where versions and the GPU matter; scoring may run elsewhere, so both are recorded.
    train_env = training_environment(setup_dir) or {}

    def both(key: str) -> str:
        t = train_env.get(key)
        dirty = " (uncommitted changes)" if key == "git_commit" and train_env.get("git_dirty") else ""
        if t is None:
            return f"`{env[key]}` (scoring; training did not record it)"
        return f"`{t}`{dirty}" + ("" if t == env[key] else f" (training), `{env[key]}` (scoring)")

    lines = [
        "<!-- Generated by `python -m mtlser.score aggregate`; edits are overwritten. -->",
        "# RESULTS",
        "## Environments",
        f"- date: `{env['date']}`",
        f"- python version: {both('python')}",
        f"- torch version: {both('torch')}" + (f", torchaudio {both('torchaudio')}" if "torchaudio" in env else ""),
        f"- mtlser git hash: {both('git_commit')}",
        f"- CPU: {both('cpu')}",
        f"- GPU: {both('gpu')}",
        f"- platform: {both('platform')}",
        "",
        f"## {exp_dir}",
        f"- config: `{config}`" if config else "- config: (not found)",
        *experiment_setup(setup_dir),
        f"- seeds (train.seed): {' '.join(str(s) for s in summary['seeds'])}, one experiment each "
        f"({', '.join(summary['members'])}); one split (stage 2) for all" if group
        else f"- seed (train.seed): {summary.get('seed')}",
        f"- folds: {summary['num_folds']}, test utterances: {summary['n']}"
        + (f" scored; **{summary['not_scored']} more could not be decoded and are not in any figure** (each fold's "
           f"decode_test/utt2error)" if summary.get("not_scored") else ""),
        *_unfinished_lines(summary),
    ]
    if not emotions:  # a model with no classes: the attribute scores are its figures
        lines += runs.attribute_lines(summary) + runs.test_set_lines(summary) + _attribute_fold_lines(summary)
        lines += _fusion_lines(weights)
        atomic_write_text(exp_dir / expdir.RESULTS_MD, "\n".join(lines) + "\n")
        return
    lines += ["", *runs.figure_lines(summary)]
    if "ctc_ter" in summary:
        lines.append(f"|CTC token error rate|{100 * summary['ctc_ter']:.2f}||||||")
    lines += runs.f1_note(summary)
    lines += runs.attribute_lines(summary)
    lines += runs.test_set_lines(summary)
    lines += runs.off_fold_lines(summary, emotions)
    if group:
        lines += runs.seed_lines(summary)
    else:
        lines += _fold_lines(summary, emotions)
    lines += ["", f"### Confusion matrix (summed over folds{' and seeds' if group else ''}; rows = reference)", "",
              "|ref \\ hyp|" + "|".join(emotions) + "|", "|---|" + "---|" * len(emotions)]
    for i, e in enumerate(emotions):
        lines.append(f"|{e}|" + "|".join(str(int(c)) for c in cm[i]) + "|")
    lines += ["", "![confusion](confusion.png)"]
    lines += _fusion_lines(weights)
    atomic_write_text(exp_dir / expdir.RESULTS_MD, "\n".join(lines) + "\n")


def _fusion_lines(weights: list[list[float]]) -> list[str]:
    if not weights:
        return []
    return ["", "### Layer fusion weights (mean over folds)", "",
            "|" + "|".join(str(i) for i in range(len(weights[0]))) + "|",
            "|" + "---|" * len(weights[0]),
            "|" + "|".join(f"{x:.3f}" for x in np.mean(weights, axis=0)) + "|",
            "", "![fusion weights](fusion_weights.png)"]


def _attribute_fold_lines(summary: dict) -> list[str]:
    """A class-free model's per-fold table: test speakers, utterances and the mean CCC of each fold."""
    # One seed's folds are its runs; a seed group's are the means over its seeds (runs.fold_means's "ccc").
    return ["", "### Per fold", "", "|fold|test speakers|n|mean CCC|", "|---|---|---|---|",
            *(f"|{f['fold']}|{' '.join(f['speakers'])}|{f.get('n', '')}|"
              f"{f['ccc'] if 'ccc' in f else runs.run_value(f, 'ccc'):.4f}|" for f in summary["folds"])]


def _unfinished_lines(summary: dict) -> list[str]:
    """The runs whose training did not finish (aggregated with --allow-unfinished); none: no line."""
    unfinished = [r for r in summary.get("runs") or summary["folds"] if r.get("unfinished")]
    if not unfinished:
        return []
    return ["- **training did not finish** for " + ", ".join(
        (f"seed {r['seed']} " if "runs" in summary else "") + f"{r['fold']} ({r['unfinished']})" for r in unfinished)
        + ": reported as they are (--allow-unfinished); these figures are not those of the configured training"]


def _fold_lines(summary: dict, emotions: list[str]) -> list[str]:
    """One seed's per-fold table: figures, chance, recalls, CTC TER and the chosen epoch of each fold."""
    from mtlser.score.stats import chance

    # Macro-F1 and mean CCC where the folds were scored with them (new columns; older results have none).
    extra = [(m, name) for m, name in (("macro_f1", "macro-F1"), ("ccc", "mean CCC"))
             if all(runs.run_value(f, m) is not None for f in summary["folds"])]
    lines = ["", "### Per fold", "",
             "|fold|test speakers|n|WA|UA|" + "".join(f"{name}|" for _, name in extra)
             + "|".join(f"recall {e}" for e in emotions) + "|CTC TER|best epoch|chance WA / UA|",
             "|---|---|---|---|---|" + "---|" * (len(extra) + len(emotions)) + "---|---|---|"]
    for f in summary["folds"]:
        rec = "|".join("n/a" if f["recall"].get(e) is None else f"{100 * f['recall'][e]:.1f}" for e in emotions)
        ter = "" if f.get("ctc_ter") is None else f"{100 * f['ctc_ter']:.1f}"
        c = chance(f["confusion"]) if f.get("confusion") else {"wa": None, "ua": None}
        ch = "" if c["wa"] is None else f"{100 * c['wa']:.2f} / {100 * c['ua']:.2f}"
        ext = "".join((f"{100 * runs.run_value(f, m):.2f}|" if m == "macro_f1" else f"{runs.run_value(f, m):.4f}|")
                      for m, _ in extra)
        fold = f["fold"] + (f" ({f['unfinished']})" if f.get("unfinished") else "")
        lines.append(f"|{fold}|{' '.join(f['speakers'])}|{f['n']}|{100 * f['wa']:.2f}|{100 * f['ua']:.2f}|"
                     f"{ext}{rec}|{ter}|{f.get('best_epoch', '')}|{ch}|")
    if any(r is None for f in summary["folds"] for r in f["recall"].values()):
        lines += ["", "n/a: the class is absent from that fold's references (no recall; left out of the fold's UA)."]
    return lines

