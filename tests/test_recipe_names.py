"""ser.sh's names come from mtlser.recipe: the folds dir per valid choice, the token set and list, the
experiment tags of a run and of a lambda sweep, and the folds to run, as shell assignments bash evals."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mtlser.recipe.names import fold_numbers, run_names
from mtlser.utils import MtlserError


def test_default_run_keeps_the_plain_names():
    n = run_names("loso", "share", "phncls", "conf/train_mtl.yaml")
    assert (n.folds_dir, n.token_set, n.token_list) == ("data/loso", "phncls", "data/token_list/phncls/tokens.txt")
    assert n.tag == "train_mtl_loso" and n.valid_opts == "" and n.sweep_table == ""
    assert [(e.dir, e.opts) for e in n.experiments] == [("exp/train_mtl_loso", "")]


def test_valid_choice_names_the_folds_and_the_tag():
    assert run_names("loso-session", "session-mate", "phncls", "c.yaml").folds_dir == "data/loso-session_sessionmate"
    n = run_names("loso", "none", "phncls", "c.yaml")
    assert n.folds_dir == "data/loso_novalid" and n.tag == "c_loso_novalid"
    assert n.valid_opts == "--train.model_selection last --train.patience 0"
    with pytest.raises(MtlserError, match="--valid both: expected share, session-mate, none"):
        run_names("loso", "both", "phncls", "c.yaml")


def test_token_sets_other_than_the_papers_are_in_the_tag():
    n = run_names("kfold5", "share", "bpe", "conf/x.yaml", emo_tag=False, nbpe=50)
    assert n.token_set == "bpe50" and n.tag == "x_kfold5_bpe50"
    assert n.token_list == "data/kfold5/foldNN/token_list/bpe50/tokens.txt"  # the trainer replaces foldNN
    assert n.final_token_list == "data/kfold5/final/token_list/bpe50/tokens.txt"
    assert run_names("loso", "share", "phncls", "c.yaml", emo_tag=False).tag == "c_loso_phncls_notag"
    assert run_names("loso", "share", "phn", "c.yaml", tag="mine").tag == "mine"  # a given tag is kept


def test_lambda_sweep_shares_lambda_zero_across_reductions():
    n = run_names("loso", "none", "phncls", "conf/tiny.yaml", lambdas="0 0.0 0.1", ctc_reduction="mean")
    assert n.tag == "tiny_loso_novalid_ctcmean"
    assert [(e.dir, e.opts) for e in n.experiments] == [
        ("exp/tiny_loso_novalid_lambda0", "--loss.lambda 0"),
        ("exp/tiny_loso_novalid_lambda0.0", "--loss.lambda 0.0"),
        ("exp/tiny_loso_novalid_ctcmean_lambda0.1", "--loss.lambda 0.1 --loss.ctc_reduction mean")]
    assert n.sweep_table == "exp/tiny_loso_novalid_ctcmean_lambdas.md"
    with pytest.raises(MtlserError, match="^--lambdas: loss.lambda = 'x'; expected a number$"):
        run_names("loso", "share", "phncls", "c.yaml", lambdas="0 x")
    # A lambda is checked as the config's loss.lambda is: finite, >= 0.
    for bad in ("nan", "-1", ".inf"):
        with pytest.raises(MtlserError, match="^--lambdas: loss.lambda = .*; expected a finite number >= 0$"):
            run_names("loso", "share", "phncls", "c.yaml", lambdas=f"0 {bad}")


def test_seeds_give_one_experiment_per_seed_and_a_group_each():
    n = run_names("loso", "share", "phncls", "conf/tiny.yaml", seeds="0 1")
    assert [(e.dir, e.opts, e.group) for e in n.experiments] == [
        ("exp/tiny_loso_seed0", "--train.seed 0", "exp/tiny_loso_seeds"),
        ("exp/tiny_loso_seed1", "--train.seed 1", "exp/tiny_loso_seeds")]
    assert n.seed_groups == ["exp/tiny_loso_seeds"] and n.sweep_dirs == [] and n.folds_dir == "data/loso"
    n = run_names("loso", "share", "phncls", "conf/tiny.yaml", lambdas="0 0.1", seeds="2 3")
    assert [e.dir for e in n.experiments] == ["exp/tiny_loso_lambda0_seed2", "exp/tiny_loso_lambda0_seed3",
                                              "exp/tiny_loso_lambda0.1_seed2", "exp/tiny_loso_lambda0.1_seed3"]
    assert n.experiments[3].opts == "--loss.lambda 0.1 --train.seed 3"
    assert n.sweep_dirs == n.seed_groups == ["exp/tiny_loso_lambda0_seeds", "exp/tiny_loso_lambda0.1_seeds"]
    assert run_names("loso", "share", "phncls", "c.yaml", lambdas="0 1").sweep_dirs == ["exp/c_loso_lambda0",
                                                                                        "exp/c_loso_lambda1"]
    with pytest.raises(MtlserError, match="^--seeds: train.seed = 'a'; expected an integer$"):
        run_names("loso", "share", "phncls", "c.yaml", seeds="0 a")
    with pytest.raises(MtlserError, match="^--seeds: train.seed = -1; expected >= 0$"):
        run_names("loso", "share", "phncls", "c.yaml", seeds="0 -1")


def test_folds_given_or_counted(tmp_path):
    assert fold_numbers(tmp_path, "2 5") == [2, 5]
    with pytest.raises(MtlserError, match="no folds in .*: run the folds stage first"):
        fold_numbers(tmp_path)
    for n in (1, 2, 3):
        (tmp_path / f"fold{n:02d}").mkdir()
    (tmp_path / "final").mkdir()
    assert fold_numbers(tmp_path) == [1, 2, 3]


def test_bash_evals_the_assignments(tmp_path):
    """What ser.sh does with the command's output: values with spaces stay one word, arrays stay arrays."""
    (tmp_path / "fold01").mkdir()
    script = (f'eval "$({sys.executable} -m mtlser.recipe names --protocol loso --valid none --token-type phncls '
              '--train-config "conf/my cfg.yaml" --lambdas "0 1" --ctc-reduction sum)"\n'
              f'eval "$({sys.executable} -m mtlser.recipe folds --folds-dir {tmp_path})"\n'
              'printf "%s\\n" "${#exp_dirs[@]}" "${exp_dirs[1]}" "${exp_opts[1]}" "${valid_opts}" '
              '"${fold_args}" "${num_folds}" "${fold_names[@]}"\n')
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["2", "exp/my cfg_loso_novalid_ctcsum_lambda1",
                                     "--loss.lambda 1 --loss.ctc_reduction sum",
                                     "--train.model_selection last --train.patience 0", "1", "1", "fold01"]
    bad = subprocess.run([sys.executable, "-m", "mtlser.recipe", "names", "--protocol", "loso", "--valid", "x",
                          "--token-type", "phncls", "--train-config", "c.yaml"], capture_output=True, text=True)
    assert bad.returncode == 1 and "--valid x: expected" in bad.stderr and bad.stdout == ""
