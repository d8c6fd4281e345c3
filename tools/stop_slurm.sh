#!/usr/bin/env bash
# Stops the local Slurm of tools/start_slurm.sh: cancels every job (scontrol shutdown alone leaves
# running job steps alive), shuts the daemons down, stops the munged that start_slurm.sh started
# (by its PID; a munged that was already running is left alone). A no-op when nothing is up.
#
# Usage: tools/stop_slurm.sh
set -euo pipefail

dir=${MTLSER_SLURM_DIR:-/var/tmp/mtlser-slurm}
conf=${dir}/slurm.conf
log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (stop_slurm.sh) $*" >&2; }

rm -f "${dir}/slurm.env"   # first, so that no test takes a stopping Slurm for a live one

alive() {  # PID file $1 names a live process called $2
    local pid
    pid=$(cat "$1" 2>/dev/null || true)
    [ -n "${pid}" ] && [ "$(cat "/proc/${pid}/comm" 2>/dev/null)" = "$2" ] && echo "${pid}"
}

if [ -f "${conf}" ] && [ -n "$(alive "${dir}/slurmctld.pid" slurmctld)" ]; then
    export SLURM_CONF=${conf}
    scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
    for _ in $(seq 100); do
        [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.1
    done
    scontrol shutdown 2>/dev/null || true
fi
for d in slurmd slurmctld; do
    pid=$(alive "${dir}/${d}.pid" "${d}") || continue
    kill "${pid}" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.1; done
done
if pid=$(alive "${dir}/munged.pid" munged); then
    kill "${pid}"
    for _ in $(seq 50); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.1; done
    rm -f "${dir}/munged.pid"
fi
log "stopped (state and logs stay in ${dir})"
