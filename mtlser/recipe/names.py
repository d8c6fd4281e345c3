"""Every name of a recipe run, from its options: folds dir, token set and list, experiments, folds.

    run_names(protocol="loso", valid="none", token_type="phncls", train_config="conf/tiny.yaml",
              lambdas="0 0.1", ctc_reduction="mean")
    -> folds_dir data/loso_novalid, token_set phncls, tag tiny_loso_novalid_ctcmean,
       experiments exp/tiny_loso_novalid_lambda0 (--loss.lambda 0)
                   exp/tiny_loso_novalid_ctcmean_lambda0.1 (--loss.lambda 0.1 --loss.ctc_reduction mean),
       sweep_table exp/tiny_loso_novalid_ctcmean_lambdas.md
    run_names(..., seeds="0 1")
    -> each experiment once per model seed (exp/<name>_seed0 with --train.seed 0, ...), all on the one
       split, and a seed group per experiment (exp/<name>_seeds: stage 5's figures over seeds × folds);
       the sweep table compares the groups

Each valid choice has its own folds dir (the default keeps the plain name), so experiments of the
protocols live side by side; ``--valid none`` (the paper) also makes the trainer report the last epoch.
A lambda of 0 has no CTC term, so its experiment is shared by the sweeps of every CTC reduction.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from mtlser.config import check_value
from mtlser.data.fixed_split import PROTOCOL as FIXED
from mtlser.data.fold_names import FINAL, FOLD_PLACEHOLDER, TEST_SET, fold_dirs, fold_name, test_sets
from mtlser.expdir import DECODE_PREFIX, DECODE_TEST
from mtlser.text.tokenize import FOLD_TOKEN_LIST_DIR, token_list_path, token_set_name
from mtlser.utils import MtlserError

#: The folds dir's (and the experiment tag's) suffix per stage 2 valid choice.
VALID_SUFFIXES = {"share": "", "session-mate": "_sessionmate", "none": "_novalid"}
#: Without a valid set there is no epoch to select: the last one is reported (the paper).
NO_VALID_OPTS = "--train.model_selection last --train.patience 0"
#: The token set that needs no mention in a tag: the paper's tagged phoneme classes.
DEFAULT_TOKEN_SET = "phncls"
#: --seeds: an experiment's seed N is exp/<name>_seed<N>; its seed group exp/<name>_seeds.
SEED_SUFFIX = "_seed"
SEED_GROUP_SUFFIX = "_seeds"


@dataclass
class Experiment:
    dir: str
    opts: str  # config overrides of this experiment (lambda, CTC reduction, seed), after the run's --train-opts
    group: str = ""  # its seed group's dir (--seeds), else ""


@dataclass
class RunNames:
    folds_dir: str
    token_set: str
    token_list_dir: str    # stage 1's token lists
    token_list: str        # foldNN (bpe) stands for the fold; the trainer replaces it
    final_token_list: str  # the token list of the final model (all speakers: folds_dir/final)
    valid_opts: str        # config overrides the valid choice implies
    tag: str
    experiments: list[Experiment] = field(default_factory=list)
    base_tag: str = ""     # the --tag that gives these names (tag before the suffixes the options add)
    sweep_table: str = ""  # the lambda sweep's comparison, "" without a sweep
    seed_groups: list[str] = field(default_factory=list)  # --seeds: one dir per experiment of the options
    sweep_dirs: list[str] = field(default_factory=list)  # what the sweep table compares: experiments or groups


def is_zero(value: str) -> bool:
    """A lambda of --lambdas, checked as the config's loss.lambda is (a finite number >= 0): is it 0?"""
    return check_value("loss.lambda", value, "--lambdas") == 0


def seed_dir(exp_dir: str, seed: str) -> str:
    return f"{exp_dir}{SEED_SUFFIX}{seed}"


def seed_group_dir(exp_dir: str) -> str:
    return f"{exp_dir}{SEED_GROUP_SUFFIX}"


def seed_group_of(exp_dir: str | Path) -> Path | None:
    """The seed group an experiment is one seed of (the group's results.json lists it), else None."""
    import json

    from mtlser import expdir

    exp_dir = Path(exp_dir)
    base, sep, _ = exp_dir.name.rpartition(SEED_SUFFIX)
    if not sep or not base:
        return None
    group = Path(seed_group_dir(str(exp_dir.parent / base)))
    try:
        members = json.loads((group / expdir.RESULTS_JSON).read_text()).get("members") or []
    except (OSError, ValueError):
        return None
    return group if any(Path(d).resolve() == exp_dir.resolve() for d in members) else None


def with_seeds(experiments: list[Experiment], seeds: str) -> tuple[list[Experiment], list[str]]:
    """Each experiment once per seed (the model's seed: --train.seed; the split stays), and their groups."""
    out, groups = [], []
    for e in experiments:
        group = seed_group_dir(e.dir)
        groups.append(group)
        for seed in seeds.split():
            check_value("train.seed", seed, "--seeds")  # as the config's train.seed: an integer >= 0
            out.append(Experiment(seed_dir(e.dir, seed), f"{e.opts} --train.seed {seed}".strip(), group))
    return out, groups


