"""What stage 3 records of an experiment, and how stages 4-6 run on their own find it again.

Stage 3 writes ``exp/<dir>/recipe_options.json`` (:mod:`mtlser.expdir`) into each experiment dir of a run
before training it::

    {"options": {"protocol": "loso", "valid": "share", "token_type": "char", "emo_tag": "true", "nbpe": "100",
                 "train_config": "conf/train_mini.yaml", "tag": "train_mini_loso_char", "lambdas": "",
                 "ctc_reduction": "", "seeds": "", "folds": "1", "train_opts": "--train.epochs 1", ...},
     "exp_opts": "", "folds_dir": "data/loso", "token_list": "data/token_list/char/tokens.txt"}

``tag`` is the ``--tag`` that gives the run's names (the derived one when none was given), ``folds`` the folds
trained (those of every call of stage 3 with these options). The experiment dirs of one run (a lambda sweep,
seeds) share their NAMING options.

A call that starts after stage 3 (``--stage 4`` and later) does not derive its experiment from the defaults:
of the runs recorded in ``exp/``, it takes the one that agrees with every NAMING option named on the command
line (the recipe's own defaults, which its run.sh passes before ``--``, do not count), and that run's
options, its folds included, replace the defaults; ``--folds`` given still wins. None agreeing is an error
that names the options in conflict; several, an error that lists them and how to select one. An
experiment dir of the current options that has no record (trained before records were kept) counts as a
run of the current options; with no record in ``exp/`` at all, the options are used as given.
"""

from __future__ import annotations

import os
import shlex
from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from pathlib import Path

from mtlser import expdir
from mtlser.data.fold_names import fold_name
from mtlser.recipe.names import RunNames, fold_numbers, fold_test_sets, run_names
from mtlser.text.tokenize import str2bool
from mtlser.utils import MtlserError

#: The options a run's names (folds dir, token list, experiment dirs) depend on: later stages match on them.
NAMING = ("protocol", "valid", "token_type", "emo_tag", "nbpe", "train_config", "tag", "lambdas",
          "ctc_reduction", "seeds")
#: Recorded too, as the record of the experiment (folds: the later stages' default).
RECORDED = NAMING + ("folds", "train_opts", "valid_share", "split_seed", "partition", "test_corpus",
                     "train_corpora", "phone_classes", "train_final")
#: Space-separated lists, compared item by item.
LISTS = ("lambdas", "seeds", "folds")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def normal(name: str, value) -> str:
    value = "" if value is None else str(value)
    if name in LISTS:
        return " ".join(value.replace(",", " ").split())
    if name == "train_config" and value:
        return os.path.normpath(value)
    return value.strip()


def shown(name: str, value: str) -> str:
    """An option as it is given to run.sh: ``--token-type char``, ``--lambdas '0 0.1'``."""
    return f"{flag(name)} {shlex.quote(value)}"


def naming_key(options: dict) -> tuple[str, ...]:
    return tuple(normal(n, options.get(n, "")) for n in NAMING)


def sorted_folds(*lists: str) -> str:
    return " ".join(sorted({f for folds in lists for f in folds.split()}, key=int))


def record(exp_dir: str | Path, options: dict, names: RunNames, exp_opts: str = "") -> dict:
    """Write exp_dir's recipe_options.json for a stage 3 run of ``options``; ``options["folds"]`` are the folds it
    trains, added to those an earlier run of the same options recorded."""
    options = {n: normal(n, options.get(n, "")) for n in RECORDED}
    options["tag"] = names.base_tag
    previous = expdir.read_recipe_options(exp_dir)
    if previous and naming_key(previous["options"]) == naming_key(options):
        options["folds"] = sorted_folds(options["folds"], normal("folds", previous["options"].get("folds")))
    rec = {"options": options, "exp_opts": exp_opts, "folds_dir": names.folds_dir, "token_list": names.token_list}
    expdir.write_recipe_options(exp_dir, rec)
    return rec


@dataclass
class Run:
    """The experiments of one stage 3 run (one dir, or a sweep's or seeds' several)."""

    options: dict[str, str]  # its NAMING options and folds
    dirs: list[str] = field(default_factory=list)
    recorded: bool = True

    @property
    def tag(self) -> str:
        return self.options["tag"]


def recorded_runs(exp: str) -> list[Run]:
    """The runs recorded in the experiment dirs of ``exp``, in the order of their first dir's name."""
    runs: dict[tuple, Run] = {}
    root = Path(exp)
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        rec = expdir.read_recipe_options(d) if d.is_dir() else None
        if rec is None:
            continue
        opts = rec["options"]
        folds = normal("folds", opts.get("folds"))
        run = runs.get(naming_key(opts))
        if run is None:
            run = runs[naming_key(opts)] = Run({**dict(zip(NAMING, naming_key(opts))), "folds": folds})
        else:  # the folds every experiment of the run has
            kept = set(folds.split())
            run.options["folds"] = " ".join(f for f in run.options["folds"].split() if f in kept)
        run.dirs.append(str(Path(exp) / d.name))
    return list(runs.values())


