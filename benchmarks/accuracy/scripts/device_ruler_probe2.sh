#!/usr/bin/env bash
# On the GPU machine, after the carried folders were copied to /tmp/carry (as for
# device_selection.sh): the second part of the accuracy grid of
# benchmarks/archive/accuracy/device_ruler_probe.sh, whose run lost every dhsa cell to a
# shared-memory error of the stage-1 kernel at gemma3's head size 256 (fixed since; the peak
# kernel tests guard this run). Its oracle_topk, hip and
# dash cells at 4K and 8K stand; this part runs, on the same seed 1 prompts:
#  - RULER on gemma3: dense, vertical_slash, block_sparse, the paper rule and dhsa at 4K and 8K
#    (5 samples) and with oracle_topk at 16K and 32K (3 samples), budget 2048;
#  - NIAH on gemma3 at budget 1024 and the top-k key recall at 8K, as that script.
source "$(dirname "$0")/device_gemma3_env.sh"
timeout 150 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/test_triton_peak.py 2>&1 | tail -n 3
[ "${PIPESTATUS[0]}" = 0 ] || { echo "peak kernel tests failed: no grid"; exit 1; }
run() {  # name, then the command's arguments
  local name=$1; shift
  timeout "$LIMIT" python3 -m dhsa.cli "$@" --device cuda --dtype bfloat16 --haystack $DHSA_HAYSTACK \
    --no-progress --out /tmp/acc/$name.jsonl > /tmp/acc/$name.log 2>&1 &
}
fast="dense,vertical_slash,block_sparse,dhsa-paper,dhsa"
groups="niah_single_1,niah_single_2,niah_single_3,niah_multikey_1 niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery vt,cwe,fwe"
for tasks in $groups; do
  g=${tasks%%,*}
  for length in 4k 8k; do
    run ruler-$length-$g ruler --model gemma3 --lengths $length --tasks $tasks --samples 5 --seed 1 \
      --methods $fast --budgets 2048
  done
  for length in 16k 32k; do
    run ruler-$length-$g ruler --model gemma3 --lengths $length --tasks $tasks --samples 3 --seed 1 \
      --methods $fast,oracle_topk --budgets 2048
  done
done
run niah-1024-short niah --model gemma3 --lengths 4k,8k --depths 0.1,0.5,0.9 --samples 5 --seed 1 \
  --methods dense,oracle_topk,vertical_slash,block_sparse,dhsa-paper,dhsa --budgets 1024
run niah-1024-long niah --model gemma3 --lengths 16k,32k --depths 0.1,0.5,0.9 --samples 3 --seed 1 \
  --methods dense,oracle_topk,vertical_slash,block_sparse,dhsa-paper,dhsa --budgets 1024
run fidelity-8k fidelity --model gemma3 --lengths 8k --samples 2 --seed 1 \
  --methods oracle_topk,vertical_slash,block_sparse,dhsa-paper,dhsa --budgets 2048
wait
cat /tmp/acc/ruler-*.jsonl > "$OUT/ruler-gemma3-probe-2.jsonl"
cat /tmp/acc/niah-1024-*.jsonl > "$OUT/niah-gemma3-probe-1024.jsonl"
cp /tmp/acc/fidelity-8k.jsonl "$OUT/fidelity-gemma3-probe.jsonl" 2>/dev/null
for f in /tmp/acc/*.log; do echo "== $f"; grep -m1 -B2 Error "$f" | tail -n 3; done
grep -c '"type": "cell"' /tmp/acc/*.jsonl
