#!/usr/bin/env bash
# Stage 0 of the CREMA-D recipe: the release's AudioWAV/ -> data/all (7,442 clips; labels by
# the label map; counts checked against the full release), with a report in
# data/local/crema_d_prep/ (counts.json; skipped: each file that is not a used clip, and why).
set -euo pipefail
db_root=""
emotion_map=conf/emotions/crema_d.yaml  # label map: the emotions kept, their order, merges
check_counts=true                       # false: do not compare with the full release's counts
. utils/parse_options.sh
. ./path.sh

if [ -z "${db_root}" ]; then
    echo "$0: give the CREMA-D copy: ./run.sh --db-root /path/to/CREMA-D (the folder holding AudioWAV/; or export CREMA_D=...)" >&2
    exit 1
fi
opts=()
if ! "${check_counts}"; then opts+=(--no-check-counts); fi
python -m mtlser.corpora crema_d --db-root "${db_root}" --out data/all --emotion-map "${emotion_map}" \
    --report-dir data/local/crema_d_prep "${opts[@]}"
