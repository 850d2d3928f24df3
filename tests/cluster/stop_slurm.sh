#!/usr/bin/env bash
# Stop the one-node SLURM started by tests/cluster/start_slurm.sh.
#
#   bash tests/cluster/stop_slurm.sh               # slurmd, slurmctld and munged
#   bash tests/cluster/stop_slurm.sh --keep-munge  # leave munged running
#
# Stops each daemon by the pid in its pid file (never by process name), and only
# when that pid is still the daemon (not a process that reused a stale pid);
# waits up to 10 s for it to exit, then sends SIGKILL. Safe when nothing runs.
set -euo pipefail

keep_munge=false
[[ ${1:-} == --keep-munge ]] && keep_munge=true

log() { printf '[stop_slurm] %s\n' "$*" >&2; }

stop_pidfile() {
    local name=$1 pidfile=$2 pid
    [[ -s $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) != "$name" ]]; then
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not exit after 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop_pidfile slurmd /run/slurmd.pid
stop_pidfile slurmctld /run/slurmctld.pid
$keep_munge || stop_pidfile munged /run/munge/munged.pid
