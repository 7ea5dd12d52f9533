#!/usr/bin/env bash
# On the GPU machine, from the repository root, with the wheels folder (device_gemma3_parts.sh's
# .carry/w) carried: the selection and kernel tests on the device, then the selection cost of
# both scorings with the profile of one peak selection (selection_cost.py --profile).
source "$(dirname "$0")/device_env.sh"
timeout ${TEST_LIMIT:-200} python3 -m pytest -q -p no:cacheprovider --tb=short ${TESTS:-tests/test_triton_peak.py \
  tests/test_peak.py tests/test_fill.py tests/test_triton.py tests/test_decode.py tests/test_attention.py} \
  > "$OUT/tests.log" 2>&1; tail -n 8 "$OUT/tests.log"
timeout ${COST_LIMIT:-200} python3 benchmarks/gpu/scripts/selection_cost.py --profile ${LENGTHS:-32768 131072} 2>&1 \
  | grep -v Warning | tee "$OUT/selection_cost.txt"
