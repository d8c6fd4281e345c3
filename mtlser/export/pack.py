"""Packs (ESPnet's pack stage): one .zip per model that loads anywhere mtlser is installed.

    python -m mtlser.export pack --model-dir exp/<tag>/fold01 --out fold01.zip
    python -m mtlser.export pack --exp-dir exp/<tag> --out-dir exp/<tag>/packed     # stage 6, + mtlser's wheel

A pack holds the model's ``model.yaml`` (architecture, emotions), ``config.yaml``, ``token_list``,
its weights as ``model.safetensors``, and its model card (``card.json``, ``README.md``: see
:mod:`mtlser.export.card`); an ensemble's pack holds ``ensemble.yaml`` and each member under
``members/<name>/``. Layout and names: :mod:`mtlser.infer.package`. A model is loaded once before
it is packed, so a pack that loads is the only kind written. Packing is deterministic: the same
model dir gives the same bytes (fixed timestamps and modes in the zip).

The card records the sha256 of every other file of the pack (``card.json``'s ``files_sha256``), and a
loader checks each file it reads against it (:mod:`mtlser.infer.package`): a pack whose model.yaml,
config or weights were edited after packing is refused, naming the file. A training dir whose training did
not finish (:func:`mtlser.expdir.check_finished`) is refused, or with ``allow_unfinished`` packed with its
card saying "unfinished, N of M epochs".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

from mtlser import expdir
from mtlser.data.fold_names import FINAL
from mtlser.export.card import card_text, experiment_facts, model_facts, model_kind
from mtlser.infer.package import (
    CARD_JSON,
    CARD_MD,
    DIGESTS,
    ENSEMBLE_YAML,
    MODEL_FILES,
    ModelFiles,
    ensemble_text,
    write_ensemble,
)
from mtlser.infer.predictor import read_model
from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_dir, atomic_open, check_output

logger = logging.getLogger(__name__)

#: The weights' name inside a pack.
PACKED_WEIGHTS = "model.safetensors"
ENSEMBLE_DIR = "ensemble"


def _model_entries(model_dir: Path, prefix: str = "", weights: str | None = None) -> list[tuple[str, bytes]]:
    files = ModelFiles.open(model_dir)
    read_model(files, weights)  # refuse to pack what does not load
    entries = [(prefix + name, files.read_bytes(name)) for name in MODEL_FILES]
    entries.append((prefix + PACKED_WEIGHTS, files.read_bytes(files.weights_name(weights))))
    return entries


def write_zip(out: Path, entries: list[tuple[str, bytes]]) -> None:
    """Write ``entries`` (name, bytes) as a zip, atomically; weights stored, text deflated."""
    with atomic_open(out, "wb") as f, zipfile.ZipFile(f, "w") as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED if name.endswith(".safetensors") else zipfile.ZIP_DEFLATED
            zf.writestr(info, data)


def _card_entries(facts: dict, entries: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    facts[DIGESTS] = {name: hashlib.sha256(data).hexdigest() for name, data in entries}
    return [(CARD_JSON, (json.dumps(facts, indent=1, ensure_ascii=False) + "\n").encode("utf-8")),
            (CARD_MD, card_text(facts).encode("utf-8"))]


def ensemble_combine(member: dict) -> str:
    """How an ensemble's output comes from its members' (SERPredictor averages both, mtlser.infer.predictor)."""
    if not member.get("attributes"):
        return "mean of the members' emotion probabilities"
    if not member.get("emotions"):
        return "mean of the members' attribute values"
    return "mean of the members' emotion probabilities and of their attribute values"


def pack(model_dir: str | Path, out: str | Path, corpus: str | None = None, weights: str | None = None,
         wheel: dict | None = None, allow_unfinished: bool = False) -> Path:
    """Pack a training dir (foldNN, final) or an ensemble dir into ``out`` (.zip); ``wheel`` (file, source):
    the mtlser wheel stage 6 put beside it, for the card's install lines; a model whose training did not
    finish is refused unless ``allow_unfinished`` (then its card says so)."""
    model_dir, out = Path(model_dir), Path(out)
    if out.is_dir():  # checked before the work: os.replace onto a directory is a traceback at the very end
        raise MtlserError(f"{out}: a directory; --out names the .zip file to write, e.g. "
                          f"{out / (model_dir.name + '.zip')}")
    check_output(out, [model_dir], "--out")
    if not model_dir.is_dir():
        raise MtlserError(f"{model_dir}: not a directory; pack a training dir (exp/<tag>/foldNN or final) or an "
                          "ensemble dir (python -m mtlser.export ensemble)")
    cv = experiment_facts(model_dir.parent)
    if (model_dir / ENSEMBLE_YAML).is_file():
        members = ModelFiles.open(model_dir).members()
        dup = sorted({n for n, _ in members if [m for m, _ in members].count(n) > 1})
        if dup:
            raise MtlserError(f"{model_dir / ENSEMBLE_YAML}: members named {dup} more than once; a pack keeps each "
                              "member under members/<its dir name>/")
        member_facts, entries, names = [], [], []
        check_output(out, [files.base for _, files in members], "--out")
        for name, files in members:
            expdir.check_finished(files.base, allow_unfinished)
            entries += _model_entries(files.base, f"members/{name}/", weights)
            member_facts.append(model_facts(files.base, "fold", corpus))
            names.append(f"members/{name}")
        first = member_facts[0]
        facts = {"name": model_dir.name, "kind": "ensemble", "combine": ensemble_combine(first),
                 **{k: first.get(k) for k in ("corpus", "protocol", "valid_split", "epoch_selection", "emotions",
                                               "backbone", "fusion", "lambda", "ctc_targets", "git_commit",
                                               "mtlser_version")},
                 "members": member_facts}
        if first.get("attributes"):  # only then: the paper's ensemble card keeps its facts
            facts.update(attributes=first["attributes"], objective=first.get("objective"))
        text = ensemble_text(names, first["emotions"], f"{len(names)} fold models of {model_dir.parent.name}")
        entries = [(ENSEMBLE_YAML, text.encode("utf-8"))] + entries
        unfinished = [m["name"] for m in member_facts if m.get("unfinished")]
        if unfinished:
            facts["unfinished"] = f"members {' '.join(unfinished)} did not finish training"
    else:
        expdir.check_finished(model_dir, allow_unfinished)
        entries = _model_entries(model_dir, "", weights)
        facts = model_facts(model_dir, model_kind(model_dir), corpus)
    if cv is not None:
        facts["cross_validation"] = cv
    if wheel is not None:
        facts["wheel"] = wheel
    write_zip(out, entries + _card_entries(facts, entries))
    logger.info("packed %s into %s (%.1f MB)", model_dir, out, out.stat().st_size / 1e6)
    return out


def make_ensemble(exp_dir: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write ``EXP/ensemble/ensemble.yaml`` over every fold model of an experiment; returns the ensemble dir
    (written as a whole: :func:`mtlser.utils.fileio.atomic_dir`)."""
    exp_dir = Path(exp_dir)
    out = Path(out) if out else exp_dir / ENSEMBLE_DIR
    folds = expdir.model_dirs(exp_dir)
    check_output(out, folds, "--out", is_dir=True, overwrite=overwrite, expect=[ENSEMBLE_YAML])
    if len(folds) < 2:
        raise MtlserError(f"{exp_dir}: {len(folds)} fold model(s); an ensemble needs at least 2 (train more "
                          "folds)")
    emotions = None
    for d in folds:
        files = ModelFiles.open(d)
        files.weights_name()  # a finished fold
        e = files.read_yaml(expdir.MODEL_YAML).get("emotions")
        if emotions is not None and e != emotions:
            raise MtlserError(f"{d / expdir.MODEL_YAML}: emotions {e} differ from {folds[0].name}'s {emotions}; "
                              "the fold models of one experiment must share them")
        emotions = e
    members = [os.path.relpath(d, out) for d in folds]
    with atomic_dir(out, overwrite, "--out") as tmp:
        write_ensemble(tmp, members, emotions, f"{len(folds)} fold models of {exp_dir.name}: "
                       "python -m mtlser.export ensemble")
    logger.info("ensemble of %d fold models: %s", len(folds), out / ENSEMBLE_YAML)
    return out


