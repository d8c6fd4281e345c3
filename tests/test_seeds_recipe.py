"""End to end: ser.sh --seeds trains one experiment per seed on one split, stage 5 aggregates seeds × folds,
a rerun trains nothing, compare prints its verdict, and without --seeds the experiment is the one it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from mtlser.text.phone_classes import PhoneClassMap, phncls_token_list
from mtlser.text.tokenize import write_token_list
from tests.test_paper_protocol import write_random_phncls


@pytest.fixture
def recipe(make_data_dir, tmp_path):
    """A recipe dir over a 4-speaker corpus with phone-class targets (stages 0-1 done)."""
    from tests.test_recipe import make_recipe

    data = make_data_dir(n_spk=4, n_utt=6, seconds=0.8)
    write_random_phncls(data)
    recipe = make_recipe(tmp_path / "egs" / "x")
    (recipe / "data").mkdir()
    os.symlink(data, recipe / "data" / "all")
    write_token_list(recipe / "data/token_list/phncls/tokens.txt", phncls_token_list(PhoneClassMap.load().classes, 4))
    return recipe


@pytest.mark.slow
def test_seeds_times_folds(recipe, tiny_config):
    from tests.test_recipe import ser

    config = str(tiny_config())  # train.seed 3
    common = ["--train-config", config, "--folds", "1 2", "--train-opts", "--train.epochs 1"]
    r = ser(recipe, "--stage", "2", "--stop-stage", "5", "--seeds", "0 1", *common)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    exp = recipe / "exp"
    for s in (0, 1):
        for f in ("fold01", "fold02"):
            d = exp / f"tiny_loso_seed{s}" / f
            assert (d / "best.safetensors").is_file()
            assert yaml.safe_load((d / "config.yaml").read_text())["train"]["seed"] == s
            # One split for every seed: the fold's data dir is the same one.
            assert (d / "decode_test/data_dir").read_text().strip().endswith(f"data/loso/{f}/test")
        assert json.loads((exp / f"tiny_loso_seed{s}/results.json").read_text())["seed"] == s
    from safetensors.torch import load_file

    w0, w1 = (load_file(str(exp / f"tiny_loso_seed{s}/fold01/best.safetensors")) for s in (0, 1))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # the seed reached the model

    group = exp / "tiny_loso_seeds"
    res = json.loads((group / "results.json").read_text())
    assert (res["num_seeds"], res["num_folds"], len(res["runs"])) == (2, 2, 4)
    assert res["ua_seed_std"] is not None and len(res["ua_ci"]) == 2
    md = (group / "RESULTS.md").read_text()
    assert "|std over seeds|95 % CI|chance|" in md and "t over the 2 seed means (df 1)" in md
    assert "- seeds (train.seed): 0 1, one experiment each" in md
    assert "over seeds x folds -> exp/tiny_loso_seeds/RESULTS.md" in r.stderr

    # The same command again trains nothing.
    before = (exp / "tiny_loso_seed1/fold02/best.safetensors").stat().st_mtime_ns
    r = ser(recipe, "--stage", "3", "--stop-stage", "5", "--seeds", "0 1", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (exp / "tiny_loso_seed1/fold02/best.safetensors").stat().st_mtime_ns == before
    assert json.loads((group / "results.json").read_text())["ua"] == res["ua"]

    # compare on two tags prints the paired verdict.
    out = subprocess.run([sys.executable, "-m", "mtlser.score", "compare", str(exp / "tiny_loso_seed0"),
                          str(exp / "tiny_loso_seed1")], capture_output=True, text=True, cwd=recipe)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("tiny_loso_seed1 − tiny_loso_seed0: WA ") and "over 2 folds × 1 seed" in out.stdout
    assert "seeds differ (0 and 1): paired by fold only" in out.stdout

    # Without --seeds: the experiment as before (its tag, the config's seed); --seeds "3" trains the same model.
    one = ["--train-config", config, "--folds", "1", "--train-opts", "--train.epochs 1"]
    assert ser(recipe, "--stage", "3", "--stop-stage", "5", *one).returncode == 0
    assert ser(recipe, "--stage", "3", "--stop-stage", "5", "--seeds", "3", *one).returncode == 0
    plain, seeded = (json.loads((exp / n / "results.json").read_text()) for n in ("tiny_loso", "tiny_loso_seed3"))
    assert plain["seed"] == 3 and not (exp / "tiny_loso" / "fold02").exists()
    assert [(f["wa"], f["ua"], f["confusion"]) for f in plain["folds"]] == \
        [(f["wa"], f["ua"], f["confusion"]) for f in seeded["folds"]]


@pytest.mark.slow
def test_lambda_sweep_with_seeds(recipe, tiny_config):
    """--lambdas × --seeds: one experiment per (λ, seed), a group per λ, the sweep's table over the groups."""
    from tests.test_recipe import ser

    r = ser(recipe, "--stage", "2", "--stop-stage", "5", "--lambdas", "0 0.1", "--seeds", "0 1", "--folds", "1",
            "--train-config", str(tiny_config()), "--train-opts", "--train.epochs 1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    exp = recipe / "exp"
    for lam in ("0", "0.1"):
        for s in (0, 1):
            cfg = yaml.safe_load((exp / f"tiny_loso_lambda{lam}_seed{s}/fold01/config.yaml").read_text())
            assert cfg["train"]["seed"] == s and cfg["loss"]["lambda"] == float(lam)
        res = json.loads((exp / f"tiny_loso_lambda{lam}_seeds/results.json").read_text())
        assert (res["num_seeds"], res["num_folds"]) == (2, 1)
    table = (exp / "tiny_loso_lambdas.md").read_text()
    assert "# Comparison over 1 fold × 2 seeds, paired with `tiny_loso_lambda0_seeds`" in table
    assert "- tiny_loso_lambda0.1_seeds − tiny_loso_lambda0_seeds: WA " in table
    assert "over 1 fold × 2 seeds" in table and "t over the 2 seed means (df 1)" in table
    assert "|tiny_loso_lambda0_seeds|0|— (no CTC)|" in table and "|tiny_loso_lambda0.1_seeds|0.1|phncls" in table
    assert "tiny_loso_lambda0.1_seeds − tiny_loso_lambda0_seeds: WA " in r.stdout
