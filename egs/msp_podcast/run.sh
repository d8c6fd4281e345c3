#!/usr/bin/env bash
# MSP-Podcast (natural podcast speech; 8 classes, arousal/valence/dominance on 1-7) with the paper's
# model and objective, on the release's own sets (protocol fixed: Train trains, Development selects
# the epoch, Test1 is the test set reported, Test2 (and Test3) are scored beside it). See README.md here.
#   ./run.sh --db-root /path/to/MSP-Podcast [--stage 0 --stop-stage 5] \
#            [--train-opts "--backbone.init /path/to/wav2vec2-base"]
#   ./run.sh ... --local-data-opts "--transcripts /path/to/asr"   # ASR transcripts where the release has none
# Other options go to ../TEMPLATE/ser.sh (./run.sh --help).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
../../tools/install.sh

db_root=${MSP_PODCAST:-}    # or export MSP_PODCAST=/path/to/MSP-Podcast; --db-root DIR overrides it

# The valid set is the release's Development set (utt2set dev); the model of the best epoch on it is
# reported (conf/train_mtl_select_valid.yaml), never one chosen on a test set.
./ser.sh \
    --db-root "${db_root}" \
    --train-config conf/train_mtl_select_valid.yaml \
    --protocol fixed \
    --nj 1 \
    -- "$@"   # "--": the options above are this recipe's defaults, those after it the user's
