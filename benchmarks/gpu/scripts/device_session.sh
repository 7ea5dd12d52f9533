#!/usr/bin/env bash
# On the GPU machine, from the repository root, with the wheels folder (.carry/w, made by
# benchmarks/accuracy/scripts/device_gemma3_parts.sh) carried: every kernel and selection test on
# the device, then the selection cost with its stages (selection_cost.py), the per-layer decode
# step (dhsa bench --decode --preset gpu-decode) and the whole-model decode on a static cache.
# Each step has its own time limit and writes into $OUT as it goes.
EXTRA_WHEELS="transformers regex"
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/device.txt"
python3 -c 'import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)' >> "$OUT/device.txt"
timeout ${TEST_LIMIT:-120} python3 -m pytest -q -p no:cacheprovider --tb=short ${TESTS:-tests/test_triton_peak.py \
  tests/test_peak.py tests/test_fill.py tests/test_triton.py tests/test_decode.py tests/test_attention.py \
  tests/test_bench_gpu_peers.py tests/test_decode_sync.py tests/test_paged.py} > "$OUT/tests.log" 2>&1; tail -n 4 "$OUT/tests.log"
timeout ${COST_LIMIT:-120} python3 benchmarks/gpu/scripts/selection_cost.py ${LENGTHS:-16384 32768 65536 131072} 2>&1 \
  | grep -v Warning | tee "$OUT/selection_cost.jsonl"
timeout ${DECODE_LIMIT:-90} python3 -m dhsa.cli bench --decode --preset gpu-decode --no-progress \
  --out "$OUT/decode_gpu.json" 2>&1 | grep -v Warning | tail -n 12 | tee "$OUT/decode.log"
timeout ${MODEL_LIMIT:-140} python3 -m dhsa.cli bench --preset gpu --model llama-3.1-8b --lengths ${MODEL_LENGTHS:-32k,128k} \
  --budgets 2048 --methods dhsa --decode-tokens 16 --no-progress --out "$OUT/model_gpu.json" 2>&1 \
  | grep -v Warning | tail -n 12 | tee "$OUT/model.log"
