#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm_live.py (`make test-slurm`).
#
#   tests/slurm/local_cluster.sh install     install SLURM and munge where missing (Debian packages)
#   tests/slurm/local_cluster.sh start DIR   install what is missing, configure, start; prints SLURM_CONF=...
#   tests/slurm/local_cluster.sh stop DIR    stop the daemons this script started from DIR
#
# What it sets up, and why:
# - SLURM and munge from Debian's packages (slurmctld, slurmd, slurm-client, munge), installed only where
#   a command is missing; this needs root and apt. State, logs and pid files live in DIR. The
#   configuration is DIR/slurm.conf, copied to /etc/slurm/slurm.conf (removed again by stop) because
#   the SLURM executor plugin drops SLURM_* variables (SLURM_CONF too) before it submits, so the jobs'
#   srun finds the configuration only in the default place. A slurm.conf this script did not write is
#   never replaced: start stops with an error instead (a machine that is already a SLURM node).
# - munged (SLURM's authentication) as the munge user, with its own socket in a folder of its own.
# - One node (this machine) in two partitions, `cpu` (default) and `gpu`, without GPUs and without an
#   accounting database, as in issue 17: the setting the profile must work on without hand edits.
#   The node is declared with 8 CPUs and 64 GB whatever the machine has (SlurmdParameters=config_overrides),
#   so the profile's requests (8 threads per training job) are accepted on a small machine; SLURM does
#   not confine jobs to them here (no cgroups), it only schedules by them.
# - MinJobAge=600: squeue lists a finished job for 10 minutes, long enough for Snakemake's status
#   queries with --slurm-status-command squeue.
set -euo pipefail

action=${1:?usage: $0 install | start DIR | stop DIR}
case $action in
    install | start | stop) ;;
    *) echo "unknown action '$action'; allowed: install, start, stop" >&2; exit 2 ;;
esac
if [[ $action != install ]]; then
    dir=${2:?usage: $0 start|stop DIR}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
fi

ETC_CONF=/etc/slurm/slurm.conf
MARK="# written by deq-harness tests/slurm/local_cluster.sh"

stop() {
    # Jobs first, while the daemons can still end them (slurmd's end does not kill a job's processes).
    if [[ -s $dir/slurmctld.pid ]] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
        SLURM_CONF=$dir/slurm.conf scancel --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 150); do  # at most 30 s
            [[ -z $(SLURM_CONF=$dir/slurm.conf squeue --noheader 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
    for daemon in slurmd slurmctld munged; do
        if [[ -s $dir/$daemon.pid ]]; then
            kill "$(cat "$dir/$daemon.pid")" 2>/dev/null || true
        fi
    done
    for daemon in slurmd slurmctld munged; do  # wait (at most 10 s each) until they are gone
        for _ in $(seq 50); do
            [[ -s $dir/$daemon.pid ]] && kill -0 "$(cat "$dir/$daemon.pid")" 2>/dev/null || break
            sleep 0.2
        done
        rm -f "$dir/$daemon.pid"
    done
    # A job's processes can outlive it: a step suspended, then cancelled, may leave its program running
    # without a parent. They carry this cluster's SLURM_CONF in their environment; nothing else does.
    local environ pid
    for environ in /proc/[0-9]*/environ; do
        pid=${environ#/proc/}
        pid=${pid%/environ}
        if [[ $pid != "$$" ]] && { tr '\0' '\n' < "$environ"; } 2>/dev/null | grep -qxF "SLURM_CONF=$dir/slurm.conf"; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    if [[ -f $ETC_CONF ]] && [[ $(head -n1 "$ETC_CONF") == "$MARK" ]]; then
        rm -f "$ETC_CONF"
    fi
    if [[ -s $dir/munge-dir ]]; then
        rm -rf "$(cat "$dir/munge-dir")" "$dir/munge-dir"
    fi
}

install_missing() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    if ((${#missing[@]})); then
        echo "installing ${missing[*]} (Debian packages)" >&2
        [[ $(id -u) == 0 ]] || { echo "installing SLURM needs root (apt-get); run as root or install ${missing[*]}" >&2; exit 1; }
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
}

start() {
    install_missing
    stop  # a cluster left over from an earlier, killed test in the same DIR
    local host
    host=$(hostname -s)
    mkdir -p "$dir/state" "$dir/spool"
    # munged runs as the munge user, which may not enter DIR (pytest's folders are private to root), so
    # it gets a folder of its own, named in DIR/munge-dir and removed by stop.
    local munge
    munge=$(mktemp -d /tmp/deq-harness-munge.XXXXXX)
    echo "$munge" > "$dir/munge-dir"
    chown munge: "$munge"
    [[ -s /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || create-munge-key -f; } >&2
    runuser -u munge -- /usr/sbin/munged --socket="$munge/munge.socket" --pid-file="$munge/munged.pid" \
        --log-file="$munge/munged.log" --seed-file="$munge/munged.seed" --force
    cp "$munge/munged.pid" "$dir/munged.pid"
    if [[ -e $ETC_CONF ]] && [[ $(head -n1 "$ETC_CONF") != "$MARK" ]]; then
        echo "$ETC_CONF exists and was not written by this script: this machine already has a SLURM" \
             "configuration, which a test must not replace; run the test on a machine without one" >&2
        exit 1
    fi
    cat > "$dir/slurm.conf" <<EOF
$MARK
ClusterName=deqtest
SlurmctldHost=$host
AuthType=auth/munge
AuthInfo=socket=$munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host CPUs=8 RealMemory=64000 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
    mkdir -p "$(dirname "$ETC_CONF")"
    cp "$dir/slurm.conf" "$ETC_CONF.tmp" && mv "$ETC_CONF.tmp" "$ETC_CONF"
    export SLURM_CONF=$dir/slurm.conf
    /usr/sbin/slurmctld -f "$SLURM_CONF"
    /usr/sbin/slurmd -f "$SLURM_CONF"
    for _ in $(seq 100); do  # ready when the node takes jobs (at most 20 s)
        if sinfo -h -N -o %t 2>/dev/null | grep -qx idle; then
            echo "SLURM_CONF=$SLURM_CONF"
            return
        fi
        sleep 0.2
    done
    echo "SLURM did not come up; logs in $dir:" >&2
    tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
    stop
    exit 1
}

case $action in
    install) install_missing ;;
    start) start ;;
    stop) stop ;;
esac
