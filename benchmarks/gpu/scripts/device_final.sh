#!/usr/bin/env bash
# On the GPU machine: the prefill grid (every dense kernel, FlexAttention, dhsa's methods), then
# the whole-model benchmark. Results land in $OUT.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m dhsa.cli bench --preset gpu --no-progress --out "$OUT/bench_gpu.json" 2>&1 \
  | grep -v Warning | tee "$OUT/bench.log"
python3 -m dhsa.cli bench --preset gpu --model llama-3.1-8b --lengths 32k,64k,128k --budgets 2048 \
  --methods dhsa --decode-tokens 16 --no-progress --out "$OUT/model_gpu.json" 2>&1 \
  | grep -v Warning | tee "$OUT/model.log"
