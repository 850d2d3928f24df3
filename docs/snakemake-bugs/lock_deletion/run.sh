#!/usr/bin/env bash
# Reproduction: a Snakemake run that ends deletes the lock files of another, still running
# Snakemake run in the same directory, so a third run of the same target is no longer refused.
# Usage: bash run.sh [job|nothing|touch]   (needs `snakemake` on PATH: pip install snakemake==9.27.1)
#   job      (default) run B makes b.txt
#   nothing  b.txt is made before run A starts, so run B says "Nothing to be done"
#   touch    run B is `snakemake --touch b.txt` (b.txt made before run A starts)
# Env: SNAKEMAKE=/path/to/snakemake  SLEEP=20 (seconds rule slow sleeps)
#      EXTRA="--persistence-backend db" (extra arguments for every snakemake call)
set -u
MODE=${1:-job}
case $MODE in job) B_ARGS=(b.txt) ;; nothing) B_ARGS=(b.txt) ;; touch) B_ARGS=(--touch b.txt) ;;
  *) echo "usage: $0 [job|nothing|touch]"; exit 2 ;; esac
SM=${SNAKEMAKE:-snakemake}
SLEEP=${SLEEP:-20}
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /tmp/smk-lock-XXXXXX)
cp "$HERE/Snakefile" "$W/"
cd "$W" || exit 2
echo "workdir: $W   snakemake $($SM --version)   mode: $MODE"
sm() { "$SM" "$@" ${EXTRA:-} -j1 --config sleep="$SLEEP"; }  # targets first: --config takes all following words
if [[ "${EXTRA:-}" == *db* ]]; then  # database backend: the locks are rows of .snakemake/metadata.db
  lock_list() { python3 -c 'import sqlite3; c = sqlite3.connect("file:.snakemake/metadata.db?mode=ro", uri=True)
for t, p in c.execute("select lock_type, file_path from snakemake_locks"): print(f"{t}:{p}")' 2>/dev/null; }
  locks() { echo "  rows of snakemake_locks: $(lock_list | tr '\n' ' ')"; }
else
  lock_list() { ls .snakemake/locks 2>/dev/null; }
  locks() { echo "  ls .snakemake/locks: $(ls .snakemake/locks 2>&1 | tr '\n' ' ')"; }
fi
fail=0
if [ "$MODE" != job ]; then sm b.txt >run_B0.log 2>&1 || { echo "SETUP ERROR: see $W/run_B0.log"; exit 2; }; fi
check() { if eval "$2"; then echo "PASS  $1"; else echo "FAIL  $1"; fail=1; fi; }

echo "== 1. run A: snakemake a.txt in the background (its job sleeps ${SLEEP}s)"
sm a.txt >run_A.log 2>&1 & A=$!
for _ in $(seq 100); do [ -s a_starts.log ] && break; sleep 0.2; done
[ -s a_starts.log ] || { echo "SETUP ERROR: run A did not start its job; see $W/run_A.log"; exit 2; }
locks
check "run A holds a lock" '[ -n "$(lock_list)" ]'

echo "== 2. control: a second 'snakemake a.txt' while A runs"
sm a.txt >run_A2.log 2>&1; rc=$?
echo "  exit $rc: $(grep -m1 -o 'Directory cannot be locked' run_A2.log)"
check "second run of a.txt is refused (expected)" '[ $rc -ne 0 ] && grep -q "cannot be locked" run_A2.log'

echo "== 3. run B: snakemake ${B_ARGS[*]} (unrelated target; allowed, locks do not overlap)"
sm "${B_ARGS[@]}" >run_B.log 2>&1 & B=$!
for _ in $(seq 100); do [ "$(lock_list | wc -l)" -ge 2 ] && break; kill -0 $B 2>/dev/null || break; sleep 0.05; done
if [ "$(lock_list | wc -l)" -ge 2 ]; then echo "  while B runs:"; locks; else echo "  (B ended before both runs' locks could be listed)"; fi
wait $B; rcB=$?
echo "  run B exit $rcB ($(grep -m1 -o -e 'Nothing to be done' -e 'steps (100%) done' run_B.log)); after B ended:"; locks
check "run A is still running" 'kill -0 $A 2>/dev/null'
check "run A's locks still exist after B ended (expected)" '[ -n "$(lock_list)" ]'

echo "== 4. the control of step 2 again: 'snakemake a.txt' while A still runs"
sm a.txt >run_A3.log 2>&1 & C=$!
for _ in $(seq 100); do [ "$(wc -l <a_starts.log)" -ge 2 ] && break; kill -0 $C 2>/dev/null || break; sleep 0.1; done
if [ "$(wc -l <a_starts.log)" -ge 2 ]; then
  kill -0 $A 2>/dev/null && alive=yes || alive=no
  echo "  run 3 started rule slow a second time; run A still running at that moment: $alive"
fi
wait $C; rc=$?
echo "  run 3 exit $rc; $(wc -l <a_starts.log) start(s) of rule slow in a_starts.log"
check "third run of a.txt is refused as in step 2 (expected)" 'grep -q "cannot be locked" run_A3.log'
check "rule slow ran once (expected)" '[ "$(wc -l <a_starts.log)" -eq 1 ]'
wait $A; echo "  run A exit $?"
if [ $fail -ne 0 ]; then echo "RESULT: bug reproduced (FAIL lines above)"; else echo "RESULT: not reproduced"; fi
echo "logs in $W"
exit $fail   # 1: bug reproduced, 0: not reproduced, 2: setup error
