#!/usr/bin/env bash
# On the GPU machine: device tests of the kernels, then the profile and tile sweep at 128K.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m pytest -p no:cacheprovider -p no:logging --tb=short tests/test_triton.py \
  tests/test_bench_gpu_peers.py > "$OUT/tests.log" 2>&1; grep -E "passed|failed|Error" "$OUT/tests.log" | head
python3 benchmarks/gpu/scripts/profile_select.py 131072 2>&1 | tee "$OUT/profile.txt"