def run_names(protocol: str, valid: str, token_type: str, train_config: str, emo_tag: bool = True,
              nbpe: int = 100, tag: str = "", lambdas: str = "", ctc_reduction: str = "",
              data: str = "data", exp: str = "exp", seeds: str = "") -> RunNames:
    if valid not in VALID_SUFFIXES:
        raise MtlserError(f"--valid {valid}: expected {', '.join(VALID_SUFFIXES)}")
    if protocol == FIXED and valid != "share":
        raise MtlserError(f"--protocol {FIXED} --valid {valid}: the fixed protocol's valid set is the corpus's "
                          "development set (utt2set dev); leave --valid at its default")
    folds_dir = f"{data}/{protocol}{VALID_SUFFIXES[valid]}"
    token_set = token_set_name(token_type, emo_tag, nbpe)
    token_list_dir = f"{data}/token_list"
    if token_type == "bpe":
        token_list = str(token_list_path(Path(folds_dir) / FOLD_PLACEHOLDER / FOLD_TOKEN_LIST_DIR, token_set))
    else:
        token_list = str(token_list_path(token_list_dir, token_set))
    if not tag:
        config_name = Path(train_config).name.removesuffix(".yaml")
        tag = f"{config_name}_{protocol}{VALID_SUFFIXES[valid]}"
        if token_set != DEFAULT_TOKEN_SET:
            tag += f"_{token_set}"
    untagged = tag
    reduction_opts = ""
    if ctc_reduction:
        tag += f"_ctc{ctc_reduction}"
        reduction_opts = f"--loss.ctc_reduction {ctc_reduction}"
    names = RunNames(folds_dir=folds_dir, token_set=token_set, token_list_dir=token_list_dir, token_list=token_list,
                     final_token_list=token_list.replace(FOLD_PLACEHOLDER, FINAL),
                     valid_opts=NO_VALID_OPTS if valid == "none" else "", tag=tag, base_tag=untagged)
    if lambdas.split():
        for lam in lambdas.split():
            if is_zero(lam):
                names.experiments.append(Experiment(f"{exp}/{untagged}_lambda{lam}", f"--loss.lambda {lam}"))
            else:
                names.experiments.append(Experiment(f"{exp}/{tag}_lambda{lam}",
                                                    f"--loss.lambda {lam} {reduction_opts}".strip()))
        names.sweep_table = f"{exp}/{tag}_lambdas.md"
    else:
        names.experiments.append(Experiment(f"{exp}/{tag}", reduction_opts))
    if seeds.split():
        names.experiments, names.seed_groups = with_seeds(names.experiments, seeds)
    if names.sweep_table:
        names.sweep_dirs = names.seed_groups or [e.dir for e in names.experiments]
    return names


def fold_numbers(folds_dir: str | Path, folds: str = "") -> list[int]:
    """The folds to run: ``folds`` ("1 2"), or every fold stage 2 wrote into ``folds_dir``."""
    if folds.split():
        try:
            return [int(f) for f in folds.split()]
        except ValueError:
            raise MtlserError(f"--folds '{folds}': expected fold numbers, e.g. \"1 2\"") from None
    n = len(fold_dirs(folds_dir))
    if n == 0:
        raise MtlserError(f"no folds in {folds_dir}: run the folds stage first")
    return list(range(1, n + 1))


def shell_assignments(values: dict[str, str | list[str]]) -> str:
    """``key=value`` lines (lists as bash arrays), each value quoted for ``eval``."""
    lines = []
    for key, value in values.items():
        if isinstance(value, list):
            lines.append(f"{key}=({' '.join(shlex.quote(v) for v in value)})")
        else:
            lines.append(f"{key}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


def run_assignments(names: RunNames) -> str:
    return shell_assignments({
        "folds_dir": names.folds_dir, "token_set": names.token_set, "token_list_dir": names.token_list_dir,
        "token_list": names.token_list,
        "final_token_list": names.final_token_list, "valid_opts": names.valid_opts, "tag": names.tag,
        "exp_dirs": [e.dir for e in names.experiments], "exp_opts": [e.opts for e in names.experiments],
        "exp_groups": [e.group for e in names.experiments], "seed_groups": names.seed_groups,
        "sweep_table": names.sweep_table, "sweep_dirs": names.sweep_dirs,
        "final_name": FINAL,  # the final model's data dir in folds_dir and model dir in each experiment dir
        "decode_name": DECODE_TEST,  # a fold model dir's decode dir of its test set (stages 4-5)
    })


def fold_test_sets(folds_dir: str | Path, numbers: list[int]) -> list[str]:
    """The test sets of the folds (their first fold's): ``test``, and with the fixed protocol each ``test<name>``."""
    first = Path(folds_dir) / fold_name(numbers[0])
    return test_sets(first) if first.is_dir() else [TEST_SET]


def fold_assignments(numbers: list[int], sets: list[str] | None = None) -> str:
    sets = sets or [TEST_SET]
    return shell_assignments({
        "fold_args": ",".join(str(n) for n in numbers),  # mtlser.launch.nth_fold's list
        "num_folds": str(len(numbers)),
        "fold_names": [fold_name(n) for n in numbers],
        "test_sets": sets,  # each fold's test sets (stage 4 decodes each, stage 5 scores each)
        "decode_names": [DECODE_PREFIX + s for s in sets],  # their decode dirs; decode_names[0] is decode_name
    })
