#!/usr/bin/env bash
# Stage 0 of the MSP-Podcast recipe: Audios/ + Labels/labels_consensus.csv (+ Transcripts/) -> data/all:
# the 8 classes (O and X segments stay for their attributes, with no class), utt2attr and attributes
# (arousal valence dominance, 1-7), utt2set (train dev test test2 ...), with a report in
# data/local/msp_podcast_prep/ (counts.json; dropped: segment and reason).
set -euo pipefail
db_root=""
transcripts=""                              # folder of <stem>.txt transcripts (e.g. ASR) instead of Transcripts/
emotion_map=conf/emotions/msp_podcast.yaml  # the classes kept, in index order
skip_missing_audio=false                    # true: drop segments whose wav is missing instead of failing
. utils/parse_options.sh
. ./path.sh

if [ -z "${db_root}" ]; then
    echo "$0: give the MSP-Podcast copy: ./run.sh --db-root /path/to/MSP-Podcast (the folder holding Audios/ and Labels/; or export MSP_PODCAST=...)" >&2
    exit 1
fi
opts=()
if [ -n "${transcripts}" ]; then opts+=(--transcripts "${transcripts}"); fi
if "${skip_missing_audio}"; then opts+=(--skip-missing-audio); fi
python -m mtlser.corpora msp_podcast --db-root "${db_root}" --out data/all --emotion-map "${emotion_map}" \
    --report-dir data/local/msp_podcast_prep "${opts[@]}"
