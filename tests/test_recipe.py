"""End to end: stages 0-5 of the mini recipe on a cut-down corpus, from a new recipe dir.

The recipe dir is made the way a user makes one for a new corpus: links to the
template, path.sh, cmd.sh, utils and conf, plus the corpus's own local/data.sh
(here the mini corpus's). Then the files each stage writes are checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mtlser.data.datadir import read_table, validate_data_dir

ROOT = Path(__file__).resolve().parents[1]


def make_recipe(dest: Path) -> Path:
    dest.mkdir(parents=True)
    (dest / "local").mkdir()
    for name, target in (("path.sh", ROOT / "path.sh"), ("cmd.sh", ROOT / "egs/TEMPLATE/cmd.sh"),
                         ("utils", ROOT / "egs/TEMPLATE/utils"), ("conf", ROOT / "conf"),
                         ("ser.sh", ROOT / "egs/TEMPLATE/ser.sh")):
        (dest / name).symlink_to(target)
    shutil.copy(ROOT / "egs/mini/local/data.sh", dest / "local/data.sh")
    return dest


def ser(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # path.sh must set up everything itself
    return subprocess.run(["./ser.sh", *args], cwd=recipe, capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_stages_0_to_5(tmp_path):
    recipe = make_recipe(tmp_path / "egs" / "mycorpus")
    common = ["--train-config", "conf/train_mini.yaml", "--nj", "2",
              "--local-data-opts", "--sessions 2 --utts-per-speaker 6",
              "--train-opts", "--train.epochs 2"]
    r = ser(recipe, "--stage", "0", "--stop-stage", "5", *common)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    data = recipe / "data"

    # Stage 0: the Kaldi data dir, keys = IEMOCAP turn names, speakers from the turn's own gender letter.
    dd = validate_data_dir(data / "all")
    for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2emo", "utt2dur"):
        assert (data / "all" / name).is_file()
    utt2spk = dd["utt2spk"]
    assert set(utt2spk.values()) == {"Ses01F", "Ses01M", "Ses02F", "Ses02M"}
    assert all(spk == utt[:5] + utt.split("_")[-1][0] for utt, spk in utt2spk.items())
    assert set(dd["utt2emo"].values()) <= {"ang", "hap", "sad", "neu"}

    # Stage 1: phones, phone classes with emotion tags, the token list.
    tokens = (data / "token_list" / "phncls" / "tokens.txt").read_text().split()
    assert len(tokens) == 25 and tokens[0] == "<blank>"
    phncls = read_table(data / "all" / "text_phncls", allow_empty_value=True)
    idx = {"ang": "0", "hap": "1", "sad": "2", "neu": "3"}
    for utt, seq in phncls.items():
        assert all(t in tokens and t[-1] == idx[dd["utt2emo"][utt]] for t in seq.split())
    assert (data / "all" / "text_phn").is_file()

    # Stage 2: four leave-one-speaker-out folds.
    folds = sorted((data / "loso").glob("fold[0-9]*"))
    assert [f.name for f in folds] == ["fold01", "fold02", "fold03", "fold04"]
    for f in folds:
        test_spk = set(read_table(f / "test" / "utt2spk").values())
        assert len(test_spk) == 1 and not test_spk & set(read_table(f / "train" / "utt2spk").values())

    # Stages 3-5: models, decodes, scores, the aggregate and its pictures.
    exp = recipe / "exp" / "train_mini_loso"
    for f in ("fold01", "fold02", "fold03", "fold04"):
        d = exp / f
        assert (d / "best.safetensors").is_file() and (d / "train.log").is_file()
        dec = d / "decode_test"
        hyp = read_table(dec / "utt2emo_hyp")
        assert set(hyp) == set(read_table(data / "loso" / f / "test" / "utt2emo"))
        result = json.loads((dec / "result.json").read_text())
        assert 0 <= result["wa"] <= 1 and 0 <= result["ua"] <= 1 and result["ctc_ter"] is not None
        assert (dec / "result.txt").read_text().startswith("decode dir:")
    results = json.loads((exp / "results.json").read_text())
    assert results["num_folds"] == 4 and len(results["folds"]) == 4
    assert results["n"] == len(utt2spk)
    report = (exp / "RESULTS.md").read_text()
    assert "## Environments" in report and "|UA|" in report
    for png in ("confusion.png", "fusion_weights.png"):
        assert (exp / png).read_bytes()[:4] == b"\x89PNG"
    assert (exp / "run.sh").is_file() and (exp / "logs" / "train.1.log").is_file()

    # A rerun is cheap and changes nothing: finished folds are not retrained.
    before = (exp / "fold01" / "best.safetensors").stat().st_mtime_ns
    r = ser(recipe, "--stage", "3", "--stop-stage", "5", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (exp / "fold01" / "best.safetensors").stat().st_mtime_ns == before
    assert "training already finished" in (exp / "logs" / "train.1.log").read_text()
    assert json.loads((exp / "results.json").read_text())["ua"] == results["ua"]

    # --ngpu 2: torchrun trains the fold with two processes (gloo on a machine without GPUs).
    r = ser(recipe, "--stage", "3", "--stop-stage", "3", *common, "--ngpu", "2", "--folds", "1", "--tag", "ddp")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torchrun: 2 processes" in (recipe / "exp" / "ddp" / "fold01" / "train.log").read_text()
    assert (recipe / "exp" / "ddp" / "fold01" / "best.safetensors").is_file()


def test_recipe_rejects_unknown_options(tmp_path):
    recipe = make_recipe(tmp_path / "egs" / "x")
    r = ser(recipe, "--stgae", "1")
    assert r.returncode != 0 and "invalid option --stgae" in r.stderr
    r = ser(recipe, "--stage", "1", "extra-positional")
    assert r.returncode != 0 and "unexpected arguments" in r.stderr


def test_failed_job_fails_the_stage(tmp_path):
    """A fold whose training fails makes stage 3 fail, naming the log (no silent partial results)."""
    recipe = make_recipe(tmp_path / "egs" / "x")
    (recipe / "data" / "loso" / "fold01").mkdir(parents=True)  # a fold without train/valid
    (recipe / "data" / "token_list" / "phncls").mkdir(parents=True)
    (recipe / "data" / "token_list" / "phncls" / "tokens.txt").write_text("<blank>\nS0\n")
    r = ser(recipe, "--stage", "3", "--stop-stage", "3", "--train-config", "conf/train_mini.yaml")
    assert r.returncode != 0
    # The job's own error line, beside its log.
    assert "launch: job JOB=1 failed (exit 1): data/loso/fold01/train: missing; run stage 2 (fold splits) first; " \
           "see exp/train_mini_loso/logs/train.1.log" in r.stderr.splitlines()
    log = (recipe / "exp" / "train_mini_loso" / "logs" / "train.1.log").read_text()
    assert "run stage 2" in log and "# Ended (code 1)" in log
