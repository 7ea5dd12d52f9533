#!/usr/bin/env bash
# On the GPU machine, from the repository root, with the wheels folder .carry/w carried: the fused
# decode step's tests (graph replay, no synchronization) beside the decode tests, the decode bench
# with the fused step eager and replayed from a CUDA graph (32K/128K, batch 1/8/32), and a
# one-step profile of the fused step (launches, device vs wall time) at 128K, batch 1 and 8.
# Each step has its own time limit (335 s in all) and writes into $OUT as it goes.
set -uo pipefail
mkdir -p /tmp/carry /tmp/site && cp -r .carry/w/* /tmp/carry/ 2>/dev/null
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  /tmp/carry/pytest-*.whl /tmp/carry/pluggy-*.whl /tmp/carry/iniconfig-*.whl
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/device.txt"
timeout ${TEST_LIMIT:-100} python3 -m pytest -q -p no:cacheprovider --tb=short \
  tests/test_decode_fused.py tests/test_decode.py tests/test_decode_sync.py tests/test_paged.py \
  > "$OUT/tests.log" 2>&1; tail -n 4 "$OUT/tests.log"
timeout ${PROFILE_LIMIT:-45} python3 benchmarks/gpu/scripts/profile_decode_fused.py 131072 1 2>&1 \
  | grep -v Warning | tee "$OUT/profile_decode_fused.txt" | grep '^{'
timeout ${PROFILE8_LIMIT:-40} python3 benchmarks/gpu/scripts/profile_decode_fused.py 131072 8 2>&1 \
  | grep -v Warning | tee "$OUT/profile_decode_fused_b8.txt" | grep '^{'
timeout ${DECODE_LIMIT:-150} python3 -m dhsa.cli bench --decode --preset gpu-decode --no-progress \
  --out "$OUT/decode_gpu.json" 2>&1 | grep -v Warning | tail -n 22 | tee "$OUT/decode.log"
