"""Options are checked where they enter, before anything is written, and each error names the option
(and, for a config field, where it came from: the YAML file or --train-opts)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mtlser.config import load_config
from mtlser.utils import MtlserError
from tests.test_bad_input import cli
from tests.test_config import leaf_fields
from tests.test_recipe import make_recipe, ser

ROOT = Path(__file__).resolve().parents[1]
STAGES = "a stage number 0-6 (0 data, 1 tokens, 2 folds, 3 train, 4 infer, 5 score, 6 pack)"
SHARE = "expected a share of each training speaker's utterances in (0, 1), e.g. 0.1 (no valid set: --valid none)"

REFUSED = [
    (["--stage", "abc"], f"ERROR: --stage abc: expected {STAGES}"),
    (["--stage", "-1"], f"ERROR: --stage -1: expected {STAGES}"),
    (["--stop-stage", "7"], f"ERROR: --stop-stage 7: expected {STAGES}"),
    (["--stage", "5", "--stop-stage", "2"],
     "ERROR: --stage 5 --stop-stage 2: the first stage comes after the last; expected --stage <= --stop-stage"),
    (["--valid-share", "1.5"], f"ERROR: --valid-share 1.5: {SHARE}"),
    (["--valid-share", "0"], f"ERROR: --valid-share 0: {SHARE}"),
    (["--valid-share", "nan"], f"ERROR: --valid-share nan: {SHARE}"),
    (["--nj", "0"], "ERROR: --nj 0: expected a number of jobs at once >= 1"),
    (["--ngpu", "one"], "ERROR: --ngpu one: expected a number of GPUs (0, 1, 2, ...)"),
    (["--split-seed", "-3"], "ERROR: --split-seed -3: expected a seed >= 0"),
    (["--lambdas", "0 nan"], "ERROR: --lambdas: loss.lambda = nan; expected a finite number >= 0"),
    (["--train-opts", "--loss.lambda nan"], "ERROR: --train-opts: loss.lambda = nan; expected a finite number >= 0"),
    (["--train-opts", "--optim.lr -1"], "ERROR: --train-opts: optim.lr = -1.0; expected a finite number > 0"),
    (["--train-opts", "--optim.lr nan"], "ERROR: --train-opts: optim.lr = nan; expected a finite number > 0"),
    (["--train-opts", "--train.epoch 2"],
     "ERROR: --train-opts: unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
    (["--tag", "--stage", "3"], "./ser.sh: option --tag needs a value, got the option --stage (give --tag its value "
                                "first)"),
    (["--folds", "--stage=3"], "./ser.sh: option --folds needs a value, got the option --stage=3 (give --folds its "
                               "value first)"),
    (["--train-opts", "--stage", "3"], "./ser.sh: option --train-opts needs a value, got the option --stage (give "
                                       "--train-opts its value first)"),
]


@pytest.mark.parametrize("args,message", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_recipe_refuses_a_bad_option_before_stage_0_writes(tmp_path, args, message):
    recipe = make_recipe(tmp_path / "egs" / "x")
    r = ser(recipe, "--train-config", "conf/train_mini.yaml", *args)
    assert r.returncode != 0
    assert message in r.stderr.splitlines(), r.stderr[-2000:]
    assert "Successfully finished" not in r.stderr and "Stage 0" not in r.stderr
    # Nothing written: no data dir, no corpus, no experiment.
    assert sorted(p.name for p in recipe.iterdir()) == ["cmd.sh", "conf", "local", "path.sh", "ser.sh", "utils"]


def test_a_bad_field_of_the_yaml_is_named_with_the_file(tmp_path):
    recipe = make_recipe(tmp_path / "egs" / "x")
    (recipe / "bad.yaml").write_text("train:\n  epoch: 2\n")
    r = ser(recipe, "--train-config", "bad.yaml", "--train-opts", "--train.epochs 1")
    assert r.returncode != 0
    assert "ERROR: bad.yaml: unknown key 'train.epoch' (did you mean 'train.epochs'?)" in r.stderr.splitlines()
    assert not (recipe / "data").exists()


def test_stage_3_checks_the_config_once_before_any_job_starts(tmp_path):
    """#19.1: a typo of --train-opts is named at the terminal with its source, and no job (no log) starts."""
    recipe = make_recipe(tmp_path / "egs" / "x")
    (recipe / "data" / "loso" / "fold01").mkdir(parents=True)
    r = ser(recipe, "--stage", "3", "--stop-stage", "3", "--train-config", "conf/train_mini.yaml",
            "--train-opts", "--train.epoch 2")
    assert r.returncode != 0
    assert r.stderr.splitlines()[-1] == "ERROR: --train-opts: unknown key 'train.epoch' (did you mean 'train.epochs'?)"
    assert not (recipe / "exp").exists()
    # The recipe's own overrides (a lambda of the sweep) pass the same check.
    r = ser(recipe, "--stage", "3", "--stop-stage", "3", "--train-config", "conf/train_mini.yaml",
            "--lambdas", "0 0.1", "--train-opts", "--optim.lr 0")
    assert r.stderr.splitlines()[-1] == "ERROR: --train-opts: optim.lr = 0.0; expected a finite number > 0"
    assert not (recipe / "exp").exists()


