#!/usr/bin/env bash
# Start a one-node SLURM on this machine, for tests/cluster (run as root).
#
#   bash tests/cluster/start_slurm.sh      # install, configure, start, wait for "idle"
#   bash tests/cluster/stop_slurm.sh       # stop the daemons again
#
# What it does, each step skipped when already done (safe to run repeatedly):
#   1. installs Debian's slurm-wlm and munge if slurmctld/munged are missing;
#   2. creates /etc/munge/munge.key if absent and starts munged (unix socket only);
#   3. writes /etc/slurm/slurm.conf for this host: one node, one partition,
#      no cgroups, no accounting database, everything on 127.0.0.1;
#   4. starts slurmctld and slurmd as plain daemons (no systemd needed);
#   5. waits until `sinfo` shows the node idle (SLURM_START_TIMEOUT, default 60 s),
#      printing the daemons' logs when it does not.
# When the daemons already run with the same slurm.conf and the node is up, it
# returns at once; when slurm.conf changed, it restarts them.
#
# Tunables (environment):
#   SLURM_TEST_CPUS      CPUs the node advertises (default: max(8, 4 × nproc)).
#                        Deliberately more than the real cores: test jobs are
#                        tiny and mostly wait, so 8+ single-core jobs should run
#                        at once even on a 2-core machine. slurmd accepts the
#                        inflated count thanks to SlurmdParameters=config_overrides.
#   SLURM_MIN_JOB_AGE    seconds a finished job stays visible to squeue
#                        (default 300, SLURM's own default; the profile's status
#                        checks are spaced far below that).
#   SLURM_START_TIMEOUT  seconds to wait for the node to become idle (default 60).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE_DIR=/var/lib/slurm # Debian's packaged dirs: slurmctld/ and slurmd/ below
LOG_DIR=/var/log/slurm
NODE=$(hostname -s)
CPUS=${SLURM_TEST_CPUS:-$(($(nproc) * 4 > 8 ? $(nproc) * 4 : 8))}
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) # no procps needed
MIN_JOB_AGE=${SLURM_MIN_JOB_AGE:-300}
TIMEOUT=${SLURM_START_TIMEOUT:-60}

log() { printf '[start_slurm] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, starts daemons)"

install_packages() {
    if [[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd && -x /usr/sbin/munged ]] &&
        command -v sinfo >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge (apt-get)"
    local t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    log "packages installed in $((SECONDS - t0)) s"
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    # munged wants these owned by its own user; a fresh container has no /run/munge.
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    log "starting munged"
    # a stale socket/pid from a killed munged makes the new one refuse to start
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "munged does not answer; see /var/log/munge/munged.log:
$(tail -n 30 /var/log/munge/munged.log 2>/dev/null)"
}

# Print slurm.conf for this host on stdout. Keys checked against Slurm 22.05
# (Debian 12); every value here is accepted by 22.05 and later releases.
render_conf() {
    cat <<EOF
# Written by tests/cluster/start_slurm.sh: a one-node SLURM for tests.
ClusterName=testcluster
# Controller and node are this host; clients reach both on loopback only.
SlurmctldHost=${NODE}(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
# Bind slurmctld (NoCtldInAddrAny), slurmd, srun to 127.0.0.1, not 0.0.0.0.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SrunPortRange=60001-60100
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=${STATE_DIR}/slurmctld
SlurmdSpoolDir=${STATE_DIR}/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (containers rarely delegate them): track processes via /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# No accounting database: sacct/sacctmgr do not work, squeue does.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue this long (Snakemake polls with squeue).
MinJobAge=${MIN_JOB_AGE}
# Schedule on cores; memory is not a consumable resource (CR_Core), so the
# mem_mb of many small jobs never blocks them, only a request above RealMemory.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Accept CPUs/RealMemory below as written, even above the real hardware.
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
Waittime=0
NodeName=${NODE} NodeHostname=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

# pid_alive PIDFILE NAME: the pid file names a live process called NAME
# (a stale pid file may name an unrelated process that reused the pid).
pid_alive() {
    [[ -s $1 ]] && [[ $(cat "/proc/$(cat "$1")/comm" 2>/dev/null) == "$2" ]]
}

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1; }

print_logs() {
    local f
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
        log "---- last lines of $f ----"
        tail -n 40 "$f" >&2 2>/dev/null || log "(no $f)"
    done
    log "---- scontrol show node $NODE ----"
    scontrol show node "$NODE" >&2 2>&1 || true
}

write_conf() {
    local new
    new=$(render_conf)
    mkdir -p "$CONF_DIR"
    if [[ -f $CONF ]] && [[ $new == "$(cat "$CONF")" ]]; then
        return 1 # unchanged
    fi
    printf '%s\n' "$new" >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    log "wrote $CONF (node $NODE, CPUs=$CPUS, RealMemory=${MEM_MB} MB, MinJobAge=$MIN_JOB_AGE)"
    return 0
}

start_daemons() {
    mkdir -p "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$LOG_DIR"
    chown slurm:slurm "$STATE_DIR/slurmctld" "$LOG_DIR"
    if ! pid_alive /run/slurmctld.pid slurmctld; then
        log "starting slurmctld"
        # -i: ignore unreadable state left by an earlier, killed controller
        /usr/sbin/slurmctld -i
    fi
    if ! pid_alive /run/slurmd.pid slurmd; then
        log "starting slurmd"
        # -N: our node name, whatever the resolver says about this hostname
        /usr/sbin/slurmd -N "$NODE"
    fi
}

wait_idle() {
    local t0=$SECONDS state=""
    while ((SECONDS - t0 < TIMEOUT)); do
        state=$(node_state || true)
        case $state in
        # exact states only: "idle*" means "not responding", "idle~" powered off
        idle | mix | alloc)
            log "SLURM ready: node $NODE is $state after $((SECONDS - t0)) s"
            return 0
            ;;
        down* | drain* | drng* | fail*)
            # e.g. left down by an earlier run: ReturnToService=2 does not
            # always resume a node that was set down by hand.
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
            ;;
        esac
        if ! pid_alive /run/slurmctld.pid slurmctld || ! pid_alive /run/slurmd.pid slurmd; then
            print_logs
            die "a SLURM daemon exited during start-up (see logs above)"
        fi
        sleep 0.5
    done
    print_logs
    die "node $NODE not idle after ${TIMEOUT} s (last state: '${state:-none}'); see logs above"
}

ensure_hostname_resolves() {
    # srun binds its I/O ports to the address this host name resolves to
    # (NoInAddrAny); a fresh container may not list its own name at all.
    local addr
    addr=$(getent hosts "$NODE" | awk '{print $1; exit}') || true
    if [[ -z $addr ]]; then
        log "adding '127.0.0.1 $NODE' to /etc/hosts (name did not resolve)"
        printf '127.0.0.1\t%s\n' "$NODE" >>/etc/hosts
    elif [[ $addr != 127.* ]]; then
        log "warning: $NODE resolves to $addr, so srun listens there, not on loopback"
    fi
}

install_packages
ensure_hostname_resolves
start_munge
if write_conf; then
    # configuration changed: running daemons must pick it up
    bash "$(dirname "$0")/stop_slurm.sh" --keep-munge
fi
start_daemons
wait_idle
