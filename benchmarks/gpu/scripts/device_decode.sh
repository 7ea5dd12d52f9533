#!/usr/bin/env bash
# On the GPU machine: kernel, decode and transformers tests on the device, the decode benchmark
# (dense SDPA decode vs the span-based sparse decode step), the whole-model benchmark with decode
# tokens, and a profile of one decode step (profile_decode.py). Results land in $OUT.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
} > "$OUT/device.txt"
python3 -m pytest tests/test_triton.py tests/test_decode.py -p no:warnings -x 2>&1 \
  | tail -n 4 | tee "$OUT/tests.log"
python3 -m dhsa.cli bench --preset gpu --decode --lengths 32k,64k,128k --budgets 1024,2048 \
  --batches 1,8 --no-progress --out "$OUT/decode_gpu.json" 2>&1 | grep -v Warning | tee "$OUT/decode.log"
python3 -m dhsa.cli bench --preset gpu --model llama-3.1-8b --lengths 32k,64k,128k --budgets 2048 \
  --methods dhsa --decode-tokens 16 --no-progress --out "$OUT/model_gpu.json" 2>&1 \
  | grep -v Warning | tee "$OUT/model.log"
python3 benchmarks/gpu/scripts/profile_decode.py 2>&1 | grep -v Warn > "$OUT/profile_decode.txt"
head -n 5 "$OUT/profile_decode.txt"
