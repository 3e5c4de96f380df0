#!/usr/bin/env bash
# Many-core scaling on this machine: measured peak, a short tune at 4096^3 and 1024^3 on every core,
# then tuned/default/numpy side by side on 1..N threads. Usage: benchmarks/scaling.sh OUTDIR [THREADS]
set -euo pipefail
out=${1:?output directory}
threads=${2:-1,2,4,8,16}
max=${threads##*,}
mkdir -p "$out"
export AUTOGEMM_DATA_DIR="$out/data"
python3 -m autogemm info --peak --json "$out/info.json"
python3 -m autogemm tune --shape 4096 --shape 1024 --threads "$max" --trials 20 --timeout 120 \
    --tuned-dir "$out/tuned" --json "$out/tune.json"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 -m autogemm bench --shape 4096 --shape 1024 \
    --threads "$threads" --rounds 3 --tuned-dir "$out/tuned" --json "$out/scaling.json"
