#!/usr/bin/env bash
# Stage 0 of the RAVDESS recipe: the speech clips found anywhere under the root -> data/all
# (1,440 clips; song and video files left out; labels by the label map; counts checked
# against the full release), with a report in data/local/ravdess_prep/ (counts.json;
# skipped: each file that is not a used clip, and why). Stage 2 converts the 48 kHz audio.
set -euo pipefail
db_root=""
emotion_map=conf/emotions/ravdess.yaml  # label map; conf/emotions/ravdess_calm_merged.yaml: calm -> neu
check_counts=true                       # false: do not compare with the full release's counts
. utils/parse_options.sh
. ./path.sh

if [ -z "${db_root}" ]; then
    echo "$0: give the RAVDESS copy: ./run.sh --db-root /path/to/RAVDESS (any folder above Actor_XX/; or export RAVDESS=...)" >&2
    exit 1
fi
opts=()
if ! "${check_counts}"; then opts+=(--no-check-counts); fi
python -m mtlser.corpora ravdess --db-root "${db_root}" --out data/all --emotion-map "${emotion_map}" \
    --report-dir data/local/ravdess_prep "${opts[@]}"
