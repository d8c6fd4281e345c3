"""Later stages find what stage 3 made: exp/<dir>/recipe_options.json, read back by stages 4-6 run alone.

Through the command line (ser.sh in a recipe dir made as a user makes one). The end-to-end test trains one
fold for one epoch; the others build the experiment dirs' records with the recorder stage 3 calls, since
training is not their point.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import mtlser

from tests.test_recipe import make_recipe, ser

RECORD = ["--protocol", "loso", "--valid", "share", "--emo-tag", "true", "--nbpe", "100",
          "--train-config", "conf/train_mini.yaml", "--lambdas", "", "--ctc-reduction", "", "--seeds", ""]


def record(recipe: Path, exp_dir: str, *opts: str, base: list[str] = RECORD) -> None:
    """What stage 3 writes into an experiment dir before training it."""
    r = subprocess.run([sys.executable, "-m", "mtlser.recipe", "record", "--exp-dir", exp_dir, *base, *opts],
                       cwd=recipe, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stderr[-2000:]
    return r.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_stages_4_to_6_alone_find_the_char_experiment_stage_3_made(tmp_path):
    recipe = make_recipe(tmp_path / "egs" / "mycorpus")
    r = ser(recipe, "--stage", "0", "--stop-stage", "3", "--train-config", "conf/train_mini.yaml",
            "--local-data-opts", "--sessions 2 --utts-per-speaker 6", "--token-type", "char", "--folds", "1",
            "--train-opts", "--train.epochs 1")
    assert r.returncode == 0, r.stderr[-3000:]
    exp = recipe / "exp" / "train_mini_loso_char_emo"
    options = json.loads((exp / "recipe_options.json").read_text())["options"]
    assert (options["token_type"], options["folds"], options["tag"]) == ("char", "1", "train_mini_loso_char_emo")
    assert options["train_config"] == "conf/train_mini.yaml" and options["train_opts"].split() == [
        "--train.epochs", "1"]

    # Neither --token-type, --train-config nor --folds: the recorded ones (only fold 1 was trained).
    r = ser(recipe, "--stage", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("stage 4 runs exp/train_mini_loso_char_emo with the options stage 3 recorded (recipe_options.json): "
            "--token-type char --train-config conf/train_mini.yaml --folds 1") in r.stderr
    assert (exp / "fold01" / "decode_test" / "result.json").is_file() and not (exp / "fold02").exists()
    assert json.loads((exp / "results.json").read_text())["num_folds"] == 1
    # One fold: no ensemble; the wheel of this mtlser beside the pack (issue 19.5).
    assert sorted(p.name for p in (exp / "packed").iterdir()) == [
        "fold01.zip", f"mtlser-{mtlser.__version__}-py3-none-any.whl"]
    assert not (recipe / "exp" / "train_mini_loso").exists()

    # An option given that the only experiment was not trained with is named, not silently replaced.
    r = ser(recipe, "--stage", "6", "--token-type", "phncls")
    assert error_line(r) == (
        "ERROR: stage 6: no experiment in exp/ was trained with --token-type phncls; exp/ has "
        "train_mini_loso_char_emo (--token-type char): pass the options of one (or its --tag NAME), or run stage 3 "
        "with yours first")


def test_two_experiments_are_listed_with_the_flag_that_selects_one(tmp_path):
    recipe = make_recipe(tmp_path / "egs" / "x")
    record(recipe, "exp/train_mini_loso", "--token-type", "phncls", "--tag", "", "--folds", "1,2")
    record(recipe, "exp/train_mini_loso_char_emo", "--token-type", "char", "--tag", "", "--folds", "1")
    r = ser(recipe, "--stage", "5")
    assert error_line(r) == (
        "ERROR: stage 5: 2 experiments in exp/ fit the options given; select one with --tag NAME (or the options "
        "shown): train_mini_loso (--token-type phncls --folds '1 2'), train_mini_loso_char_emo (--token-type char "
        "--folds 1)")

    # --tag NAME selects one; stage 5 then asks for stage 4, never for an option run.sh does not have.
    r = ser(recipe, "--stage", "5", "--tag", "train_mini_loso_char_emo")
    assert error_line(r) == ("ERROR: stage 5: exp/train_mini_loso_char_emo/fold01/decode_test is not decoded "
                             "(no utt2emo_hyp); run stage 4 first")
    # So does an option given; an explicit --folds wins over the recorded ones.
    r = ser(recipe, "--stage", "5", "--token-type", "phncls")
    assert error_line(r) == ("ERROR: stage 5: exp/train_mini_loso/fold01/decode_test is not decoded "
                             "(no utt2emo_hyp); run stage 4 first")
    r = ser(recipe, "--stage", "5", "--token-type", "phncls", "--folds", "2")
    assert error_line(r) == ("ERROR: stage 5: exp/train_mini_loso/fold02/decode_test is not decoded "
                             "(no utt2emo_hyp); run stage 4 first")
    r = ser(recipe, "--stage", "4", "--token-type", "char")
    assert error_line(r) == ("ERROR: stage 4: exp/train_mini_loso_char_emo/fold01 has no trained model "
                             "(model.yaml); run stage 3 first (folds: 1)")
    r = ser(recipe, "--stage", "6", "--token-type", "bpe")
    assert error_line(r) == (
        "ERROR: stage 6: no experiment in exp/ was trained with --token-type bpe; exp/ has train_mini_loso "
        "(--token-type phncls), train_mini_loso_char_emo (--token-type char): pass the options of one (or its "
        "--tag NAME), or run stage 3 with yours first")


def test_the_recipes_defaults_are_not_options_given(tmp_path):
    """A recipe's run.sh passes its defaults before "--": an experiment trained with another config is found."""
    recipe = make_recipe(tmp_path / "egs" / "x")
    record(recipe, "exp/train_mtl_loso", "--train-config", "conf/train_mtl.yaml", "--token-type", "phncls",
           "--tag", "", "--folds", "1")
    r = ser(recipe, "--train-config", "conf/train_mini.yaml", "--", "--stage", "5")
    assert error_line(r) == ("ERROR: stage 5: exp/train_mtl_loso/fold01/decode_test is not decoded "
                             "(no utt2emo_hyp); run stage 4 first")
    assert ("stage 5 runs exp/train_mtl_loso with the options stage 3 recorded (recipe_options.json): "
            "--train-config conf/train_mtl.yaml --folds 1") in r.stderr
    r = ser(recipe, "--stage", "5", "--train-config", "conf/train_mini.yaml")
    assert "no experiment in exp/ was trained with --train-config conf/train_mini.yaml" in error_line(r)


