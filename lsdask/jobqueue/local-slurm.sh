#!/usr/bin/env bash
# A real single-node Slurm on loopback, for lsdask's tests and CI.
#
#   lsdask/jobqueue/local-slurm.sh start    # install (Debian packages) if missing, start, wait idle
#   lsdask/jobqueue/local-slurm.sh status   # exit 0 when the node answers
#   lsdask/jobqueue/local-slurm.sh stop     # cancel jobs, shut down, kill leftovers by pid
#
# Needs root (Debian/Ubuntu, no systemd needed). State, spool, logs and pid files live under
# $LSDASK_SLURM_DIR (default /var/tmp/lsdask-slurm). Env: LSDASK_SLURM_CPUS (default 4).
set -euo pipefail

DIR=${LSDASK_SLURM_DIR:-/var/tmp/lsdask-slurm}
CONF=$DIR/slurm.conf
CPUS=${LSDASK_SLURM_CPUS:-4}
HOST=$(hostname -s)

log() { echo "local-slurm: $*" >&2; }

install_packages() {
    local missing=()
    for b in munged slurmctld slurmd sbatch; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing munge and slurm (missing: ${missing[*]})"
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >&2
    [ $made_policy -eq 1 ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

write_conf() {
    mkdir -p "$DIR"/{state,spool,log}
    if ! getent hosts "$HOST" >/dev/null 2>&1; then
        echo "127.0.0.1 $HOST" >> /etc/hosts
    fi
    local mem=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) / 2 ))
    local comm=""
    case "$(getent hosts "$HOST" | awk '{print $1}' | head -1)" in
        127.*) comm="CommunicationParameters=NoCtldInAddrAny,NoInAddrAny" ;;
    esac
    cat > "$CONF" <<CONF
ClusterName=lsdask
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
${comm}
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=512
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=5
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "munged did not start"; return 1
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -1; }

start() {
    install_packages
    write_conf
    start_munge
    # the default config path, so sbatch/squeue work without SLURM_CONF (only if free)
    if [ ! -e /etc/slurm/slurm.conf ]; then mkdir -p /etc/slurm; ln -s "$CONF" /etc/slurm/slurm.conf; fi
    export SLURM_CONF=$CONF
    alive "$DIR/slurmctld.pid" || /usr/sbin/slurmctld -f "$CONF" -c </dev/null >/dev/null 2>&1
    alive "$DIR/slurmd.pid" || /usr/sbin/slurmd -f "$CONF" </dev/null >/dev/null 2>&1
    local state=""
    for i in $(seq 100); do
        state=$(node_state || true)
        case "$state" in
            idle|mixed|allocated) break ;;
            down*|drain*|*drain) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.2
    done
    case "$state" in
        idle|mixed|allocated) ;;
        *) log "node did not become idle (state '$state'); see $DIR/log"; return 1 ;;
    esac
    log "up: node $HOST ($CPUS CPUs) idle; export SLURM_CONF=$CONF"
}

stop() {
    export SLURM_CONF=$CONF
    if [ -f "$CONF" ]; then
        scancel --full --quiet -u root 2>/dev/null || true
        timeout 10 scontrol shutdown 2>/dev/null || true
    fi
    for p in slurmd slurmctld; do
        local f="$DIR/$p.pid"
        for _ in $(seq 50); do alive "$f" || break; sleep 0.1; done
        if alive "$f"; then kill -9 "$(cat "$f")" 2>/dev/null || true; fi
        rm -f "$f"
    done
    log "stopped"
}

status() {
    export SLURM_CONF=$CONF
    [ -f "$CONF" ] || { log "not configured ($CONF missing)"; return 1; }
    local s; s=$(node_state || true)
    case "$s" in
        idle|mixed|allocated|completing) echo "up: $HOST $s (SLURM_CONF=$CONF)"; return 0 ;;
        *) log "down (node state '$s')"; return 1 ;;
    esac
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
