#!/usr/bin/env bash
# Stage 0 of the cross-corpus recipe: each corpus prepared into data/<name>/all by its own prep (its own
# label map), then combined into data/all on the shared inventory (conf/emotions/cross_corpus.yaml:
# ang hap sad neu) with utt2corpus naming each utterance's corpus (python -m mtlser.data.combine).
set -euo pipefail
crema_d=""              # the CREMA-D copy (holds AudioWAV/); empty: left out
ravdess=""              # the RAVDESS copy (holds Audio_Speech_Actors_01-24/); empty: left out
mini=""                 # the mini corpus's folder (IEMOCAP layout), made here when it does not exist; empty: left out
iemocap=""              # IEMOCAP_full_release; empty: left out
check_counts=true       # false: do not compare with the full releases' counts (small or partial copies)
emotion_map=conf/emotions/cross_corpus.yaml
. utils/parse_options.sh
. ./path.sh

opts=()
if ! "${check_counts}"; then opts+=(--no-check-counts); fi
inputs=()
if [ -n "${crema_d}" ]; then
    python -m mtlser.corpora crema_d --db-root "${crema_d}" --out data/crema_d/all "${opts[@]}"
    inputs+=(crema_d=data/crema_d/all)
fi
if [ -n "${ravdess}" ]; then
    python -m mtlser.corpora ravdess --db-root "${ravdess}" --out data/ravdess/all "${opts[@]}"
    inputs+=(ravdess=data/ravdess/all)
fi
if [ -n "${mini}" ]; then
    [ -d "${mini}" ] || python -m mtlser.corpora.mini_corpus --out "${mini}" --sessions 1 --utts-per-speaker 12
    python -m mtlser.corpora iemocap --db-root "${mini}" --out data/mini/all --no-check-counts
    inputs+=(mini=data/mini/all)
fi
if [ -n "${iemocap}" ]; then
    python -m mtlser.corpora iemocap --db-root "${iemocap}" --out data/iemocap/all "${opts[@]}"
    inputs+=(iemocap=data/iemocap/all)
fi
[ "${#inputs[@]}" -ge 2 ] || { echo "$0: give at least two corpora (--crema-d, --ravdess, --mini, --iemocap)" >&2; exit 1; }
python -m mtlser.data.combine data/all "${inputs[@]}" --emotion-map "${emotion_map}"
