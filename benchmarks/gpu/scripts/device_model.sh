#!/usr/bin/env bash
# On the GPU machine, from the repository root: the whole-model benchmark (Llama-3.1-8B sizes,
# random bf16 weights), then the device tests of the kernels and peers. Results land in $OUT.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m dhsa.cli bench --preset gpu --model llama-3.1-8b --lengths 32k,64k,128k --budgets 2048 \
  --methods dhsa --decode-tokens 16 --no-progress --out "$OUT/model_gpu.json" 2>&1 \
  | grep -v Warning | tee "$OUT/model.log"
python3 -m pytest -p no:cacheprovider -p no:logging --tb=short tests/test_triton.py \
  tests/test_bench_gpu_peers.py > "$OUT/tests.log" 2>&1; tail -n 5 "$OUT/tests.log"
