#!/usr/bin/env bash
# On the GPU machine, from the repository root, with the wheels folder .carry/w carried: one
# short round over this session's kernels. The peak selection's and the fused decode step's tests
# (head sizes up to 256, graph replay, no synchronization), then the selection cost with its
# stages at 32K and 128K, a one-step profile of the fused decode step at 128K (batch 1 and 8) and
# the decode bench (32K/128K, batch 1/8/32). Each step has its own time limit and writes into
# $OUT as it goes.
source "$(dirname "$0")/device_env.sh"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)'; } > "$OUT/device.txt"
timeout ${TEST_LIMIT:-110} python3 -m pytest -q -p no:cacheprovider -p no:warnings --tb=line \
  tests/test_triton_peak.py tests/test_peak.py tests/test_decode_fused.py tests/test_decode_sync.py \
  > "$OUT/tests.log" 2>&1; grep -E "passed|failed|FAILED|Error" "$OUT/tests.log" | tail -n 12
timeout ${COST_LIMIT:-70} python3 benchmarks/gpu/scripts/selection_cost.py ${LENGTHS:-32768 131072} 2>&1 \
  | grep -v Warning | tee "$OUT/selection_cost.jsonl" | cut -c1-600
for batch in 1 8; do
  timeout ${PROFILE_LIMIT:-40} python3 benchmarks/gpu/scripts/profile_decode_fused.py 131072 $batch 2>&1 \
    | grep -v Warning | tee "$OUT/profile_decode_fused_b$batch.txt" | grep '^{' | cut -c1-600
done
timeout ${DECODE_LIMIT:-100} python3 -m dhsa.cli bench --decode --preset gpu-decode --no-progress \
  --out "$OUT/decode_gpu.json" 2>&1 | grep -v Warning | tail -n 24 | tee "$OUT/decode.log"
