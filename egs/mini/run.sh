#!/usr/bin/env bash
# A recipe: stages 0-5 of ../TEMPLATE/ser.sh with this recipe's defaults (./run.sh --help
# lists the options); outputs land in data/ and exp/ here. The corpus is whatever
# local/data.sh writes into data/all, with its emotion inventory data/all/emotions (in
# egs/mini: the embedded mini corpus, synthesised from a fixed seed); the experiment is
# --train-config (conf/train_mini.yaml: a tiny model trained from scratch, sized for a CPU).
# For another corpus: replace local/data.sh, and set a real config below
# (README.md: "A recipe for your own corpus").
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
../../tools/install.sh   # installs into tools/venv on first use; a no-op afterwards

./ser.sh \
    --train-config conf/train_mini.yaml \
    --nj 2 \
    --ngpu 0 \
    --slurm-conf conf/slurm_mini.conf \
    -- "$@"   # "--": the options above are this recipe's defaults, those after it the user's
