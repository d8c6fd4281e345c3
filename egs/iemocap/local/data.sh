#!/usr/bin/env bash
# Stage 0 of the IEMOCAP recipe: IEMOCAP_full_release -> data/all (5531 utterances,
# 4 classes with exc merged into hap, as conf/emotions/iemocap.yaml declares; counts
# checked against the full release), with data/all/emotions (the class order) and a
# report in data/local/iemocap_prep/ (counts.json; dropped: turn and reason).
set -euo pipefail
db_root=""
sessions="1 2 3 4 5"        # sessions to prepare: "1 2 3 4 5" or 1,2,3,4,5
skip_missing_audio=false   # true: drop turns whose wav is missing instead of failing
emotion_map=conf/emotions/iemocap.yaml  # classes in index order + merges (mtlser/data/emotions.py)
. utils/parse_options.sh
. ./path.sh

if [ -z "${db_root}" ]; then
    echo "$0: give the IEMOCAP copy: ./run.sh --db-root /path/to/IEMOCAP_full_release (or export IEMOCAP=...)" >&2
    exit 1
fi
opts=()
if "${skip_missing_audio}"; then opts+=(--skip-missing-audio); fi
# shellcheck disable=SC2086
python -m mtlser.corpora iemocap --db-root "${db_root}" --out data/all --sessions ${sessions//,/ } \
    --report-dir data/local/iemocap_prep --emotion-map "${emotion_map}" "${opts[@]}"
