#!/usr/bin/env bash
# mtlser's recipe template: the seven stages, run from a recipe dir (egs/<corpus>/).
# A recipe's run.sh calls this with its defaults; a corpus brings only
# local/data.sh (stage 0) and a config. Logic lives in `python -m mtlser.*`.
set -euo pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*" >&2
}
SECONDS=0
cmdline="$0$(printf ' %q' "$@")"  # quoted, so that exp/*/run.sh replays the exact command

# General
stage=0              # first stage to run
stop_stage=6         # last stage to run
nj=2                 # folds trained/decoded at once (stages 3-4)
ngpu=1               # GPUs per training job: reserved by the job backend (Slurm: gres); N > 1 runs torchrun
                     # with N processes per fold (DDP; without GPUs, N CPU processes with gloo)
slurm_conf=conf/slurm.conf  # Slurm settings of stages 3-4 (MTLSER_CMD_BACKEND=slurm), see that file
# Data
db_root=""           # the corpus copy, passed to local/data.sh as --db-root when given (licensed corpora)
local_data_opts=""   # options passed to local/data.sh
protocol=loso        # loso (10 folds: one speaker held out) | loso-session (5 folds) | kfold<K> (K folds of whole speakers)
                     # | fixed (the corpus's sets, data/all/utt2set: one fold, valid = dev, each test set scored)
partition=""         # published partition files (EmoBox format: fold_N/*_{train,test}_fold_N.jsonl): folds from them (protocol partition)
test_corpus=""       # protocol cross-corpus: the corpus of data/all/utt2corpus tested on, whole (mtlser.data.combine)
train_corpora=""     # protocol cross-corpus: the corpora trained and selected on, e.g. "crema_d ravdess" (default: every other)
valid=share          # share (of each training speaker) | session-mate (the test speaker's session partner) | none (the paper: no valid set, the last epoch's model is reported)
valid_share=0.1      # valid share of each training speaker's utterances, with valid=share
split_seed=0         # seed of the valid selection
phone_classes=conf/phone_classes.yaml  # ARPAbet -> phoneme class map (stage 1)
token_type=phncls    # CTC targets: phncls (the paper) | phn | char | bpe (trained per fold on its training text)
emo_tag=true         # tag every token with the utterance's emotion (the paper)
nbpe=100             # pieces per fold, with token_type=bpe
# Training and inference
train_config=conf/train_mtl.yaml  # experiment config (stage 3)
train_opts=""        # config overrides, e.g. "--optim.lr 1e-4 --train.epochs 50" (shell-quoted: "--backbone.init '/a b'"; --force retrains)
tag=""               # experiment name (default: <config name>_<protocol>); stages 4-6 run alone take the
                     # experiment stage 3 recorded that fits the options given (exp/<tag>/recipe_options.json)
folds=""             # folds to run in stages 3-5, e.g. "1 2" (default: all)
lambdas=""           # lambda sweep, e.g. "0 0.001 0.01 0.1 1": one experiment per value (stages 3-5)
seeds=""             # model seeds, e.g. "0 1 2": each experiment once per seed (<name>_seedN, --train.seed N,
                     # one split); stage 5 adds exp/<name>_seeds over seeds x folds (default: the config's seed)
ctc_reduction=""     # sum | mean | mean_batch: loss.ctc_reduction of the experiments with lambda > 0 (default: the config's); tag gets _ctc<value>
train_final=false    # stage 3: after the folds, train once on all speakers for the epochs the folds chose -> exp/<tag>/final
infer_opts=""        # extra options of python -m mtlser.infer (stage 4)
compare_opts=""      # extra options of python -m mtlser.score compare (the sweep's table), e.g. "--reference FILE"
pack_opts=""         # extra options of python -m mtlser.export pack (stage 6), e.g. "--corpus NAME"

# --help is answered after the options are parsed, so that it shows the calling recipe's defaults (its
# run.sh passes them before "$@") and names the recipe, not this template.
# given: the options named on the command line, after the recipe's defaults (its run.sh ends them with "--");
# stages 4-6 run alone find the experiment stage 3 recorded that agrees with them (mtlser.recipe.options).
want_help=false
args=()
given=""
is_value=false
for a in "$@"; do
    if "${is_value}"; then is_value=false; args+=("${a}"); continue; fi
    case "${a}" in
        --help|-h) want_help=true ;;
        --) given="" ;;
        --*=*) a_name=${a%%=*}; given+=" ${a_name#--}"; args+=("${a}") ;;
        --*) given+=" ${a#--}"; is_value=true; args+=("${a}") ;;
        *) args+=("${a}") ;;
    esac
