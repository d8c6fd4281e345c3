"""Whether a fold dir may resume under the settings of this run.

An experiment dir must record exactly what produced its model. The checkpoint
therefore carries the resolved config, the token list and a fingerprint of the
fold's training data, and a rerun compares them with its own before it writes
anything:

- a field that changes the model or its training (lambda, lr, seed, the
  architecture, the CTC targets, ...) refuses, with the fields, their recorded and
  their new values, and the way out (another ``--tag``, or ``--force`` to retrain);
- a field in :data:`RESUMABLE` (more epochs, threads, workers, log interval, kernel
  choices) is named in the log, and training continues under it: a finished fold
  given more epochs trains on from its last epoch, as one longer run would have.

Every refusal, and a checkpoint that cannot be read, is a :class:`ResumeRefused`.
With ``--force`` the trainer then removes the fold's training state and outputs
(:func:`clear_training`) and trains it from scratch under the new settings; a fold
that can resume is left alone, so a rerun of the same command does not retrain again.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

from mtlser import expdir
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)

class ResumeRefused(MtlserError):
    """The fold's checkpoint cannot be resumed by this run (other settings, or unreadable): --force retrains."""


#: Config fields (YAML names) that may differ between the run that wrote a checkpoint and the run that resumes
#: it, and why: they change neither the model nor the optimisation it went through.
RESUMABLE: dict[str, str] = {
    "train.epochs": "training continues to the new count (not below the epochs already trained)",
    "train.patience": "early stopping is judged with the new patience from now on",
    "train.log_interval": "logging only",
    "train.stop_after_epoch": "where this run stops, not what it trains",
    "train.num_threads": "CPU threads only",
    "train.keep_epoch_checkpoints": "which files are kept",
    "train.tensorboard": "logging only",
    "train.device": "the hardware, not the maths",
    "train.sdpa_backend": "an attention kernel choice",
    "train.cudnn_benchmark": "a convolution kernel choice",
    "train.compile": "compiled code of the same layers",
    "data.num_workers": "data loading processes",
    "data.cache_audio": "keeping waveforms in memory",
    "data.cnn_cache_dir": "where cached CNN features live (their content is keyed)",
    "backbone.cache_dir": "where a torchaudio bundle's file is read from",
}

#: Files a fold's training writes; --force removes them (decode dirs too: they came from the old model).
TRAINING_OUTPUTS = (expdir.CHECKPOINT, expdir.BEST_WEIGHTS, expdir.BEST_JSON, expdir.HISTORY_TSV, "train_curves.png",
                    expdir.CONFIG_YAML, expdir.MODEL_YAML, expdir.TOKEN_LIST, expdir.ENV_JSON, "tensorboard")


