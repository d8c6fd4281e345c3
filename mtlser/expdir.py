"""The layout of a model dir, an experiment dir, a decode dir and a folds dir: one owner of every file name.

Training writes a model dir (``exp/<tag>/foldNN``, ``exp/<tag>/final``)::

    config.yaml        the resolved config (every field, overrides applied)
    model.yaml         what inference needs to rebuild the model (emotions, architecture, ...)
    token_list         the CTC targets, <blank> first
    best.safetensors   the reported model's weights (best.json says which epoch)
    best.json          the reported epoch and its valid figures
    checkpoint.pt      the latest epoch, to resume from
    history.tsv        one row per epoch
    env.json           where it was trained (environment(): versions, CPU, GPU, git commit)

Decoding a data dir writes a decode dir (``MODEL_DIR/decode_test`` for a fold's test set)::

    utt2emo_hyp   utt  predicted emotion
    emo_probs     utt  p(e_1) ... p(e_K)   (header-less, in the model's emotion order)
    text_hyp      utt  greedy CTC tokens (models with a CTC head)
    utt2attr_hyp  utt  predicted attribute values, in model.yaml's attribute order (models with an
                  attribute head; the format of a data dir's utt2attr, mtlser.data.attributes)
    utt2error     utt  why it could not be decoded; absent when none failed
    data_dir      the decoded data dir (scoring reads its references there)

and scoring adds ``result.txt`` and ``result.json`` to it. An experiment dir (``exp/<tag>``) holds the
fold model dirs (mtlser.data.fold_names) and ``recipe_options.json`` (the recipe options stage 3 ran it
with, for the later stages: mtlser.recipe.options), and scoring writes ``results.json`` and ``RESULTS.md`` there.
Stage 2's folds dir (``data/<protocol>``) holds the fold data dirs and the ``protocol`` table.
"""

from __future__ import annotations

import ast
import ctypes
import datetime
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mtlser.data.datadir import read_table, write_table
from mtlser.data.fold_names import FOLD_GLOB, PROTOCOL_TABLE, TEST_SET, fold_dirs
from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_write_text

# A model dir.
CONFIG_YAML = "config.yaml"
MODEL_YAML = "model.yaml"
TOKEN_LIST = "token_list"
BEST_WEIGHTS = "best.safetensors"
BEST_JSON = "best.json"
CHECKPOINT = "checkpoint.pt"
HISTORY_TSV = "history.tsv"
ENV_JSON = "env.json"

# A decode dir.
DECODE_PREFIX = "decode_"
DECODE_TEST = DECODE_PREFIX + TEST_SET  # a fold's main test set; decode_test<name> for the fixed protocol's others
UTT2EMO_HYP = "utt2emo_hyp"
EMO_PROBS = "emo_probs"
TEXT_HYP = "text_hyp"
UTT2ATTR_HYP = "utt2attr_hyp"
UTT2ERROR = "utt2error"
DATA_DIR_POINTER = "data_dir"
RESULT_TXT = "result.txt"
RESULT_JSON = "result.json"

# An experiment dir.
RESULTS_JSON = "results.json"
RESULTS_MD = "RESULTS.md"
RECIPE_OPTIONS = "recipe_options.json"

# A folds dir (stage 2): its protocol table is named by mtlser.data.fold_names, which stage 2 (in data) writes.
PROTOCOL = PROTOCOL_TABLE


def _yaml(path: Path) -> dict | None:
    if not path.is_file():
        return None
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def read_model_info(model_dir: str | Path) -> dict | None:
    """model.yaml of a model dir, None when it has none."""
    return _yaml(Path(model_dir) / MODEL_YAML)


def read_config(model_dir: str | Path) -> dict | None:
    """The resolved config.yaml of a model dir ({} when empty), None when it has none."""
    return _yaml(Path(model_dir) / CONFIG_YAML)


