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

import datetime
import json
import os
import platform
import subprocess
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
    """Where this process runs: versions, git commit, and the GPU (``device``'s, else GPU 0's, else none)."""
    import torch

    env = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "gpu": _gpu_name(device),
    }
    try:
        import torchaudio

        env["torchaudio"] = torchaudio.__version__
    except Exception:  # pragma: no cover
        pass
    env.update(git_commit())
    return env


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
    import torch

    if device is not None and getattr(device, "type", str(device)) == "cpu":
        return "none (cpu)"
    if not torch.cuda.is_available():
        return "none"
    return torch.cuda.get_device_name(device if device is not None else 0)
