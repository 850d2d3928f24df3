#!/usr/bin/env bash
# Reproduction: with snakemake-executor-plugin-slurm installed, every `snakemake` command runs
# `scontrol show config` while it imports the plugin, also a local run that never uses SLURM.
# When the SLURM controller does not answer quickly, every command waits for it.
# Usage: bash run.sh   (needs `snakemake` and the plugin: pip install snakemake==9.27.1
#                       snakemake-executor-plugin-slurm==2.8.0; no SLURM installation needed:
#                       fake SLURM tools are put first on PATH)
# Env: SNAKEMAKE=/path/to/snakemake  DELAY=5 (seconds the fake scontrol takes in the second run,
#      as a controller that does not answer; a real scontrol gives up after about 9 s)
set -u
SM=${SNAKEMAKE:-snakemake}
DELAY=${DELAY:-5}
W=$(mktemp -d /tmp/smk-slurm-import-XXXXXX)
cd "$W" || exit 2
mkdir bin
# sinfo/squeue/sacct exist (the plugin looks for them); scontrol logs its call, then sleeps for
# the number of seconds in ./delay.
for t in sinfo squeue sacct; do printf '#!/bin/sh\nexit 0\n' >bin/$t; done
printf '#!/bin/sh\necho "scontrol $*" >>%s/calls.log\nsleep "$(cat %s/delay)"\nexit 1\n' "$W" "$W" >bin/scontrol
chmod +x bin/*
export PATH="$W/bin:$PATH"
printf 'rule all:\n    output: "a.txt"\n    shell: "touch {output}"\n' >Snakefile
echo "workdir: $W   snakemake $($SM --version)"

run() {  # $1 = scontrol delay; prints the wall time of a local dry run and the scontrol calls
  echo "$1" >delay
  : >calls.log
  local s e
  s=$(date +%s%N)
  "$SM" -n -j1 >dry_run.log 2>&1
  e=$(date +%s%N)
  echo "   wall: $(((e - s) / 1000000)) ms   scontrol calls: $(wc -l <calls.log) ($(sort -u calls.log | tr '\n' ' '))"
}
echo "== snakemake -n -j1 (a local run), scontrol answers at once"
run 0
echo "== the same, scontrol takes ${DELAY} s (a controller that does not answer)"
run "$DELAY"
if [ -s calls.log ]; then
  echo "FAIL  a local dry run ran 'scontrol show config' and waited for it"
  exit 1
fi
echo "PASS  no scontrol call"
