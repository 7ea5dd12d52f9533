#!/usr/bin/env bash
# On the GPU machine, from the repository root, with .carry/w carried: the decode step's sync
# test, the profile of one decode step by scoring (profile_decode.py) and the decode bench with
# the paper scoring beside the peak run of device_session.sh.
source "$(dirname "$0")/device_env.sh"
timeout 60 python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_decode_sync.py \
  > "$OUT/tests_sync.log" 2>&1; tail -n 3 "$OUT/tests_sync.log"
timeout 60 python3 benchmarks/gpu/scripts/profile_decode.py 131072 2>&1 | grep -v Warning \
  | tee "$OUT/profile_decode.txt" | grep '^{'
timeout 70 python3 -m dhsa.cli bench --decode --preset gpu-decode --batches 1,8 --scoring paper \
  --no-progress --out "$OUT/decode_gpu_paper.json" 2>&1 | grep -v Warning | tail -n 9
