#!/usr/bin/env bash
# Reproduction: a dry-run reads and caches the script of a `script:` rule once per job.
# After the DAG is built, DAG.postprocess runs ScriptProcessor.process_job for every job that
# needs to run; for a `script:` rule it calls script.get_source, which formats the script path,
# opens and reads the whole file through the source cache (smart_open, a tenacity retry wrapper),
# detects its language and computes its cache path - for each job, although the path has no
# wildcards and is the same for all of them. Only the existence check is used.
# For each N (jobs of one rule, none of whose outputs exist), `snakemake -n` with
#   (a) the rule as `shell:`
#   (b) the rule as `script:`
#   (c) as (b), with the suggested fix applied in memory: one check per rule and script path
# Printed: wall/CPU seconds, and (b)-(c) CPU per 1,000 jobs: the cost of the per-job reads.
# Usage: bash run.sh [N ...]      default N: 5000 10000 20000
# Env:   SNAKEMAKE=/path/to/snakemake (default: snakemake on PATH; pip install snakemake==9.27.1)
set -u
SM=$(command -v "${SNAKEMAKE:-snakemake}") || { echo "snakemake not found"; exit 2; }
PY=$(head -1 "$SM" | sed 's/^#!//')           # the interpreter snakemake is installed in
SIZES=${*:-5000 10000 20000}
HERE=$(cd "$(dirname "$0")" && pwd)
echo "snakemake $("$SM" --version) ($SM), $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"

LAUNCH='
import sys
from snakemake.cli import main  # first: snakemake.dag alone is a circular import
from snakemake.dag import ScriptProcessor
original = ScriptProcessor.process_job
def process_job(self, job):
    entry = getattr(job.rule, self.script_type, None)
    if entry is not None and "{" not in str(entry):  # no wildcards or params in the path
        checked = self.__dict__.setdefault("_checked", set())
        if (job.rule.name, str(entry)) in checked:
            return
        checked.add((job.rule.name, str(entry)))
    original(self, job)
ScriptProcessor.process_job = process_job
sys.argv[0] = "snakemake"
sys.exit(main())
'
measure() {  # run "$@", print "wall/cpu" seconds (cpu = user + sys of the process and its children)
  local TIMEFORMAT='%R %U %S' tm
  tm=$( { time "$@" >>"$LOG" 2>&1; } 2>&1 ) || { echo "command failed, see $LOG" >&2; exit 1; }
  grep -q "make  *$N\b" "$LOG" || { echo "unexpected: not $N make jobs, see $LOG" >&2; exit 1; }
  echo "$tm" | awk '{printf "%.1f/%.1f", $1, $2 + $3}'; }
cpu() { echo "${1#*/}"; }

echo "snakemake -n, N jobs of one rule; times: wall/CPU seconds"
printf '%6s | %11s | %11s | %11s | %22s\n' N "(a) shell:" "(b) script:" "(c) fixed" "(b)-(c) CPU per 1000"
for N in $SIZES; do
  W=$(mktemp -d /tmp/smk-script-XXXXXX); cp "$HERE/Snakefile" "$HERE/make.py" "$W/"; cd "$W" || exit 2
  LOG=$W/log.txt
  a=$(measure "$SM" -n --config nfiles="$N" mode=shell)
  b=$(measure "$SM" -n --config nfiles="$N" mode=script)
  c=$(measure "$PY" -c "$LAUNCH" -n --config nfiles="$N" mode=script)
  d=$(echo "$(cpu "$b") $(cpu "$c") $N" | awk '{printf "%.2f s", ($1 - $2) * 1000 / $3}')
  printf '%6s | %11s | %11s | %11s | %22s\n' "$N" "$a" "$b" "$c" "$d"
  cd /tmp; rm -rf "$W"
done
