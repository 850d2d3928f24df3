#!/usr/bin/env bash
# Reproduction: Job.prepare is quadratic in the number of inputs of a job.
# For each N: N existing files out/{i}.txt (each the output of its own `make` job) and an
# existing agg.txt; then time
#   (a) snakemake agg.txt -j1                   "Nothing to be done" (DAG + checks only)
#   (b) snakemake agg.txt -j1 --forcerun agg    the same DAG + one job that does nothing
#   (c) as (b) with the suggested fix applied in memory (optional, FIX=1, the default)
# (b) - (a) is the cost of running the one aggregate job; it grows ~4x when N doubles.
# Usage: bash run.sh [N ...]      default N: 2000 4000 8000 16000
# Env:   SNAKEMAKE=/path/to/snakemake (default: snakemake on PATH; pip install snakemake==9.27.1)
#        FIX=0 skips (c);  PROFILE=N also runs (b) for that N under cProfile
set -u
SM=$(command -v "${SNAKEMAKE:-snakemake}") || { echo "snakemake not found"; exit 2; }
PY=$(head -1 "$SM" | sed 's/^#!//')           # the interpreter snakemake is installed in
SIZES=${*:-2000 4000 8000 16000}
HERE=$(cd "$(dirname "$0")" && pwd)
echo "snakemake $("$SM" --version) ($SM), $(nproc) cores, python: $PY"

# (c): Job.is_pipe_or_service_input answered from a set built once per job (same answer)
FIXED='
import sys
from snakemake.jobs import Job
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
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >>"$LOG" 2>&1 || { echo "command failed, see $LOG" >&2; exit 1; }; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }

printf '%7s %14s %14s %14s %9s %14s\n' N "(a) nothing s" "(b) -R agg s" "(b)-(a) s" "ratio" "(c) fixed s"
prev=""
for N in $SIZES; do
  W=$(mktemp -d /tmp/smk-quad-XXXXXX); cp "$HERE/Snakefile" "$W/"; cd "$W" || exit 2
  LOG=$W/log.txt
  mkdir out; (cd out && seq 0 $((N-1)) | sed 's/$/.txt/' | xargs touch); sleep 1; touch agg.txt
  a=$(secs "$SM" agg.txt -j1 --config nfiles=$N)
  grep -q "Nothing to be done" "$LOG" || { echo "unexpected: (a) had work to do, see $LOG"; exit 1; }
  b=$(secs "$SM" agg.txt -j1 --forcerun agg --config nfiles=$N)
  c=-; [ "${FIX:-1}" = 1 ] && c=$(secs "$PY" -c "$FIXED" agg.txt -j1 --forcerun agg --config nfiles=$N)
  d=$(echo "$b - $a" | bc)
  r=-; [ -n "$prev" ] && r=$(echo "scale=1; $d / $prev" | bc)
  printf '%7s %14.1f %14.1f %14.1f %9s %14s\n' "$N" "$a" "$b" "$d" "$r" "$c"
  prev=$d
  if [ "${PROFILE:-}" = "$N" ]; then
    "$PY" -m cProfile -s cumtime -m snakemake agg.txt -j1 --forcerun agg --config nfiles=$N >profile.txt 2>&1
    echo "  cProfile of (b), N=$N ($W/profile.txt):"
    grep -E "function calls|ncalls|cli.py:[0-9]+\(main\)|jobs.py:[0-9]+\((prepare|is_pipe_or_service_input)\)|__init__.py:[0-9]+\(__hash__\)" profile.txt | head -6 | sed 's/^/    /'
  fi
  cd /tmp; rm -rf "$W/out"
done
