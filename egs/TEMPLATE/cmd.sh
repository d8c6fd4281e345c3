# Where jobs run, chosen in one place (ESPnet's cmd.sh). Recipes source this.
#   local : on this machine; stages 3-4 run up to --nj folds at once. On a GPU machine
#           MTLSER_GPUS=0 ./run.sh --nj 4 trains 4 folds at once, all on GPU 0 (MTLSER_GPUS=0,1:
#           round robin over two); each job gets cores/nj CPU threads (docs/speed.md)
#   slurm : an sbatch array per stage; the cluster settings (partition, account, time, cpus,
#           memory, gres, extra sbatch options; per stage) are in ${slurm_conf} (ser.sh
#           --slurm-conf, default conf/slurm.conf), so nothing here needs editing
# Override without editing: MTLSER_CMD_BACKEND=slurm ./run.sh ...
cmd_backend=${MTLSER_CMD_BACKEND:-local}
case "${cmd_backend}" in
    local)
        train_cmd="run_local.sh"
        decode_cmd="run_local.sh"
        ;;
    slurm)
        train_cmd="run_slurm.sh --slurm-conf ${slurm_conf:-conf/slurm.conf} --slurm-stage train"
        decode_cmd="run_slurm.sh --slurm-conf ${slurm_conf:-conf/slurm.conf} --slurm-stage decode"
        ;;
    *)
        echo "cmd.sh: unknown cmd_backend '${cmd_backend}' (local or slurm)" >&2
        return 1
        ;;
esac