def _same(a: Any, b: Any) -> bool:
    """Equal as config values: 1 == 1.0, [1, 2] == (1, 2)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def config_changes(recorded: dict, current: dict, defaults: dict) -> list[tuple[str, Any, Any]]:
    """(field, recorded value, current value) for every field of ``current`` that differs from ``recorded``
    (resolved configs as nested dicts, YAML names: ``loss.lambda``).

    A field the record lacks (added to mtlser after the checkpoint was written) counts as its default; a field
    only the record has (since removed) is ignored, as nothing reads it any more. Free-form mappings
    (backbone.custom) are compared key by key, so the diff names the inner key.
    """
    changes = []
    for section, fields in current.items():
        record = recorded.get(section) or {}
        for key, value in fields.items():
            name = f"{section}.{key}"
            before = record[key] if key in record else defaults[section][key]
            if isinstance(value, dict) or isinstance(before, dict):
                b, a = before or {}, value or {}
                changes += [(f"{name}.{k}", b.get(k), a.get(k)) for k in sorted(set(a) | set(b))
                            if not _same(b.get(k), a.get(k))]
            elif not _same(before, value):
                changes.append((name, before, value))
    return changes


def check_resume(recorded: dict, current: dict, defaults: dict, *, checkpoint: Path, epochs_done: int,
                 scheduler: str) -> list[tuple[str, Any, Any]]:
    """Raise MtlserError when ``current`` (a resolved config as a dict) differs from the one ``checkpoint``
    was trained with in a field outside :data:`RESUMABLE`; return the resumable changes, for the log."""
    changes = config_changes(recorded, current, defaults)
    fixed = [c for c in changes if c[0] not in RESUMABLE]
    why = ""
    for change in changes:
        key, _before, after = change
        if key != "train.epochs":
            continue
        if after < epochs_done:  # the model already went through more epochs than the record would say
            fixed.append(change)
            why = f" (train.epochs may grow on resume, not fall below the {epochs_done} epochs already trained)"
        elif scheduler == "warmup_linear":  # the epoch count sets the learning rate of every step
            fixed.append(change)
            why = " (with scheduler warmup_linear, train.epochs sets the learning-rate decay of every step)"
    if fixed:
        diff = "; ".join(f"{k}: {_show(b)} -> {_show(a)}" for k, b, a in fixed)
        raise ResumeRefused(
            f"{checkpoint.parent}: trained for {epochs_done} epochs with other settings than this run's "
            f"(recorded -> now: {diff}){why}; its model stays as it is. Run these settings as a new experiment "
            f"(./run.sh --tag NEW_NAME, or another --exp-dir), or retrain this fold from scratch with --force "
            f"(./run.sh --train-opts \"... --force\")")
    return [c for c in changes if c not in fixed]


def describe_resumable(changes: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{k}: {_show(b)} -> {_show(a)} ({RESUMABLE[k]})" for k, b, a in changes)


def _show(v: Any) -> str:
    return "(unset)" if v is None else repr(v) if isinstance(v, str) else str(v)


def read_checkpoint(path: Path, map_location, mmap: bool = False) -> dict:
    """The trainer state in ``path``, read with ``torch.load(weights_only=True)``; a file that is not one
    (truncated, corrupt, a pickle of other objects) is one clear error. torch's own message for a refused
    pickle advises ``weights_only=False``, i.e. running the file's code: that advice is not passed on.
    ``mmap``: the tensors stay in the file until used (a caller that reads the record of the run only)."""
    import torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        text = str(e)
        if "Weights only load failed" in text:
            why = ("it holds Python objects other than tensors and plain data, so it is not a checkpoint mtlser "
                   "wrote (mtlser never unpickles such files)")
        else:
            why = f"truncated or corrupt: {type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"
        raise ResumeRefused(f"{path}: cannot read the checkpoint ({why}); delete it (or add --force) to start this "
                            "fold again") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch"} <= set(state):
        raise ResumeRefused(f"{path}: cannot read the checkpoint (not a trainer state: no model/optimizer/epoch); "
                            "delete it (or add --force) to start this fold again")
    return state


def data_fingerprint(*datasets) -> str:
    """A hash of the utterances a fold trains and selects on, with their labels and CTC targets."""
    h = hashlib.sha256()
    for ds in datasets:
        if ds is None:  # no valid set (train.model_selection last)
            continue
        h.update(str(ds.data_dir.name).encode())
        for i, utt in enumerate(ds.utts):
            target = ds.targets[i] if ds.targets is not None else []
            h.update(f"{utt}\t{ds.emotions[i]}\t{' '.join(map(str, target))}\n".encode())
    return h.hexdigest()[:16]


def clear_training(exp_dir: Path) -> list[str]:
    """--force on a fold that cannot resume: remove its training state and outputs (and its decode dirs, which
    came from the old model) so that it trains from scratch."""
    removed = []
    for name in TRAINING_OUTPUTS:
        p = exp_dir / name
        if p.is_file():
            p.unlink()
            removed.append(name)
        elif p.is_dir():  # tensorboard/
            shutil.rmtree(p)
            removed.append(name)
    for p in sorted(exp_dir.glob("epoch*.safetensors")) + sorted(exp_dir.glob("decode_*")):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed.append(p.name)
    return removed
