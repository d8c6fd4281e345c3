#!/usr/bin/env bash
# The paper's experiment on a licensed IEMOCAP copy (Li et al., multi-task SER):
# wav2vec2-base + layer fusion + CE + 0.1 CTC over emotion-tagged phoneme classes,
# 10-fold leave-one-speaker-out. See README.md here.
#   ./run.sh --db-root /path/to/IEMOCAP_full_release [--stage 0 --stop-stage 5] \
#            [--train-opts "--backbone.init /path/to/wav2vec2-base"]
#   ./run.sh ... --lambdas "0 0.001 0.01 0.1 1"     # the paper's Table 3, one experiment per lambda
#   ./run.sh ... --local-data-opts "--sessions 1,2 --skip-missing-audio true"   # options of local/data.sh
# Other options go to ../TEMPLATE/ser.sh (./run.sh --help).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
../../tools/install.sh

db_root=${IEMOCAP:-}    # or export IEMOCAP=/path/to/IEMOCAP_full_release; --db-root DIR overrides it

# The folds carry a valid set of 10% of each training speaker's utterances (stratified
# by emotion; never the test speaker). conf/train_mtl.yaml runs the paper's protocol
# (train.model_selection last): that share trains too and epoch 100 is reported.
# conf/train_mtl_select_valid.yaml (ours) picks the best epoch on it instead.
# (--valid none: folds without a valid set; --valid session-mate: the test speaker's
# session partner as the valid set, 8 training speakers.)
./ser.sh \
    --db-root "${db_root}" \
    --train-config conf/train_mtl.yaml \
    --protocol loso \
    --valid share --valid-share 0.1 \
    --compare-opts "--reference local/paper_table3.yaml" \
    --nj 1 \
    -- "$@"   # "--": the options above are this recipe's defaults, those after it the user's
