#!/usr/bin/env bash
# The default recipe: the embedded mini corpus, end to end on CPU in minutes.
# Synthetic emotional speech in IEMOCAP's layout (10 speakers, generated here
# from a fixed seed), a tiny wav2vec2-shaped model trained from scratch with the
# paper's fusion, heads and objective, 10-fold leave-one-speaker-out.
# Options go to ../TEMPLATE/ser.sh (./run.sh --help); outputs land in data/ and exp/ here.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
../../tools/install.sh   # installs into tools/venv on first use; a no-op afterwards

./ser.sh \
    --train-config conf/train_mini.yaml \
    --nj 2 \
    "$@"
