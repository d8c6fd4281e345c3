#!/usr/bin/env bash
# Stage 0 of the mini recipe: synthesise the corpus in IEMOCAP's layout (once),
# then prepare data/all with the same code and label map as the real IEMOCAP recipe
# (ang hap sad neu, exc merged into hap; data/all/emotions records the class order).
set -euo pipefail
seed=0                  # corpus seed: the same seed gives the same audio
sessions=5              # 2 speakers per session
utts_per_speaker=40
db=downloads/mini_iemocap
emotion_map=conf/emotions/iemocap.yaml
. utils/parse_options.sh
. ./path.sh

python -m mtlser.corpora.mini_corpus --out "${db}" --seed "${seed}" --sessions "${sessions}" \
    --utts-per-speaker "${utts_per_speaker}"
python -m mtlser.corpora iemocap --db-root "${db}" --out data/all --no-check-counts --emotion-map "${emotion_map}"
