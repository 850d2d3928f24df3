#!/usr/bin/env bash
# Reproduction: the job rate limiter's re-evaluation timers multiply, and the last one holds
# the finished run for up to one timespan.
# Every pass of the scheduler loop that ends with jobs still waiting for a free job place starts
# a new threading.Timer(timespan) that wakes the loop once more; that pass starts another one.
# Each job that ends (and each job that starts) adds a pass, hence a new chain of timers: the
# passes grow with jobs x time. The timers are not daemon threads, so the interpreter waits for
# the last one before the process exits.
# For each N (jobs of `delay` seconds, -j 2, so jobs wait for a place most of the run):
#   (a) snakemake as installed (default --max-jobs-per-timespan 100/1s)
#   (c) the same with the suggested fix applied in memory: at most one pending timer, a daemon
# Printed: wall seconds, CPU seconds of the snakemake process, scheduler passes (debug lines
# "Resources before job selection" of --verbose) and seconds from the last job's end to exit.
# Usage: bash run.sh [N ...]      default N: 20 40 80
# Env:   SNAKEMAKE=/path/to/snakemake (default: snakemake on PATH; pip install snakemake==9.27.1)
#        DELAY=0.5 (seconds each job sleeps)  SPAN=1s (--max-jobs-per-timespan 100/$SPAN)
set -u
SM=$(command -v "${SNAKEMAKE:-snakemake}") || { echo "snakemake not found"; exit 2; }
PY=$(head -1 "$SM" | sed 's/^#!//')           # the interpreter snakemake is installed in
SIZES=${*:-20 40 80}
DELAY=${DELAY:-0.5}
SPAN=${SPAN:-1s}
HERE=$(cd "$(dirname "$0")" && pwd)
echo "snakemake $("$SM" --version) ($SM), $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"

LAUNCH='
import os, sys, threading
if os.environ["MODE"] == "fixed":
    from snakemake.scheduling.job_scheduler import JobScheduler
    def _schedule_reevalutation(self, delay):
        with self._lock:
            if getattr(self, "_reevaluation_pending", False):
                return  # one pending wake-up is enough: the pass it causes sees every change
            self._reevaluation_pending = True
        def wake():
            with self._lock:
                self._reevaluation_pending = False
            self._open_jobs.release()
        timer = threading.Timer(delay, wake)
        timer.daemon = True  # nothing to wait for once the run is over
        timer.start()
    JobScheduler._schedule_reevalutation = _schedule_reevalutation
from snakemake.cli import main
sys.argv[0] = "snakemake"
sys.exit(main())
'
one() {  # MODE N -> "wall cpu passes exit-delay"
  local W LOG TIMEFORMAT='%R %U %S' tm last
  W=$(mktemp -d /tmp/smk-timers-XXXXXX); cp "$HERE/Snakefile" "$W/"; cd "$W" || exit 2
  LOG=$W/log.txt
  tm=$( { time MODE=$1 "$PY" -c "$LAUNCH" --config nfiles="$2" delay="$DELAY" -j 2 --verbose \
          --max-jobs-per-timespan "100/$SPAN" >"$LOG" 2>&1; } 2>&1 ) || { echo "failed, see $LOG" >&2; exit 1; }
  local end; end=$(date +%s.%N)
  last=$(cat out/*.txt | sort -n | tail -1)
  echo "$tm $(grep -c 'Resources before job selection' "$LOG") $(echo "$end - $last" | bc)" |
    awk '{printf "%5.1f s %4.1f s %6d %5.2f s", $1, $2 + $3, $4, $5}'
  cd /tmp; rm -rf "$W"
}
echo "-j 2, jobs of $DELAY s, --max-jobs-per-timespan 100/$SPAN; columns: wall, CPU, scheduler passes, last job end -> exit"
printf '%5s | %-33s | %-33s\n' N "(a) as installed" "(c) one pending daemon timer"
fail=0
for N in $SIZES; do
  a=$(one plain "$N"); c=$(one fixed "$N")
  printf '%5s | %-33s | %-33s\n' "$N" "$a" "$c"
  pa=$(echo "$a" | awk '{print $5}')
  [ "$pa" -gt $((4 * N)) ] && fail=1   # a pass per job start and end, plus one per second, is ~2N
done
if [ $fail = 1 ]; then echo "FAIL  the scheduler passes grow faster than the jobs (timers multiply)"; exit 1; fi
echo "ok"
