"""Stage 3: training writes a self-contained model dir, selects on valid, and resumes bit-identically."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mtlser.data.datadir import read_table, write_table
from mtlser.data.split import split
from mtlser.infer import SERPredictor
from mtlser.text.phone_classes import PhoneClassMap, phncls_token_list
from mtlser.text.tokenize import write_token_list

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fold(make_data_dir, tmp_path):
    """A 4-speaker corpus with phone-class targets, split into LOSO folds; returns (folds dir, token list)."""
    data = make_data_dir(n_spk=4, n_utt=6, seconds=0.8)
    tokens = phncls_token_list(PhoneClassMap.load().classes, 4)
    write_token_list(tmp_path / "token_list", tokens)
    g = torch.Generator().manual_seed(0)
    emo = read_table(data / "utt2emo")
    idx = {"ang": 0, "hap": 1, "sad": 2, "neu": 3}
    text = {}
    for u in emo:
        classes = [["S", "F", "N", "L", "V", "Vs"][int(i)] for i in torch.randint(0, 6, (8,), generator=g)]
        text[u] = " ".join(f"{c}{idx[emo[u]]}" for c in classes)
    write_table(data / "text_phncls", text)
    split(data, tmp_path / "loso", seed=0, valid_share=0.25)
    return tmp_path / "loso", tmp_path / "token_list"


def train_cmd(config, folds, tokens, exp, *extra):
    return [sys.executable, "-m", "mtlser.train", "--config", str(config), "--folds-dir", str(folds), "--fold", "1",
            "--token-list", str(tokens), "--exp-dir", str(exp), *extra]


def run(cmd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)


def test_training_writes_a_self_contained_model_dir(fold, tiny_config, tmp_path):
    folds, tokens = fold
    config = tiny_config(train={"epochs": 2})
    exp = tmp_path / "exp"
    r = run(train_cmd(config, folds, tokens, exp))
    assert r.returncode == 0, r.stderr[-2000:]
    d = exp / "fold01"
    for name in ("config.yaml", "model.yaml", "token_list", "checkpoint.pt", "best.safetensors", "best.json",
                 "history.tsv", "train.log", "train_curves.png"):
        assert (d / name).is_file(), name
    history = (d / "history.tsv").read_text().splitlines()
    assert len(history) == 3 and "valid_ua" in history[0] and "fusion_weights" in history[0]
    assert yaml.safe_load((d / "model.yaml").read_text())["num_hidden_states"] == 3
    # The model dir alone is enough for inference.
    predictor = SERPredictor.from_pretrained(d)
    wav = torch.randn(16000).numpy() * 0.1
    out = predictor.predict_batch([wav])[0]
    assert out["emotion"] in ("ang", "hap", "sad", "neu") and abs(sum(out["probs"].values()) - 1) < 1e-5
    assert all(t in predictor.tokens for t in out["tokens"])
    # A finished fold is not trained again.
    mtime = (d / "checkpoint.pt").stat().st_mtime_ns
    r = run(train_cmd(config, folds, tokens, exp))
    assert r.returncode == 0 and "training already finished" in r.stderr
    assert (d / "checkpoint.pt").stat().st_mtime_ns == mtime


def test_best_model_is_chosen_on_valid_only(fold, tiny_config, tmp_path):
    folds, tokens = fold
    exp = tmp_path / "exp"
    r = run(train_cmd(tiny_config(train={"epochs": 3}), folds, tokens, exp))
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    best = json.loads((exp / "fold01" / "best.json").read_text())
    rows = [line.split("\t") for line in (exp / "fold01" / "history.tsv").read_text().splitlines()]
    head, rows = rows[0], rows[1:]
    ua = [float(r[head.index("valid_ua")]) for r in rows]
    assert best["ua"] == pytest.approx(max(ua), abs=1e-5)
    assert best["epoch"] == 1 + ua.index(max(ua)) or ua.count(max(ua)) > 1


def _tensors(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"], state["optimizer"]["state"], state["history"]


def test_resume_after_kill_is_bit_identical(fold, tiny_config, tmp_path):
    folds, tokens = fold
    config = tiny_config(train={"epochs": 4}, data={"batch_size": 3})
    straight = tmp_path / "straight"
    r = run(train_cmd(config, folds, tokens, straight))
    assert r.returncode == 0, r.stderr[-2000:]

    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(train_cmd(config, folds, tokens, killed), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "fold01" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # somewhere in epoch 2 (or while epoch 1 is being saved)
    proc.wait()
    assert ckpt.exists(), "the first epoch never finished"
    epoch_at_kill = torch.load(ckpt, weights_only=True)["epoch"]
    assert epoch_at_kill < 4, "killed too late to test anything"

    r = run(train_cmd(config, folds, tokens, killed))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from {ckpt}" in r.stderr

    m1, o1, h1 = _tensors(straight / "fold01" / "checkpoint.pt")
    m2, o2, h2 = _tensors(ckpt)
    assert m1.keys() == m2.keys()
    for k in m1:
        assert torch.equal(m1[k], m2[k]), f"parameter {k} differs after resume"
    for pid in o1:
        for k, v in o1[pid].items():
            assert torch.equal(v, o2[pid][k]), f"optimizer state {pid}/{k} differs"
    import json

    drop = ("train_time_s", "train_audio_s_per_s")
    strip = [[{k: v for k, v in e.items() if k not in drop} for e in json.loads(h)] for h in (h1, h2)]
    assert strip[0] == strip[1]
    assert (straight / "fold01" / "best.safetensors").read_bytes() == (killed / "fold01" / "best.safetensors").read_bytes()


def test_a_finished_folds_rerun_does_not_build_the_model(fold, tiny_config, tmp_path):
    """A rerun of a finished fold checks its checkpoint against this run and rewrites its records, the same
    bytes, without building the model: the pretrained backbone it started from may be gone since. A fold with
    epochs to go builds it (and needs that backbone); other settings are refused as before."""
    import shutil

    from tests.test_backbone_loading import hf_model, write_hf_safetensors

    folds, tokens = fold
    hf = write_hf_safetensors(hf_model("wav2vec2", "base"), tmp_path / "hf")
    config = tiny_config(backbone={"init": str(hf), "size": "base", "custom": {}}, train={"epochs": 1})
    exp = tmp_path / "exp"
    r = run(train_cmd(config, folds, tokens, exp))
    assert r.returncode == 0, r.stderr[-2000:]
    d = exp / "fold01"
    names = ("config.yaml", "model.yaml", "token_list", "history.tsv", "best.json", "best.safetensors",
             "checkpoint.pt")
    before = {n: (d / n).read_bytes() for n in names}
    shutil.rmtree(hf)
    (d / "history.tsv").unlink()  # a run killed before its history row: the rerun writes it again

    r = run(train_cmd(config, folds, tokens, exp))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "training already finished (1 epochs); nothing to do" in r.stderr
    assert {n: (d / n).read_bytes() for n in names} == before
    assert yaml.safe_load((d / "env.json").read_text())["gpu"] == "none (cpu)"

    r = run(train_cmd(config, folds, tokens, exp, "--loss.lambda", "0.5"))
    assert r.returncode != 0 and "trained for 1 epochs with other settings" in r.stderr
    r = run(train_cmd(config, folds, tokens, exp, "--train.epochs", "2"))  # resumes: the model is built
    assert r.returncode != 0 and str(hf) in r.stderr