def test_stage_3_adds_the_folds_it_trains_to_the_record(tmp_path):
    recipe = make_recipe(tmp_path / "egs" / "x")
    record(recipe, "exp/t", "--token-type", "phncls", "--tag", "t", "--folds", "2")
    record(recipe, "exp/t", "--token-type", "phncls", "--tag", "t", "--folds", "1")
    assert json.loads((recipe / "exp/t/recipe_options.json").read_text())["options"]["folds"] == "1 2"
    # Other options under the same --tag: a new record, the old folds are not this run's.
    record(recipe, "exp/t", "--token-type", "char", "--tag", "t", "--folds", "3")
    assert json.loads((recipe / "exp/t/recipe_options.json").read_text())["options"]["folds"] == "3"


def test_an_experiment_of_the_options_without_a_record_still_counts(tmp_path):
    """Experiments trained before records were kept: the one the options name is a candidate of its own."""
    recipe = make_recipe(tmp_path / "egs" / "x")
    (recipe / "exp" / "train_mini_loso" / "fold01").mkdir(parents=True)
    r = ser(recipe, "--stage", "6", "--train-config", "conf/train_mini.yaml")  # no record at all: as before
    assert error_line(r) == ("ERROR: stage 6: exp/train_mini_loso has no fold models (foldNN/model.yaml); "
                             "run stage 3 first")
    record(recipe, "exp/train_mini_loso_char_emo", "--token-type", "char", "--tag", "", "--folds", "1")
    r = ser(recipe, "--stage", "6", "--train-config", "conf/train_mini.yaml")
    assert error_line(r) == (
        "ERROR: stage 6: 2 experiments in exp/ fit the options given; select one with --tag NAME (or the options "
        "shown): train_mini_loso_char_emo (--token-type char --folds 1), train_mini_loso (not recorded: trained before "
        "recipe_options.json was kept)")


def test_a_broken_record_names_the_file_and_the_way_out(tmp_path):
    recipe = make_recipe(tmp_path / "egs" / "x")
    (recipe / "exp" / "t").mkdir(parents=True)
    (recipe / "exp" / "t" / "recipe_options.json").write_text('{"options": ')
    r = ser(recipe, "--stage", "6")
    assert error_line(r) == ("ERROR: exp/t/recipe_options.json: not JSON (Expecting value: line 1 column 13 (char "
                             "12)); delete it and rerun stage 3 (training resumes, nothing is lost)")


def test_a_sweeps_experiments_are_one_run(tmp_path):
    """The experiment dirs of one stage 3 call (one per lambda) are one experiment to select, not several."""
    recipe = make_recipe(tmp_path / "egs" / "x")
    sweep = list(RECORD)
    sweep[sweep.index("--lambdas") + 1] = "0 0.1"
    for lam in ("0", "0.1"):
        record(recipe, f"exp/s_lambda{lam}", "--token-type", "phncls", "--tag", "s", "--folds", "1",
               "--exp-opts", f"--loss.lambda {lam}", base=sweep)
    record(recipe, "exp/other", "--token-type", "phncls", "--tag", "other", "--folds", "1")
    r = ser(recipe, "--stage", "5", "--lambdas", "0 0.1")
    assert "stage 5 runs exp/s_lambda0 exp/s_lambda0.1 with the options stage 3 recorded" in r.stderr
    assert error_line(r) == ("ERROR: stage 5: exp/s_lambda0/fold01/decode_test is not decoded (no utt2emo_hyp); "
                             "run stage 4 first")