def read_best(model_dir: str | Path) -> dict | None:
    """best.json of a model dir (the reported epoch), None when it has none."""
    path = Path(model_dir) / BEST_JSON
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True)
class Training:
    """How far a model dir's training got, from what the trainer wrote: history.tsv (one row per epoch
    trained, written after each epoch's checkpoint), config.yaml (train.epochs, train.patience) and best.json
    (the reported epoch). Training is finished when every configured epoch was trained, or when early
    stopping ended it (no improvement for train.patience epochs since the reported one): the trainer's own
    rule (mtlser.train.trainer.Trainer.end_epoch). Anything else (killed, preempted, train.stop_after_epoch)
    is unfinished."""

    epochs_run: int  # history.tsv's rows
    epochs: int  # train.epochs of config.yaml
    early_stopped: bool  # no improvement for train.patience epochs since best.json's epoch
    stop_after_epoch: int = 0  # train.stop_after_epoch of config.yaml (0: off)

    @property
    def finished(self) -> bool:
        return self.epochs_run >= self.epochs or self.early_stopped

    def describe(self) -> str:
        """How RESULTS.md and a model card say it: "unfinished, 2 of 5 epochs", "stopped early after 3 of 5
        epochs (train.patience)", "5 epochs"."""
        if not self.finished:
            return f"unfinished, {self.epochs_run} of {self.epochs} epochs"
        if self.epochs_run < self.epochs:
            return f"stopped early after {self.epochs_run} of {self.epochs} epochs (train.patience)"
        return f"{self.epochs_run} epochs"


def epochs_run(model_dir: str | Path) -> int:
    """Epochs the trainer finished in a model dir: history.tsv's rows (0 without one)."""
    path = Path(model_dir) / HISTORY_TSV
    if not path.is_file():
        return 0
    return max(0, sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) - 1)


