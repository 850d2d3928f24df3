#!/usr/bin/env bash
# Reproduction: Job.prepare is quadratic in the number of inputs of a job.
# For each N: N existing files out/{i}.txt (each the output of its own `make` job) and an
# existing agg.txt (made by `touch`, no job runs for them); then, wall and CPU seconds of
#   (a) snakemake agg.txt -j1                  "Nothing to be done": DAG and checks only
#   (b) snakemake agg.txt -j1 --forcerun agg   the same DAG + one job that does nothing
#   (t) as (b), Job.is_pipe_or_service_input wrapped with a timer: CPU seconds spent inside it
#   (c) as (b), with the suggested fix applied in memory (a set built once per job)
# Usage: bash run.sh [N ...]      default N: 2000 4000 8000 16000
# Env:   SNAKEMAKE=/path/to/snakemake (default: snakemake on PATH; pip install snakemake==9.27.1)
#        PROFILE=N also runs (b) for that N under cProfile and prints the top lines
set -u
SM=$(command -v "${SNAKEMAKE:-snakemake}") || { echo "snakemake not found"; exit 2; }
PY=$(head -1 "$SM" | sed 's/^#!//')           # the interpreter snakemake is installed in
SIZES=${*:-2000 4000 8000 16000}
HERE=$(cd "$(dirname "$0")" && pwd)
echo "snakemake $("$SM" --version) ($SM), $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"

LAUNCH='
import os, sys, time, atexit
from snakemake.jobs import Job
orig = Job.is_pipe_or_service_input
if os.environ["MODE"] == "timed":
    spent = [0.0, 0]
    def is_pipe_or_service_input(self, path):
        t = time.process_time(); r = orig(self, path)
        spent[0] += time.process_time() - t; spent[1] += 1
        return r
    atexit.register(lambda: open(os.environ["OUT"], "w").write(f"{spent[0]:.1f} {spent[1]}"))
else:  # "fixed": same answer from a set built once per job
    _sets = {}
    def is_pipe_or_service_input(self, path):
        s = _sets.get(self)
        if s is None:
            s = _sets[self] = {f for dep, files in self.dag.dependencies[self].items()
                               if dep.pipe_or_service_output for f in files if f in dep.pipe_or_service_output}
        return path in s
Job.is_pipe_or_service_input = is_pipe_or_service_input
from snakemake.cli import main
sys.argv[0] = "snakemake"
sys.exit(main())
'
measure() {  # run "$@", print "wall/cpu" seconds (cpu = user + sys of the process and its children)
  local TIMEFORMAT='%R %U %S' tm
  tm=$( { time "$@" >>"$LOG" 2>&1; } 2>&1 ) || { echo "command failed, see $LOG" >&2; exit 1; }
  echo "$tm" | awk '{printf "%.1f/%.1f", $1, $2 + $3}'; }
cpu() { echo "${1#*/}"; }

echo "times: wall/CPU seconds"
printf '%6s | %10s | %10s | %13s | %6s | %19s | %10s\n' N "(a)" "(b)" "(b)-(a) CPU" "x prev" "(t) CPU in method" "(c)"
prev=""
for N in $SIZES; do
  W=$(mktemp -d /tmp/smk-quad-XXXXXX); cp "$HERE/Snakefile" "$W/"; cd "$W" || exit 2
  LOG=$W/log.txt; ARGS=(agg.txt -j1 --forcerun agg --config nfiles=$N)
  mkdir out; (cd out && seq 0 $((N-1)) | sed 's/$/.txt/' | xargs touch); sleep 1; touch agg.txt
  a=$(measure "$SM" agg.txt -j1 --config nfiles=$N)
  grep -q "Nothing to be done" "$LOG" || { echo "unexpected: (a) had work to do, see $LOG"; exit 1; }
  b=$(measure "$SM" "${ARGS[@]}")
  MODE=timed OUT=$W/timed.txt measure "$PY" -c "$LAUNCH" "${ARGS[@]}" >/dev/null; t=$(cat timed.txt)
  c=$(MODE=fixed measure "$PY" -c "$LAUNCH" "${ARGS[@]}")
  d=$(printf '%.1f' "$(echo "$(cpu "$b") - $(cpu "$a")" | bc)")
  r=-; [ -n "$prev" ] && r=$(printf '%.1f' "$(echo "scale=3; $d / $prev" | bc)")
  printf '%6s | %10s | %10s | %13s | %6s | %19s | %10s\n' "$N" "$a" "$b" "$d" "$r" "${t% *} s, ${t#* } calls" "$c"
  prev=$d
  if [ "${PROFILE:-}" = "$N" ]; then
    "$PY" -m cProfile -s cumtime -m snakemake "${ARGS[@]}" >profile.txt 2>&1
    echo "  cProfile of (b), N=$N ($W/profile.txt):"
    grep -E "function calls|ncalls|cli.py:[0-9]+\(main\)|jobs.py:[0-9]+\((prepare|is_pipe_or_service_input)\)|__init__.py:[0-9]+\(__hash__\)" profile.txt | head -6 | sed 's/^/    /'
  fi
  cd /tmp; rm -rf "$W/out"
done