def test_train_check_config_names_each_source(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  lambda: .nan\n")
    r = cli("mtlser.train", "--check-config", "--config", str(bad), check_ok=False)
    assert r.stderr.splitlines() == [f"ERROR: {bad}: loss.lambda = nan; expected a finite number >= 0"]
    r = cli("mtlser.train", "--check-config", "--config", "conf/train_mini.yaml", "--train-opts", "--train.epochs 2",
            "--optim.weight_decay", "-1e-5", check_ok=False)
    assert r.stderr.splitlines() == ["ERROR: the command line: optim.weight_decay = -1e-05; expected a finite "
                                     "number >= 0"]
    cli("mtlser.train", "--check-config", "--config", "conf/train_mini.yaml", "--train-opts", "--train.epochs 2",
        check_ok=True)


def test_every_number_of_the_config_has_its_range_beside_its_doc():
    numbers = [f for f, tp in leaf_fields() if tp in (int, float)]
    assert len(numbers) > 25
    assert [f.name for f in numbers if f.metadata.get("check") is None] == []
    for f in numbers:  # every default is in its own range
        assert f.metadata["check"](f.default) is None, f.name


@pytest.mark.parametrize("key,value,message", [
    ("loss.lambda", "nan", "loss.lambda = nan; expected a finite number >= 0"),
    ("loss.lambda", ".inf", "loss.lambda = inf; expected a finite number >= 0"),
    ("optim.lr", "-1", "optim.lr = -1.0; expected a finite number > 0"),
    ("optim.weight_decay", "nan", "optim.weight_decay = nan; expected a finite number >= 0"),
    ("optim.betas", "[0.9, 1.5]", "optim.betas = [0.9, 1.5]; expected a list of 2 numbers, each a probability in "
                                  "[0, 1)"),
    ("loss.class_weights", "[1, .nan]", "loss.class_weights = [1, nan]; expected a list of numbers, each a finite "
                                        "number >= 0"),
    ("train.epochs", "0", "train.epochs = 0; expected >= 1"),
    ("data.batch_size", "0", "data.batch_size = 0; expected >= 1"),
    ("backbone.mask_time_prob", "1.5", "backbone.mask_time_prob = 1.5; expected a probability in [0, 1)"),
    ("data.pad_ladder", "0.5", "data.pad_ladder = 0.5; expected a finite number >= 1"),
])
def test_config_numbers_are_checked_for_range_and_finiteness(key, value, message):
    with pytest.raises(MtlserError) as e:
        load_config(ROOT / "conf" / "train_mini.yaml", [f"--{key}", value], "--train-opts")
    assert str(e.value) == f"--train-opts: {message}"


def test_split_refuses_a_bad_valid_share_before_writing(tmp_path):
    r = cli("mtlser.data.split", "--data-dir", str(tmp_path / "all"), "--out", str(tmp_path / "loso"),
            "--valid-share", "1.5", check_ok=False)
    assert len(r.stderr.splitlines()) == 1 and r.stderr.rstrip().endswith(f"ERROR: --valid-share 1.5: {SHARE}")
    assert not (tmp_path / "loso").exists()


@pytest.mark.parametrize("option,value,message", [
    ("--utts-per-speaker", "-3", "--utts-per-speaker -3: expected a count >= 1"),
    ("--sessions", "0", "--sessions 0: IEMOCAP's layout has 1 to 5 sessions"),
    ("--seed", "-1", "--seed -1: expected a seed >= 0"),
])
def test_mini_corpus_prep_refuses_a_bad_count_before_replacing_the_cached_corpus(tmp_path, option, value, message):
    db = tmp_path / "mini_iemocap"
    (db / "Session1").mkdir(parents=True)
    marker = {"seed": 0, "sessions": 1, "utts_per_speaker": 4}
    (db / "README.mtlser.json").write_text(json.dumps(marker))
    r = cli("mtlser.corpora.mini_corpus", "--out", str(db), "--sessions", "1", "--utts-per-speaker", "4", option,
            value, check_ok=False)
    assert r.stderr.splitlines()[-1].endswith(message), r.stderr
    assert "Traceback" not in r.stderr
    assert (db / "Session1").is_dir() and json.loads((db / "README.mtlser.json").read_text()) == marker


def test_parse_options_never_takes_the_next_option_as_a_value(tmp_path):
    script = tmp_path / "s.sh"
    script.write_text("stage=0\nname=x\nextra_opts=\"\"\n"
                      f". {ROOT}/egs/TEMPLATE/utils/parse_options.sh\n"
                      'echo "$stage|$name|$extra_opts|$#"\n')

    def run(*args):
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True)

    r = run("--name", "--stage", "3")
    assert r.returncode == 1 and r.stderr.splitlines() == [
        f"{script}: option --name needs a value, got the option --stage (give --name its value first)"]
    r = run("--name", "--unknown")  # a value that looks like an option is not a name either
    assert r.returncode == 1 and "option --name needs a value, got the option --unknown" in r.stderr
    r = run("--extra-opts", "--stage")  # options of another command: refused only when it is one of ours
    assert r.returncode == 1 and "option --extra-opts needs a value, got the option --stage" in r.stderr
    # What they are for: options of another command, one (not ours) or several.
    assert run("--extra-opts", "--force", "--stage", "2").stdout == "2|x|--force|0\n"
    assert run("--extra-opts", "--stage 3 --x y", "--name", "n").stdout == "0|n|--stage 3 --x y|0\n"
    assert run("--extra-opts=--force").stdout == "0|x|--force|0\n"


def test_every_bad_field_is_named_with_its_source_and_a_replaced_value_is_not_one(tmp_path):
    from mtlser.config import resolve_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: -1\n  weight_decay: .nan\ntrain:\n  epoch: 3\n")
    with pytest.raises(MtlserError) as e:
        resolve_config(bad, [("--train-opts", ["--optim.lr", "1e-4", "--loss.lambda", "nan"])])
    # optim.lr of the file is replaced by --train-opts: not an error; the others each with their source.
    assert str(e.value) == (f"{bad}: optim.weight_decay = nan; expected a finite number >= 0 | "
                            f"{bad}: unknown key 'train.epoch' (did you mean 'train.epochs'?) | "
                            "--train-opts: loss.lambda = nan; expected a finite number >= 0")
    bad.write_text("optim:\n  lr: -1\n")
    assert resolve_config(bad, [("--train-opts", ["--optim.lr", "1e-4"])]).optim.lr == 1e-4