def pack_experiment(exp_dir: str | Path, out_dir: str | Path, corpus: str | None = None,
                    allow_unfinished: bool = False) -> list[Path]:
    """Stage 6: the wheel of the mtlser that trained them (mtlser.export.wheel), every fold model, the final
    model when there is one, and the ensemble of the folds; any of them unfinished refuses the stage before a
    pack (or the wheel) is written, unless ``allow_unfinished``."""
    from mtlser.export.wheel import build_wheel

    exp_dir, out_dir = Path(exp_dir), Path(out_dir)
    folds = expdir.model_dirs(exp_dir)
    check_output(out_dir, folds + [exp_dir / FINAL, exp_dir / ENSEMBLE_DIR], "--out-dir")
    if not folds:
        raise MtlserError(f"{exp_dir}: no fold models (foldNN/model.yaml); train the folds first")
    final = exp_dir / FINAL
    if not allow_unfinished:  # refused before any pack is written (allowed: each pack logs it)
        for d in folds + ([final] if (final / expdir.MODEL_YAML).is_file() else []):
            expdir.check_finished(d)
    env = expdir.read_environment(folds[0]) or {}
    path, source = build_wheel(out_dir, env.get("git_commit"), env.get("git_dirty"))
    wheel = {"file": path.name, "source": source}
    packs = [pack(d, out_dir / f"{d.name}.zip", corpus, wheel=wheel, allow_unfinished=allow_unfinished)
             for d in folds]
    if (final / expdir.MODEL_YAML).is_file():
        packs.append(pack(final, out_dir / f"{FINAL}.zip", corpus, wheel=wheel, allow_unfinished=allow_unfinished))
    else:
        logger.info("%s: no final model (trained on every speaker); packing the folds and their ensemble", final)
    if len(folds) >= 2:
        packs.append(pack(make_ensemble(exp_dir), out_dir / f"{ENSEMBLE_DIR}.zip", corpus, wheel=wheel,
                          allow_unfinished=allow_unfinished))
    else:
        logger.info("%s: one fold model, no ensemble", exp_dir)
    return packs
