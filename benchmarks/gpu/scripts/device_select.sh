#!/usr/bin/env bash
# On the GPU machine, from the repository root, with the wheels folder .carry/w (pytest, pluggy,
# iniconfig) carried: the peak selection's kernel, fill and selection tests on the device, then
# the selection cost with its stages (selection_cost.py). Each step has its own time limit
# (at most 260 s in all) and writes into $OUT as it goes.
set -uo pipefail
mkdir -p /tmp/carry /tmp/site && cp -r .carry/w/* /tmp/carry/ 2>/dev/null
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  /tmp/carry/pytest-*.whl /tmp/carry/pluggy-*.whl /tmp/carry/iniconfig-*.whl
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)'
  git log --oneline -1 2>/dev/null; } > "$OUT/device.txt"
# The peak tests first, in their own log, so a slow later file cannot hide them.
timeout ${PEAK_TEST_LIMIT:-100} python3 -m pytest -q -p no:cacheprovider --tb=short \
  tests/test_triton_peak.py tests/test_peak.py > "$OUT/tests_peak.log" 2>&1; tail -n 8 "$OUT/tests_peak.log"
timeout ${TEST_LIMIT:-60} python3 -m pytest -q -p no:cacheprovider --tb=short \
  tests/test_fill.py tests/test_triton.py > "$OUT/tests.log" 2>&1; tail -n 8 "$OUT/tests.log"
timeout ${COST_LIMIT:-100} python3 benchmarks/gpu/scripts/selection_cost.py ${LENGTHS:-32768 131072} 2>&1 \
  | grep -v Warning | tee "$OUT/selection_cost.jsonl"
