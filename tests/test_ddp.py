"""Several processes per fold (torchrun, DDP with gloo on CPU): the README's line, same maths as one process, resume.

Each torchrun run here starts two ranks on a tiny model; see mtlser/train/distributed.py for
what the ranks share.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtlser.config import load_config
from mtlser.data.datadir import read_table
from mtlser.data.dataset import BatchSampler
from mtlser.text.tokenize import read_token_list
from mtlser.train.distributed import term_weights
from mtlser.train.trainer import Trainer
from tests.test_train import fold  # noqa: F401  (the fixture: a 4-speaker corpus split into folds)

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def readme_torchrun_line() -> list[str]:
    """The README's torchrun command (Jobs section), continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^ {4}(torchrun .*?)(?<!\\)$", text, flags=re.M | re.S)
    assert m, "README.md has no indented torchrun command"
    return shlex.split(m.group(1).replace("\\\n", " "))


def with_options(cmd: list[str], **values: str) -> list[str]:
    """``cmd`` with the values of its options --a-b replaced (each must be there)."""
    out = list(cmd)
    for key, value in values.items():
        opt = "--" + key.replace("_", "-")
        assert opt in out, f"{opt} missing from {shlex.join(cmd)}"
        out[out.index(opt) + 1] = value
    return out


def torchrun(cmd: list[str], **popen) -> subprocess.Popen:
    # torchrun is the venv's console script next to this Python; the README calls it by name.
    cmd = [str(Path(sys.executable).parent / "torchrun")] + cmd[1:]
    return subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def model_state(exp: Path) -> dict:
    return torch.load(exp / "fold01" / "checkpoint.pt", weights_only=True)


def test_ranks_split_every_batch_and_deal_out_evaluation_batches():
    durations = [0.5 + 0.1 * (i % 7) for i in range(13)]
    one = BatchSampler(durations, 4, seed=2)
    ranks = [BatchSampler(durations, 4, seed=2, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        whole = one.epoch_batches(epoch)
        shards = [r.epoch_batches(epoch) for r in ranks]
        assert len(shards[0]) == len(shards[1]) == len(whole)  # every rank takes every step
        sizes = [r.shard_sizes(epoch) for r in ranks]
        for i, b in enumerate(whole):
            real = [shards[r][i][:sizes[r][i][0]] for r in (0, 1)]
            assert sorted(real[0] + real[1]) == sorted(b) and sizes[0][i][1] == len(b)
            if sizes[1][i][0] == 0:  # a batch of one: rank 1 takes a stand-in that counts 0
                assert len(b) == 1 and shards[1][i] == b
    assert any(s == (0, 1) for s in ranks[1].shard_sizes(0) + ranks[1].shard_sizes(1))  # 13 = 3 x 4 + 1
    assert term_weights(0, 1, 2, "sum") == (0.0, 0.0)
    assert term_weights(3, 4, 2, "sum") == (1.5, 2.0) and term_weights(1, 4, 2, "mean") == (0.5, 0.5)
    # Evaluation: whole batches, dealt out; together exactly the single process's.
    evals = [BatchSampler(durations, 4, shuffle=False, rank=r, world_size=2, distribute="round_robin")
             for r in (0, 1)]
    dealt = evals[0].epoch_batches(0) + evals[1].epoch_batches(0)
    assert sorted(map(tuple, dealt)) == sorted(map(tuple, BatchSampler(durations, 4, shuffle=False).epoch_batches(0)))


def test_readme_torchrun_line_trains_like_one_process_on_the_same_batches(fold, tiny_config, tmp_path):  # noqa: F811
    """Two gloo ranks, each with half of every batch, end where one process ends: same steps, weights, metrics."""
    folds, tokens = fold
    n_train = len(read_table(folds / "fold01" / "train" / "utt2spk"))
    # A batch size whose last batch has one utterance: one rank then gets a stand-in that must weigh nothing.
    batch = next((b for b in range(3, 8) if n_train % b == 1), 4)
    # Adam turns the rounding noise of gradients that are 0 in exact arithmetic (the key bias, which the
    # softmax ignores) into lr-sized steps; an eps above that noise keeps those steps small.
    config = tiny_config(train={"epochs": 2}, data={"batch_size": batch}, loss={"ctc_reduction": "sum"},
                         optim={"lr": 1e-3, "eps": 1e-4})
    common = dict(config=str(config), folds_dir=str(folds), fold="1", token_list=str(tokens))
    line = readme_torchrun_line()
    assert line[:5] == ["torchrun", "--standalone", "--nproc_per_node", "2", "-m"] and line[5] == "mtlser.train"
    proc = torchrun(with_options(line, exp_dir=str(tmp_path / "ddp"), **common))
    # Meanwhile the same fold in one process, here.
    Trainer(load_config(config), folds / "fold01", read_token_list(tokens), tmp_path / "one" / "fold01").fit()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "torchrun: 2 processes" in (tmp_path / "ddp" / "fold01" / "train.log").read_text()

    ddp, one = model_state(tmp_path / "ddp"), model_state(tmp_path / "one")
    assert ddp["step"] == one["step"] == 2 * -(-n_train // batch)  # the same number of optimizer steps
    for k, v in one["model"].items():
        torch.testing.assert_close(ddp["model"][k], v, atol=2e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")
    # Statistics and validation metrics summed over the ranks: those of the whole batches / valid set.
    for h_ddp, h_one in zip(json.loads(ddp["history"]), json.loads(one["history"])):
        for key in ("valid_wa", "valid_ua", "valid_loss", "train_loss", "train_loss_ce", "train_loss_ctc"):
            assert h_ddp[key] == pytest.approx(h_one[key], rel=1e-4, abs=1e-5), key
    # Rank 0 alone wrote the fold's files, with one log.
    assert (tmp_path / "ddp" / "fold01" / "best.safetensors").is_file()


def test_resume_under_torchrun_restores_every_ranks_rng(fold, tiny_config, tmp_path):  # noqa: F811
    """With dropout, a torchrun fold stopped after epoch 2 (train.stop_after_epoch, as a preemption would) and
    resumed ends bit-identical to the uninterrupted run, and every run exits cleanly."""
    folds, tokens = fold
    config = tiny_config(train={"epochs": 4}, data={"batch_size": 2},
                         backbone={"dropout": 0.1, "attention_dropout": 0.1})
    args = ["--config", str(config), "--folds-dir", str(folds), "--fold", "1", "--token-list", str(tokens)]
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "mtlser.train", *args]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    runs = [torchrun(cmd + ["--exp-dir", str(straight)]),
            torchrun(cmd + ["--exp-dir", str(resumed), "--train.stop_after_epoch", "2"])]
    for proc in runs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    assert "train.stop_after_epoch 2: stopping after epoch 2 of 4" in err
    state = model_state(resumed)
    assert state["epoch"] == 2 and not state["finished"]
    ranks = state["rng_ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # each rank its own stream

    proc = torchrun(cmd + ["--exp-dir", str(resumed)])
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "after epoch 2" in err
    a, b = model_state(straight), model_state(resumed)
    assert a["epoch"] == b["epoch"] == 4 and a["finished"] and b["finished"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"parameter {k} differs after resume under torchrun"
    assert json.loads(a["best"]) == json.loads(b["best"])
