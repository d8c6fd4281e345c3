"""Shared fixtures: tiny corpora, data dirs and configs built on the fly (no downloads)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: A tiny wav2vec2-shaped backbone for tests: 2 conv layers (320x), 2 pre-LN layers of 32 dims.
TINY_BACKBONE = {
    "arch": "wav2vec2",
    "init": None,
    "size": "custom",
    "custom": {
        "extractor_mode": "group_norm",
        "extractor_conv_layer_config": [[8, 40, 20], [16, 16, 16]],
        "encoder_embed_dim": 32,
        "encoder_pos_conv_kernel": 8,
        "encoder_pos_conv_groups": 4,
        "encoder_num_layers": 2,
        "encoder_num_heads": 2,
        "encoder_ff_interm_features": 64,
        "encoder_layer_norm_first": True,
    },
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "projection_dropout": 0.0,
}


def tiny_config_dict(**sections) -> dict:
    cfg = {
        "backbone": dict(TINY_BACKBONE),
        "loss": {"lambda": 0.1, "ctc_reduction": "mean"},
        "optim": {"lr": 1e-3},
        "data": {"batch_size": 4},
        "train": {"epochs": 2, "seed": 3, "num_threads": 1, "device": "cpu"},
    }
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    return cfg


@pytest.fixture
def tiny_config(tmp_path):
    """Write a tiny training YAML and return its path."""
    import yaml

    def make(**sections) -> Path:
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(tiny_config_dict(**sections)))
        return path

    return make


def write_wav(path: Path, seconds: float = 1.0, sr: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * (120 + 40 * rng.random()) * t) + 0.01 * rng.standard_normal(n)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), sr, subtype="PCM_16")
    return path


#: The inventory of the test data dirs: IEMOCAP's four classes, in the recipe's order.
EMOTIONS = ["ang", "hap", "sad", "neu"]


@pytest.fixture
def make_data_dir(tmp_path):
    """A valid stage-0 data dir with ``n_spk`` speakers x ``n_utt`` utterances (sine-ish audio); utterance i of
    speaker s has label ``emotions[(s + i) % K]``, and ``emotions`` is the dir's inventory."""
    from mtlser.data.datadir import DataDir

    def make(name: str = "all", n_spk: int = 4, n_utt: int = 4, seconds: float = 1.0, text: str = "hello world",
             emotions: list[str] = EMOTIONS):
        tables = {k: {} for k in ("wav.scp", "text", "utt2spk", "utt2emo", "utt2dur", "utt2session")}
        for s in range(n_spk):
            spk = f"Ses{s // 2 + 1:02d}{'FM'[s % 2]}"
            for i in range(n_utt):
                utt = f"{spk}_dlg_{'FM'[s % 2]}{i:03d}"
                wav = write_wav(tmp_path / "wav" / f"{utt}.wav", seconds, seed=s * 100 + i)
                tables["wav.scp"][utt] = str(wav)
                tables["text"][utt] = text
                tables["utt2spk"][utt] = spk
                tables["utt2emo"][utt] = emotions[(s + i) % len(emotions)]
                tables["utt2dur"][utt] = f"{seconds:.4f}"
                tables["utt2session"][utt] = spk[:5]
        path = tmp_path / name
        DataDir(tables, emotions=emotions).write(path)
        return path

    return make


@pytest.fixture(scope="session")
def g2p():
    from mtlser.text.g2p import G2P

    return G2P()


@pytest.fixture(autouse=True)
def _quiet_threads():
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory):
    """A recipe dir after stages 0-5 on a tiny corpus with the mini recipe's model shape (3 folds, trained for
    a few steps): tests/shipping.py. Shared by the inference and export tests; copy it before changing it."""
    from tests.shipping import make_experiment

    return make_experiment(tmp_path_factory.mktemp("tiny_recipe") / "recipe")


# ---------------------------------------------------------------- the local Slurm (tools/start_slurm.sh)

#: Where tools/start_slurm.sh leaves slurm.env (SLURM_CONF=...) once its Slurm is up.
SLURM_DIR = Path(os.environ.get("MTLSER_SLURM_DIR", "/var/tmp/mtlser-slurm"))


def live_slurm() -> dict[str, str] | None:
    """The environment variables of the running local Slurm, or None when none answers."""
    import shutil
    import subprocess

    env_file = SLURM_DIR / "slurm.env"
    if not env_file.is_file() or not shutil.which("sbatch"):
        return None
    env = dict(line.split("=", 1) for line in env_file.read_text().split() if "=" in line)
    r = subprocess.run(["scontrol", "ping"], env=dict(os.environ, **env), capture_output=True, text=True)
    return env if "is UP" in r.stdout else None


@pytest.fixture(scope="session")
def slurm() -> dict[str, str]:
    """SLURM_CONF & co. of the local Slurm. Without one: skipped here, a failure in CI (CI=true)."""
    env = live_slurm()
    if env is None:
        why = (f"no live Slurm: {SLURM_DIR}/slurm.env missing or its controller not answering; "
               "start one with tools/start_slurm.sh (as root)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs the Slurm tests to run: {why}")
        pytest.skip(why)
    return env


def pytest_terminal_summary(terminalreporter):
    """One line saying whether the Slurm tests ran (CI's log must show them passed, not skipped)."""
    counts: dict[str, int] = {}
    for reports in terminalreporter.stats.values():
        for rep in reports:
            when = getattr(rep, "when", None)  # test reports only (stats also hold deselected items)
            if when and "slurm" in rep.keywords and (when == "call" or rep.outcome != "passed"):
                counts[rep.outcome] = counts.get(rep.outcome, 0) + 1
    if counts:
        env = live_slurm()
        where = f"SLURM_CONF={env['SLURM_CONF']}" if env else "no live Slurm"
        terminalreporter.write_line(
            f"Slurm tests ({where}): " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
