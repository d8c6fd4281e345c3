#!/usr/bin/env bash
# Cross-corpus experiments: train and select on some corpora, test on the whole of another, on the four
# classes they share (ang hap sad neu), e.g.
#   ./run.sh --local-data-opts "--crema-d /data/CREMA-D --ravdess /data/RAVDESS --iemocap /data/IEMOCAP_full_release" \
#       --train-corpora "crema_d ravdess" --test-corpus iemocap
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
../../tools/install.sh   # installs into tools/venv on first use; a no-op afterwards

./ser.sh --protocol cross-corpus -- "$@"   # "--": this recipe's defaults before it, the user's options after
