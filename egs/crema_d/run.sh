#!/usr/bin/env bash
# CREMA-D (91 actors, 7,442 clips, 6 emotions) with the paper's model and objective
# (wav2vec2-base, layer fusion, CE + 0.1 CTC over emotion-tagged phoneme classes of
# the sentence each clip reads), 5 speaker-independent folds. See README.md here.
#   ./run.sh --db-root /path/to/CREMA-D [--stage 0 --stop-stage 5] \
#            [--train-opts "--backbone.init /path/to/wav2vec2-base"]
#   ./run.sh ... --partition /path/to/EmoBox/data/cremad   # EmoBox's published fold instead
#   ./run.sh ... --local-data-opts "--check-counts false"   # options of local/data.sh (a partial copy)
# Other options go to ../TEMPLATE/ser.sh (./run.sh --help).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
../../tools/install.sh

db_root=${CREMA_D:-}    # or export CREMA_D=/path/to/CREMA-D (the folder holding AudioWAV/); --db-root DIR overrides it

# Folds: kfold5 deals the 91 actors into 5 test folds of whole speakers (18-19 each,
# gender-balanced from VideoDemographics.csv), so no actor is in both training and test.
# The folds carry a valid set of 10% of each training actor's clips (stratified by emotion;
# never a test actor). conf/train_mtl.yaml runs the paper's protocol (train.model_selection
# last): that share trains too and epoch 100 is reported; conf/train_mtl_select_valid.yaml
# (ours) picks the best epoch on it instead.
./ser.sh \
    --db-root "${db_root}" \
    --train-config conf/train_mtl.yaml \
    --protocol kfold5 \
    --valid share --valid-share 0.1 \
    --nj 1 \
    -- "$@"   # "--": the options above are this recipe's defaults, those after it the user's