done
set -- ${args[@]+"${args[@]}"}
help_text() { cat <<EOF
Usage: egs/$(basename "${PWD}")/run.sh [options]   (recipe egs/$(basename "${PWD}"); the defaults shown are its own)
  --stage N --stop-stage M   run stages N..M (0 data, 1 tokens, 2 folds, 3 train, 4 infer, 5 score, 6 pack; default ${stage}..${stop_stage})
  --nj N                     folds trained/decoded at once (default ${nj})
  --ngpu N                   GPUs per training job; N > 1: torchrun, N processes per fold (default ${ngpu})
  --slurm-conf FILE          Slurm settings with MTLSER_CMD_BACKEND=slurm (default ${slurm_conf})
  --db-root DIR              the corpus copy (local/data.sh --db-root), for recipes of corpora you hold
  --local-data-opts "..."    passed to local/data.sh
  --protocol loso|loso-session|kfold<K>|fixed, --valid share|session-mate|none, --valid-share X, --split-seed N
                             (fixed: the corpus's train/dev/test sets from data/all/utt2set, one fold)
                             (--valid none: the paper's protocol, every training utterance trains, last epoch reported)
  --partition DIR            test folds from published partition files (EmoBox's format); protocol "partition"
  --protocol cross-corpus --test-corpus NAME [--train-corpora "A B"]   on a combined data/all (utt2corpus):
                             train and select on A B, test on the whole of NAME (egs/cross_corpus)
  --phone-classes FILE       phone -> class map (default ${phone_classes})
  --token-type phncls|phn|char|bpe, --emo-tag true|false, --nbpe N   CTC targets (default phncls, tagged)
  --train-config FILE        experiment YAML (default ${train_config})
  --train-opts "..."         config overrides, e.g. "--loss.lambda 0"
  --tag NAME                 experiment dir name under exp/ (stages 4-6 alone: selects one stage 3 recorded)
  --folds "1 2"              only these folds in stages 3-5
  --lambdas "0 0.1 1"        one experiment per lambda, and a comparison table
  --seeds "0 1 2"            each experiment once per model seed (one split), figures over seeds x folds
  --ctc-reduction sum|mean|mean_batch  how the CTC loss is reduced (the paper does not say; lambda means something else for each)
  --train-final true         after the folds, a final model on all speakers (exp/<tag>/final)
  --compare-opts "..."       options of the comparison table, e.g. "--reference local/paper_table3.yaml"
  --pack-opts "..."          options of python -m mtlser.export pack (stage 6)
EOF
}

. utils/parse_options.sh
if "${want_help}"; then
    help_text; exit 0
fi
if [ $# -ne 0 ]; then
    log "unexpected arguments: $*"; log "$(help_text)"; exit 2
fi
. ./path.sh
. ./cmd.sh
# The options that are numbers, before anything is written: one line naming a bad one (mtlser.recipe.checks).
python -m mtlser.recipe check-options --stage="${stage}" --stop-stage="${stop_stage}" --nj="${nj}" --ngpu="${ngpu}" \
    --valid-share="${valid_share}" --split-seed="${split_seed}" --nbpe="${nbpe}"

[ -x local/data.sh ] || { log "local/data.sh not found or not executable in $(pwd): a recipe needs one"; exit 1; }
[ -f "${train_config}" ] || { log "config ${train_config} not found"; exit 1; }
if [ -n "${partition}" ] && [ "${protocol}" != partition ]; then
    log "--partition ${partition}: the folds come from its files (protocol partition, not ${protocol})"; protocol=partition
fi

data=data
exp=exp
# Every name of this run (folds dir, token set and list, experiment dirs and their overrides: one per
# lambda of a sweep and seed, seed groups) comes from mtlser.recipe, which reads the rules from the modules
# that own them.
run_opts=(--protocol "${protocol}" --valid "${valid}" --token-type "${token_type}" \
    --emo-tag "${emo_tag}" --nbpe "${nbpe}" --train-config "${train_config}" --tag "${tag}" \
    --lambdas "${lambdas}" --ctc-reduction "${ctc_reduction}" --seeds "${seeds}" --data "${data}" --exp "${exp}")
if [ "${stage}" -ge 4 ]; then
    # Stages 4-6 alone: the options (folds included) of the experiment stage 3 recorded that agrees with the
    # options given, or an error listing those that do (mtlser.recipe.options).
    names=$(python -m mtlser.recipe find "${run_opts[@]}" --folds "${folds}" --given="${given}" --stage "${stage}")
else
    names=$(python -m mtlser.recipe names "${run_opts[@]}")
fi
eval "${names}"
train_opts="${train_opts} ${valid_opts}"
if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    # Each experiment's resolved config, checked before stage 0 writes and any job of stage 3 starts: a bad
    # field is named here with its source (the YAML file or --train-opts), not in a job's log.
    for i in "${!exp_dirs[@]}"; do
        python -m mtlser.train --check-config --config "${train_config}" \
            --train-opts "${train_opts} ${exp_opts[i]}" --data.token_type "${token_set}"
    done
fi
score_sh=local/score.sh
[ -x "${score_sh}" ] || score_sh=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/local/score.sh

if [ "${stage}" -le 0 ] && [ "${stop_stage}" -ge 0 ]; then
    log "Stage 0: data preparation -> ${data}/all"
    # shellcheck disable=SC2086
    local/data.sh ${db_root:+--db-root "${db_root}"} ${local_data_opts}
    python -m mtlser.data.datadir validate ${data}/all
fi

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    log "Stage 1: ${token_type} tokens (set ${token_set}) -> ${data}/all, ${token_list_dir} (bpe: per fold in stage 2)"
    python -m mtlser.text.tokenize --data-dir ${data}/all --token-list-dir "${token_list_dir}" \
        --token-type "${token_type}" --emo-tag "${emo_tag}" --nbpe "${nbpe}" --phone-classes "${phone_classes}"
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    log "Stage 2: audio check and ${protocol} folds -> ${folds_dir}/foldNN/{train,valid,test}"
    python -m mtlser.data.split --data-dir ${data}/all --out "${folds_dir}" --protocol "${protocol}" \
        --valid "${valid}" --valid-share "${valid_share}" --seed "${split_seed}" --audio-dir ${data}/wav16k \
        ${partition:+--partition "${partition}"} ${test_corpus:+--test-corpus "${test_corpus}"} \
        ${train_corpora:+--train-corpora "${train_corpora}"}
    if [ "${token_type}" = bpe ]; then
        log "Stage 2: bpe per fold, trained on its training text only -> ${token_list}"
        python -m mtlser.text.bpe --folds-dir "${folds_dir}" --nbpe "${nbpe}" --emo-tag "${emo_tag}"
    fi
fi

# Stages 3-5 run the folds stage 2 wrote (or --folds): fold_args, num_folds, fold_names, and each fold's test
# sets with their decode dirs (test_sets, decode_names: test, and the fixed protocol's test<name>).
if [ "${stop_stage}" -ge 3 ] && [ "${stage}" -le 5 ]; then
    fold_vars=$(python -m mtlser.recipe folds --folds-dir "${folds_dir}" --folds "${folds}")
    eval "${fold_vars}"
fi
# One process per fold, or with --ngpu N > 1 torchrun's N (DDP: the ranks split each batch, rank 0 writes).
train_py=(python -m mtlser.train)
if [ "${ngpu}" -gt 1 ]; then train_py=(torchrun --standalone --nproc_per_node "${ngpu}" -m mtlser.train); fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    for i in "${!exp_dirs[@]}"; do
        expdir=${exp_dirs[i]}
        log "Stage 3: training folds ${fold_args} -> ${expdir}/foldNN (logs in ${expdir}/logs)"
        mkdir -p "${expdir}/logs"
        # What later stages run on their own read back: ${expdir}/recipe_options.json.
        python -m mtlser.recipe record --exp-dir "${expdir}" "${run_opts[@]}" --folds "${fold_args}" \
            --exp-opts "${exp_opts[i]}" --train-opts "${train_opts}" --valid-share "${valid_share}" \
            --split-seed "${split_seed}" --partition "${partition}" --test-corpus "${test_corpus}" \
            --train-corpora "${train_corpora}" --phone-classes "${phone_classes}" --train-final "${train_final}"
        # A replayable record of this experiment, as ESPnet keeps one per exp dir.
        echo "# $(date)" >> "${expdir}/run.sh"
        echo "(cd $(pwd) && ${cmdline})" >> "${expdir}/run.sh"
        # Each fold's resolved config (every field, overrides applied) is ${expdir}/foldNN/config.yaml.
        # shellcheck disable=SC2086
        ${train_cmd} --gpu "${ngpu}" --max-jobs-run "${nj}" JOB=1:${num_folds} "${expdir}/logs/train.JOB.log" \
            python -m mtlser.launch.nth_fold "${fold_args}" JOB \
            "${train_py[@]}" --config "${train_config}" --folds-dir "${folds_dir}" --fold FOLD \
                --token-list "${token_list}" --exp-dir "${expdir}" --train-opts "${train_opts} ${exp_opts[i]}" \
                --data.token_type "${token_set}"
        if ${train_final}; then
            # The model to ship: every speaker, for the epoch count the folds chose (mtlser.train.final).
            final_epochs=$(python -m mtlser.train.final --exp-dir "${expdir}")
            log "Stage 3: final model on all speakers, ${final_epochs} epochs -> ${expdir}/${final_name}"
            # shellcheck disable=SC2086
            ${train_cmd} --gpu "${ngpu}" JOB=1:1 "${expdir}/logs/train.${final_name}.log" \
                "${train_py[@]}" --config "${train_config}" --data-dir "${folds_dir}/${final_name}" \
                    --token-list "${final_token_list}" --exp-dir "${expdir}/${final_name}" \
                    --train-opts "${train_opts} ${exp_opts[i]}" --data.token_type "${token_set}" \
                    --train.epochs "${final_epochs}" --train.model_selection last --train.patience 0
        fi
    done
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
    for expdir in "${exp_dirs[@]}"; do
        for j in "${!test_sets[@]}"; do  # test only, except with the fixed protocol's further test sets
            log "Stage 4: inference on each fold's ${test_sets[j]} set -> ${expdir}/foldNN/${decode_names[j]}"
            log_name=decode; [ "${j}" -eq 0 ] || log_name=${decode_names[j]}
            # shellcheck disable=SC2086
            ${decode_cmd} --max-jobs-run "${nj}" JOB=1:${num_folds} "${expdir}/logs/${log_name}.JOB.log" \
                python -m mtlser.launch.nth_fold "${fold_args}" JOB \
                python -m mtlser.infer --model-dir "${expdir}" --folds-dir "${folds_dir}" --fold FOLD \
                    --test-set "${test_sets[j]}" --num-threads 1 ${infer_opts}
        done
    done
fi

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
    for expdir in "${exp_dirs[@]}"; do
        log "Stage 5: scoring -> ${expdir}/foldNN/${decode_name}/result.{txt,json}, ${expdir}/RESULTS.md"
        for f in "${fold_names[@]}"; do
            for d in "${decode_names[@]}"; do
                "${score_sh}" "${expdir}/${f}/${d}"
            done
        done
        python -m mtlser.score aggregate "${expdir}"  # logs the headline table (WA, UA) with its header
        if [ "${#decode_names[@]}" -gt 1 ]; then
            log "Stage 5: each test set's figures (${decode_names[*]}) in ${expdir}/RESULTS.md (Test sets), per fold in ${expdir}/foldNN/<decode dir>/result.txt"
        fi
    done
    for group in "${seed_groups[@]}"; do
        members=()
        for i in "${!exp_dirs[@]}"; do [ "${exp_groups[i]}" != "${group}" ] || members+=("${exp_dirs[i]}"); done
        log "Stage 5: seeds ${seeds} over seeds x folds -> ${group}/RESULTS.md"
        python -m mtlser.score aggregate --seeds-out "${group}" "${members[@]}"  # logs the table with its header
    done
    if [ -n "${sweep_table}" ]; then
        log "Stage 5: lambda sweep comparison -> ${sweep_table}"
        # shellcheck disable=SC2086
        python -m mtlser.score compare --out "${sweep_table}" ${compare_opts} "${sweep_dirs[@]}"
    fi
fi

if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 6 ]; then
    for expdir in "${exp_dirs[@]}"; do
        log "Stage 6: packing every fold, final/ when present, and the folds' ensemble, mtlser wheel -> ${expdir}/packed"
        # shellcheck disable=SC2086
        python -m mtlser.export pack --exp-dir "${expdir}" --out-dir "${expdir}/packed" \
            --corpus "$(basename "$(pwd)")" ${pack_opts}
    done
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