def read_training(model_dir: str | Path) -> Training | None:
    """How far the training of a model dir got; None for a dir the trainer did not leave behind (no
    config.yaml; or no history.tsv and weights or no env.json: made by hand, an unzipped pack)."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    if config is None:
        return None
    if not (model_dir / HISTORY_TSV).is_file() and ((model_dir / BEST_WEIGHTS).is_file()
                                                    or not (model_dir / ENV_JSON).is_file()):
        return None  # not left by a trainer (which writes env.json first, history.tsv after each epoch)
    train = config.get("train") or {}
    epochs, patience = int(train.get("epochs", 0) or 0), int(train.get("patience", 0) or 0)
    run = epochs_run(model_dir)
    best = read_best(model_dir) or {}
    early = patience > 0 and "epoch" in best and run - int(best["epoch"]) >= patience
    return Training(run, epochs, early, int(train.get("stop_after_epoch", 0) or 0))


#: How every stage that reports a model (4 decode, 5 score, 6 pack) says it may report an unfinished one.
ALLOW_UNFINISHED = "--allow-unfinished"


def check_finished(model_dir: str | Path, allow_unfinished: bool = False, can_allow: bool = True
                   ) -> Training | None:
    """Refuse a model dir whose training did not finish (see Training), unless ``allow_unfinished``: then
    it is logged, and the caller marks what it reports. Returns the dir's Training (None: not a training dir).
    ``can_allow``: the caller offers --allow-unfinished (the message names it)."""
    training = read_training(model_dir)
    if training is None or training.finished:
        return training
    if not allow_unfinished:
        raise MtlserError(f"{model_dir}: training did not finish (epoch {training.epochs_run} of "
                          f"{training.epochs}); resume it with stage 3 (./run.sh --stage 3 with the same options"
                          + (", without train.stop_after_epoch)" if training.stop_after_epoch else ")")
                          + (f", or pass {ALLOW_UNFINISHED} (ser.sh: --allow-unfinished true) to report it as "
                             "unfinished" if can_allow else ""))
    import logging

    logging.getLogger("mtlser").warning("%s: training did not finish (epoch %d of %d); reported as unfinished (%s)",
                                        model_dir, training.epochs_run, training.epochs, ALLOW_UNFINISHED)
    return training


def model_dirs(exp_dir: str | Path) -> list[Path]:
    """The fold dirs of an experiment that hold a trained model (a model.yaml), in fold order."""
    return [d for d in fold_dirs(exp_dir) if (d / MODEL_YAML).is_file()]


def fold_files(exp_dir: str | Path, name: str) -> list[Path]:
    """``exp_dir/foldNN/name`` for every fold that has it, in fold order (name may be a relative path)."""
    return sorted(Path(exp_dir).glob(f"{FOLD_GLOB}/{name}"))


def write_decode(out: Path, data_dir: Path, hyp: dict[str, str] | None, probs: dict[str, str],
                 text: dict[str, str] | None, errors: dict[str, str],
                 attributes: dict[str, list[float]] | None = None) -> None:
    """A decode dir's files (see the module doc); utt2error only when an utterance failed; no utt2emo_hyp and
    emo_probs (``hyp`` None) from a model with no classes."""
    out.mkdir(parents=True, exist_ok=True)
    if hyp is not None:
        write_table(out / UTT2EMO_HYP, hyp)
        write_table(out / EMO_PROBS, probs)
    if attributes is not None:
        from mtlser.data.attributes import write_values
        write_values(out / UTT2ATTR_HYP, attributes)
    if text is not None:
        write_table(out / TEXT_HYP, text)  # an utterance with no token is a line of its id alone
    if errors:  # scoring reports them (mtlser.score.not_scored)
        write_table(out / UTT2ERROR, errors)
    elif (out / UTT2ERROR).exists():
        (out / UTT2ERROR).unlink()  # from an earlier decode: none failed this time
    # Scoring finds the references through this (local/score.sh takes only the decode dir).
    atomic_write_text(out / DATA_DIR_POINTER, str(data_dir.resolve()) + "\n")


def hypothesis_file(decode_dir: str | Path) -> str | None:
    """The hypotheses a decode dir holds: utt2emo_hyp, or utt2attr_hyp for a model with no classes; None when
    it was not decoded."""
    for name in (UTT2EMO_HYP, UTT2ATTR_HYP):
        if (Path(decode_dir) / name).is_file():
            return name
    return None


def decoded_data_dir(decode_dir: str | Path) -> Path | None:
    """The data dir a decode dir was decoded from (its data_dir pointer), None without one."""
    pointer = Path(decode_dir) / DATA_DIR_POINTER
    return Path(pointer.read_text(encoding="utf-8").strip()) if pointer.is_file() else None


def read_protocol(folds_dir: str | Path) -> dict[str, str]:
    """Stage 2's protocol table of a folds dir (protocol, valid, valid_share, seed, ...); {} without one."""
    path = Path(folds_dir) / PROTOCOL
    return read_table(path) if path.is_file() else {}


def valid_split_text(protocol: dict[str, str]) -> str | None:
    """Stage 2's valid split in words (RESULTS.md, model cards), from its protocol table; None without one."""
    valid = protocol.get("valid")
    if valid == "share":
        valid += (f" ({float(protocol.get('valid_share', 'nan')):.0%} of each training speaker, "
                  f"seed {protocol.get('seed')})")
    return valid


def experiment_folds_dir(exp_dir: str | Path) -> Path | None:
    """The folds dir an experiment's folds were decoded from (data/<protocol>), None before any decode."""
    pointers = fold_files(exp_dir, f"{DECODE_TEST}/{DATA_DIR_POINTER}")
    if not pointers:
        return None
    return decoded_data_dir(pointers[0].parent).parent.parent  # data/<protocol>/foldNN/test


def write_recipe_options(exp_dir: str | Path, record: dict) -> None:
    """recipe_options.json: the recipe options an experiment was trained with (mtlser.recipe.options)."""
    Path(exp_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(exp_dir) / RECIPE_OPTIONS, json.dumps(record, indent=1, sort_keys=True) + "\n")


