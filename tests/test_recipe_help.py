"""--help of a recipe shows that recipe's defaults and names it (not the template's)."""

import subprocess
from pathlib import Path

MINI = Path(__file__).resolve().parents[1] / "egs" / "mini"


def _help(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["./ser.sh", *args], cwd=MINI, capture_output=True, text=True, timeout=60)


def test_help_after_the_recipe_defaults_shows_them():
    # what egs/mini/run.sh passes before the user's --help
    r = _help("--train-config", "conf/train_mini.yaml", "--nj", "2", "--ngpu", "0",
              "--slurm-conf", "conf/slurm_mini.conf", "--help")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Usage: egs/mini/run.sh [options]   (recipe egs/mini; the defaults shown are its own)"
    assert "(0 data, 1 tokens, 2 folds, 3 train, 4 infer, 5 score, 6 pack; default 0..6)" in lines[1]
    assert "  --ngpu N                   GPUs per training job; N > 1: torchrun, N processes per fold (default 0)" \
        in lines
    assert "  --train-config FILE        experiment YAML (default conf/train_mini.yaml)" in lines


def test_help_anywhere_on_the_line_and_stage_defaults():
    r = _help("-h", "--stage", "3")
    assert r.returncode == 0, r.stderr
    assert "default 3..6)" in r.stdout.splitlines()[1]
