#!/usr/bin/env bash
# RAVDESS speech (24 actors, 1,440 clips, 8 emotions) with the paper's model and objective
# (wav2vec2-base, layer fusion, CE + 0.1 CTC over emotion-tagged phoneme classes of the
# statement each clip reads), 6 speaker-independent folds. See README.md here.
#   ./run.sh --db-root /path/to/RAVDESS [--stage 0 --stop-stage 5] \
#            [--train-opts "--backbone.init /path/to/wav2vec2-base"]
#   ./run.sh ... --local-data-opts "--emotion-map conf/emotions/ravdess_calm_merged.yaml" --tag NAME
#                                                    # 7 classes, calm counted as neutral
#   ./run.sh ... --partition /path/to/EmoBox/data/ravdess   # EmoBox's published folds instead
# Other options go to ../TEMPLATE/ser.sh (./run.sh --help).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
../../tools/install.sh

db_root=${RAVDESS:-}    # or export RAVDESS=/path/to/RAVDESS (any folder above the Actor_XX/ folders); --db-root DIR overrides it

# Folds: kfold6 deals the 24 actors into 6 test folds of whole speakers, 2 women and
# 2 men each, so no actor is in both training and test. The folds carry a valid set of
# 10% of each training actor's clips (stratified by emotion; never a test actor).
# conf/train_mtl.yaml runs the paper's protocol (train.model_selection last): that share
# trains too and epoch 100 is reported; conf/train_mtl_select_valid.yaml (ours) picks the
# best epoch on it instead.
./ser.sh \
    --db-root "${db_root}" \
    --train-config conf/train_mtl.yaml \
    --protocol kfold6 \
    --valid share --valid-share 0.1 \
    --nj 1 \
    -- "$@"   # "--": the options above are this recipe's defaults, those after it the user's
