#!/usr/bin/env bash
# A real single-node Slurm on localhost, for the tests and CI: installs the Debian packages
# (slurmctld, slurmd, slurm-client, munge) when missing, runs munged as the munge user and
# slurmctld + slurmd in the background (no systemd needed), with a slurm.conf sized to this machine.
#
# Usage: tools/start_slurm.sh     as root; a no-op when it is already up
#        tools/stop_slurm.sh      cancels every job, stops the daemons this script started
#
# Everything lives in ${MTLSER_SLURM_DIR:-/var/tmp/mtlser-slurm}: slurm.conf, state, spool,
# daemon logs, PID files. Once the node is idle the script writes slurm.env there
# (SLURM_CONF=.../slurm.conf); the tests read that file to find this Slurm (tests/conftest.py, used by
# tests/test_slurm.py), so nothing has to be exported by hand. To use it from a shell:
#     export $(cat /var/tmp/mtlser-slurm/slurm.env); sinfo
# The daemons listen on 127.0.0.1 only (ports 6817/6818).
set -euo pipefail

dir=${MTLSER_SLURM_DIR:-/var/tmp/mtlser-slurm}
conf=${dir}/slurm.conf
env_file=${dir}/slurm.env

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (start_slurm.sh) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Up = our env file is there, the controller answers and the node takes jobs.
node_state() { SLURM_CONF=${conf} sinfo -h -N -o %T 2>/dev/null | head -n 1; }
if [ -f "${env_file}" ] && SLURM_CONF=${conf} scontrol ping 2>/dev/null | grep -q 'is UP' \
        && [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; then
    log "Slurm is already up ($(cat "${env_file}")); nothing to do"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "run as root: it installs packages and runs munged as the munge user"
rm -f "${env_file}"   # from here on, not up until said otherwise

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    log "installing slurmctld slurmd slurm-client munge (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

mkdir -p "${dir}/state" "${dir}/spool"

# munge authenticates every Slurm message. Reuse a munged that answers; otherwise start ours.
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -f /etc/munge/munge.key ] || setpriv --reuid=munge --regid=munge --init-groups mungekey --create
    install -d -o munge -g munge -m 0755 /run/munge
    setsid setpriv --reuid=munge --regid=munge --init-groups munged --foreground \
        --log-file="${dir}/munged.log" >/dev/null 2>&1 </dev/null &
    echo $! > "${dir}/munged.pid"   # ours to stop (tools/stop_slurm.sh)
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n </dev/null | unmunge >/dev/null || die "munged did not start; see ${dir}/munged.log"
fi

# A slurm.conf sized to this machine: CPUs and memory as slurmd sees them.
host=$(hostname -s)
hw=$(slurmd -C | head -n 1)
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"${hw}")
mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"${hw}")
[ -n "${cpus}" ] && [ -n "${mem}" ] || die "cannot read CPUs and memory from 'slurmd -C': ${hw}"
cat > "${conf}.tmp" <<EOF
# Written by tools/start_slurm.sh: a single node on localhost for mtlser's tests.
ClusterName=mtlser
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=${dir}/state
SlurmdSpoolDir=${dir}/spool
SlurmctldPidFile=${dir}/slurmctld.pid
SlurmdPidFile=${dir}/slurmd.pid
SlurmctldLogFile=${dir}/slurmctld.log
SlurmdLogFile=${dir}/slurmd.log
# No cgroups without systemd: plain process tracking, no task binding, no accounting.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
# Jobs share the node by CPU and memory.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
# Finished jobs leave the controller after 4 s, so 'sbatch --wait' returns in ~2 s instead of ~10 s;
# a cancelled or requeued job gets SIGKILL 5 s after SIGTERM.
MinJobAge=4
KillWait=5
ReturnToService=2
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
mv "${conf}.tmp" "${conf}"

export SLURM_CONF=${conf}
# Daemons of an earlier start (their PID files are ours) are stopped first: a clean restart.
for d in slurmd slurmctld; do
    pid=$(cat "${dir}/${d}.pid" 2>/dev/null || true)
    if [ -n "${pid}" ] && [ "$(cat "/proc/${pid}/comm" 2>/dev/null)" = "${d}" ]; then
        kill "${pid}"
        while kill -0 "${pid}" 2>/dev/null; do sleep 0.1; done
    fi
done
setsid slurmctld -D -c -f "${conf}" >>"${dir}/slurmctld.out" 2>&1 </dev/null &
setsid slurmd -D -c -f "${conf}" >>"${dir}/slurmd.out" 2>&1 </dev/null &

for _ in $(seq 600); do
    [ "$(node_state)" = idle ] && break
    sleep 0.1
done
if [ "$(node_state)" != idle ]; then
    tail -n 20 "${dir}/slurmctld.log" "${dir}/slurmd.log" >&2 || true
    die "the node is not idle after 60 s (state '$(node_state)'); logs in ${dir}"
fi
echo "SLURM_CONF=${conf}" > "${env_file}.tmp"
mv "${env_file}.tmp" "${env_file}"
log "Slurm is up: node ${host}, ${cpus} CPUs, ${mem} MB; ${env_file} says SLURM_CONF=${conf}"