def read_recipe_options(exp_dir: str | Path) -> dict | None:
    """An experiment's recipe_options.json, None when it has none."""
    path = Path(exp_dir) / RECIPE_OPTIONS
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise MtlserError(f"{path}: not JSON ({e}); delete it and rerun stage 3 (training resumes, nothing is lost)") \
            from None
    if not isinstance(record, dict) or not isinstance(record.get("options"), dict):
        raise MtlserError(f"{path}: no 'options' object; delete it and rerun stage 3 (training resumes)")
    return record


def environment(device=None) -> dict:
    """Where this process runs: versions, git commit, and the GPU (``device``'s, else GPU 0's, else none).
    Scoring records it too, and imports no torch for it where the answer is known without (package_version,
    _gpu_name): that import is most of a scoring command's time."""
    env = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "gpu": _gpu_name(device),
    }
    torchaudio = package_version("torchaudio")
    if torchaudio is not None:
        env["torchaudio"] = torchaudio
    env.update(git_commit())
    return env


def package_version(name: str) -> str | None:
    """``name.__version__`` (torch, torchaudio), None when the package is not installed. An imported package
    answers itself; otherwise the string is read from the package's ``version.py``, the file its
    ``__version__`` is imported from, without importing the package. importlib.metadata would not do:
    it drops the local part (torch 2.11.0+cu130 is "2.11.0" there)."""
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.find_spec(name)
        if spec is None:
            return None
        fields = _version_py(spec)
        if "__version__" in fields:
            return str(fields["__version__"])
        module = importlib.import_module(name)  # another layout: ask the package
    return str(module.__version__)


def _version_py(spec) -> dict:
    """The literal assignments of the ``version.py`` beside a package's ``__init__`` (torch's: __version__,
    cuda, hip, ...); {} without one or where it cannot be read."""
    fields = {}
    for location in spec.submodule_search_locations or []:
        path = Path(location) / "version.py"
        try:
            body = ast.parse(path.read_text(encoding="utf-8")).body
        except (OSError, SyntaxError, ValueError):
            continue
        for node in body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
                node.target if isinstance(node, ast.AnnAssign) else None
            if isinstance(target, ast.Name) and node.value is not None:
                try:
                    fields[target.id] = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError):  # not a literal: the caller asks the package
                    pass
        break
    return fields


def git_commit() -> dict:
    """{"git_commit", "git_dirty"} of this checkout; where the tree is a copy without .git (a lent GPU
    machine), {"git_commit": $MTLSER_COMMIT or "unknown"}."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return {"git_commit": commit, "git_dirty": bool(dirty)}
    except Exception:
        return {"git_commit": os.environ.get("MTLSER_COMMIT", "unknown")}


def write_environment(model_dir: str | Path, device=None) -> None:
    """env.json: where this model dir was trained."""
    atomic_write_text(Path(model_dir) / ENV_JSON, json.dumps(environment(device), indent=1) + "\n")


def read_environment(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / ENV_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def cpu_model() -> str:
    """The CPU's model name and core count: CPU results differ between CPU types (their float kernels do)."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown"
    return f"{name}, {os.cpu_count()} cores"


def _gpu_name(device) -> str:
    if device is not None and getattr(device, "type", str(device)) == "cpu":
        return "none (cpu)"
    if _no_gpu_without_torch():
        return "none"
    import torch

    if not torch.cuda.is_available():
        return "none"
    return torch.cuda.get_device_name(device if device is not None else 0)


def _no_gpu_without_torch() -> bool:
    """True where torch.cuda.is_available() is certainly False, told without importing torch: a torch built
    without CUDA and ROCm (its version.py), or a CUDA build on a machine whose dynamic loader finds no CUDA
    driver (libcuda.so.1, which CUDA's runtime loads to count the devices). Anything else asks torch."""
    if "torch" in sys.modules or os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"):
        return False  # already paid for, or torch counts the devices another way (NVML)
    spec = importlib.util.find_spec("torch")
    if spec is None:
        return False  # no torch: let its import say so, as it always did
    build = _version_py(spec)
    if "cuda" not in build or "hip" not in build or build["hip"] is not None:
        return False
    if build["cuda"] is None:
        return True
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return True
    return False
