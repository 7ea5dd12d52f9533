#!/usr/bin/env bash
# On the GPU machine, from the repository root: kernel and selection tests on the device, the
# stage profile of dhsa's selection (profile_stages.py), then the prefill grid.
# Results land in $OUT (the device tool brings them back); copy them into benchmarks/gpu/.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.total --format=csv | tee "$OUT/device.txt"
python3 -c 'import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)' | tee -a "$OUT/device.txt"
timeout 150 python3 -m pytest -p no:cacheprovider -p no:logging --tb=short tests/test_triton.py \
  tests/test_bench_gpu_peers.py tests/test_decode.py tests/test_attention.py tests/test_layout.py \
  > "$OUT/tests.log" 2>&1; tail -n 5 "$OUT/tests.log"
for length in 131072 32768; do
  timeout 60 python3 benchmarks/gpu/scripts/profile_stages.py $length 2>&1 | grep -v Warning >> "$OUT/profile_stages.txt"
done
grep -A7 "^L=" "$OUT/profile_stages.txt"
timeout 330 python3 -m dhsa.cli bench --preset gpu --no-progress --out "$OUT/bench_gpu.json" ${BENCH_ARGS:-} 2>&1 \
  | grep -v Warning | tee "$OUT/bench.log"
