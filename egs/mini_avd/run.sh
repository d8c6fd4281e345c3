#!/usr/bin/env bash
# The done-when corpus of issue 21: the mini corpus with classes AND attributes (arousal, valence,
# dominance from its prosody), on fixed sets of whole speakers (protocol fixed: one fold, the dev
# set selects, two test sets scored), a tiny model with an emotion head, an attribute head and the
# CTC head, trained from scratch on a CPU. Outputs land in data/ and exp/ here.
#   ./run.sh [--stage 0 --stop-stage 6]
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
../../tools/install.sh   # installs into tools/venv on first use; a no-op afterwards

./ser.sh \
    --train-config conf/train_mini_avd.yaml \
    --protocol fixed \
    --nj 1 \
    --ngpu 0 \
    --slurm-conf conf/slurm_mini.conf \
    -- "$@"   # "--": the options above are this recipe's defaults, those after it the user's
