#!/usr/bin/env bash
# The paper's experiment on a licensed IEMOCAP copy (Li et al., multi-task SER):
# wav2vec2-base + layer fusion + CE + 0.1 CTC over emotion-tagged phoneme classes,
# 10-fold leave-one-speaker-out.
#   ./run.sh --db-root /path/to/IEMOCAP_full_release [--stage 0 --stop-stage 5] \
#            [--train-opts "--backbone.init /path/to/wav2vec2-base"]
# Other options go to ../TEMPLATE/ser.sh (./run.sh --help).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
../../tools/install.sh

db_root=${IEMOCAP:-}    # or export IEMOCAP=/path/to/IEMOCAP_full_release
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --db-root) db_root=$2; shift 2 ;;
        --db-root=*) db_root=${1#*=}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done

./ser.sh \
    --local-data-opts "--db-root ${db_root:-MISSING}" \
    --train-config conf/train_mtl.yaml \
    --nj 1 \
    "${args[@]}"
