#!/usr/bin/env bash
# Kaldi slurm.pl's interface: run_slurm.sh [--max-jobs-run N] [--gpu N] [--slurm-conf FILE --slurm-stage train|decode]
#     [--sbatch-opt=OPT ...] JOB=1:N LOG command...
exec python -m mtlser.launch --backend slurm "$@"
