"""The recipe's shell options that are numbers, checked before any stage writes (``ser.sh`` runs this first).

    check_options(stage="5", stop_stage="2", nj="2", ngpu="0", valid_share="0.1", split_seed="0", nbpe="100")
    -> MtlserError("--stage 5 --stop-stage 2: the first stage comes after the last; expected --stage <= --stop-stage")

The shell hands every value over as written, so a typo (``--stage abc``) is named here instead of failing in a
bash test, or passing one (a stage out of range ran nothing and said "Successfully finished"). Options that a
stage's own command owns are checked by it, with the same rule (``--valid-share``: mtlser.data.split).
"""

from __future__ import annotations

import re

from mtlser.utils import MtlserError

#: The recipe's stages: 0 data, 1 tokens, 2 folds, 3 train, 4 infer, 5 score, 6 pack.
FIRST_STAGE, LAST_STAGE = 0, 6


def whole_number(option: str, value: str, low: int, what: str) -> int:
    """``value`` as written on the command line: digits only (no sign, no spaces), at least ``low``."""
    if not re.fullmatch(r"[0-9]+", value) or int(value) < low:
        raise MtlserError(f"{option} {value}: expected {what}")
    return int(value)


def check_options(stage: str, stop_stage: str, nj: str, ngpu: str, valid_share: str, split_seed: str,
                  nbpe: str) -> None:
    stages = f"a stage number {FIRST_STAGE}-{LAST_STAGE} (0 data, 1 tokens, 2 folds, 3 train, 4 infer, 5 score, 6 pack)"
    first = whole_number("--stage", stage, FIRST_STAGE, stages)
    last = whole_number("--stop-stage", stop_stage, FIRST_STAGE, stages)
    for option, value in (("--stage", first), ("--stop-stage", last)):
        if value > LAST_STAGE:
            raise MtlserError(f"{option} {value}: expected {stages}")
    if first > last:
        raise MtlserError(f"--stage {first} --stop-stage {last}: the first stage comes after the last; expected "
                          "--stage <= --stop-stage")
    whole_number("--nj", nj, 1, "a number of jobs at once >= 1")
    whole_number("--ngpu", ngpu, 0, "a number of GPUs (0, 1, 2, ...)")
    # Imported here: stage 2's module imports numpy and soundfile, which ser.sh's other recipe commands need not.
    from mtlser.data.split import check_valid_share

    check_valid_share(valid_share)
    whole_number("--split-seed", split_seed, 0, "a seed >= 0")
    whole_number("--nbpe", nbpe, 1, "a number of pieces >= 1")