def _fits(run: Run, current: dict, given: set[str]) -> list[str]:
    """The NAMING options given on the command line that ``run`` was not trained with."""
    return [n for n in NAMING if n in given and run.options[n] != normal(n, current.get(n, ""))]


def find(current: dict, given: set[str], exp: str = "exp", stage: int = 4,
         data: str = "data") -> tuple[dict[str, str], str]:
    """The options of the run that stages 4-6 mean (see the module doc), and a line saying which was taken
    ("" when the options given name it). ``current``: every NAMING option and folds, as the call has them."""
    current = {n: normal(n, current.get(n, "")) for n in NAMING + ("folds",)}
    names = names_of(current, data, exp)
    runs = recorded_runs(exp)
    if not runs:
        return current, ""
    own = [e.dir for e in names.experiments]
    if any(Path(d).is_dir() for d in own) and not any(d in r.dirs for r in runs for d in own):
        runs.append(Run({**current, "tag": names.base_tag}, own, recorded=False))
    fitting = [r for r in runs if not _fits(r, current, given)]
    where = f"stage {stage}"
    if not fitting:
        conflicting = [n for n in NAMING if any(n in _fits(r, current, given) for r in runs)]
        has = ", ".join(f"{r.tag} ({' '.join(shown(n, r.options[n]) for n in conflicting)})" for r in runs)
        raise MtlserError(f"{where}: no experiment in {exp}/ was trained with "
                          f"{' '.join(shown(n, current[n]) for n in conflicting)}; {exp}/ has {has}: "
                          "pass the options of one (or its --tag NAME), or run stage 3 with yours first")
    if len(fitting) > 1:
        differing = [n for n in NAMING + ("folds",) if n != "tag" and len({r.options[n] for r in fitting}) > 1]

        def entry(r: Run) -> str:
            if not r.recorded:
                return f"{r.tag} (not recorded: trained before {expdir.RECIPE_OPTIONS} was kept)"
            opts = " ".join(shown(n, r.options[n]) for n in differing)
            return f"{r.tag} ({opts})" if opts else r.tag

        raise MtlserError(f"{where}: {len(fitting)} experiments in {exp}/ fit the options given; select one with "
                          f"--tag NAME (or the options shown): {', '.join(entry(r) for r in fitting)}")
    run = fitting[0]
    resolved = dict(run.options)
    if "folds" in given or not run.recorded:
        resolved["folds"] = current["folds"]
    changed = [n for n in NAMING + ("folds",) if n != "tag" and resolved[n] != current[n]]
    if not changed and names_of(resolved, data, exp).base_tag == names.base_tag:
        return resolved, ""
    opts = " ".join(shown(n, resolved[n]) for n in changed)
    return resolved, (f"{where} runs {' '.join(run.dirs)} with the options stage 3 recorded "
                      f"({expdir.RECIPE_OPTIONS}){': ' + opts if opts else ''}")


def names_of(options: dict, data: str = "data", exp: str = "exp") -> RunNames:
    """mtlser.recipe.names.run_names of options as ser.sh holds them (strings)."""
    try:
        emo_tag, nbpe = str2bool(options["emo_tag"]), int(options["nbpe"])
    except (ValueError, ArgumentTypeError) as e:
        raise MtlserError(f"--emo-tag {options['emo_tag']} --nbpe {options['nbpe']}: expected true or false and a "
                          f"number ({e})") from None
    return run_names(options["protocol"], options["valid"], options["token_type"], options["train_config"],
                     emo_tag, nbpe, options["tag"], options["lambdas"], options["ctc_reduction"], data, exp,
                     options["seeds"])


def check_stage(names: RunNames, folds: str, stage: int) -> None:
    """What the first stage of a call needs from the stages before it, in run.sh's words."""
    where = f"stage {stage}"
    if stage == 6:
        for e in names.experiments:
            if not expdir.model_dirs(e.dir):
                raise MtlserError(f"{where}: {e.dir} has no fold models (foldNN/{expdir.MODEL_YAML}); "
                                  "run stage 3 first")
        return
    if stage not in (4, 5):
        return
    numbers = fold_numbers(names.folds_dir, folds)
    decode_names = [expdir.DECODE_PREFIX + s for s in fold_test_sets(names.folds_dir, numbers)]
    for e in names.experiments:
        for n in numbers:
            model_dir = Path(e.dir) / fold_name(n)
            if stage == 4 and not (model_dir / expdir.MODEL_YAML).is_file():
                raise MtlserError(f"{where}: {model_dir} has no trained model ({expdir.MODEL_YAML}); "
                                  f"run stage 3 first (folds: {' '.join(map(str, numbers))})")
            for d in decode_names if stage == 5 else []:
                for f in (expdir.UTT2EMO_HYP, expdir.DATA_DIR_POINTER):
                    if not (model_dir / d / f).is_file():
                        raise MtlserError(f"{where}: {model_dir / d} is not decoded (no {f}); run stage 4 first")
