#!/usr/bin/env bash
# Stage 0 of the mini_avd recipe: the mini corpus with dimensional labels (its summary lines'
# [V, A, D] from the prosody: mtlser/corpora/mini_corpus.py), prepared by the IEMOCAP prep (classes
# ang hap sad neu; utt2attr arousal valence dominance on 1-5), then fixed sets of whole speakers in
# data/all/utt2set: sessions 1-3 train, session 4 dev, Ses05F test, Ses05M test2.
set -euo pipefail
seed=0                  # corpus seed: the same seed gives the same audio
utts_per_speaker=40
db=downloads/mini_iemocap_avd
emotion_map=conf/emotions/iemocap.yaml
sets="train=Ses01F,Ses01M,Ses02F,Ses02M,Ses03F,Ses03M dev=Ses04F,Ses04M test=Ses05F test2=Ses05M"  # by speaker
. utils/parse_options.sh
. ./path.sh

python -m mtlser.corpora.mini_corpus --out "${db}" --seed "${seed}" --sessions 5 \
    --utts-per-speaker "${utts_per_speaker}" --with-attributes
python -m mtlser.corpora iemocap --db-root "${db}" --out data/all --no-check-counts --emotion-map "${emotion_map}"
python -m mtlser.data.fixed_split --data-dir data/all --by utt2spk --sets "${sets}"
