#!/usr/bin/env bash
# The GPU check (issue 14): profile + PGB under --speedup 2 + bench, BERT-base geometry, CUDA fp32 and fp16.
# Under 5 minutes on one GPU. `bash benchmarks/gpu_check.sh cpu` runs the same steps on the CPU, smaller
# (batch 4, seq 64), to prepare it where no GPU is lent. Results: $OUT (or benchmarks/out) gpu-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-cuda}
out=${OUT:-benchmarks/out}
mkdir -p "$out"
export PGBERT_CACHE_DIR="${PGBERT_CACHE_DIR:-$out/cache}"
if [ "$mode" = cpu ]; then
  python benchmarks/speedup_targets.py --device cpu --dtype float32 --threads 2 --batch 4 --seq 64 \
    --speedup 2 --repeats 5 --json "$out/gpu-check-cpu.json"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
  for dtype in float32 float16; do
    python benchmarks/speedup_targets.py --device cuda --dtype $dtype --batch 32 1 --seq 128 \
      --speedup 2 --repeats 20 --json "$out/gpu-check-$dtype.json"
  done
fi
