#!/usr/bin/env bash
# On the GPU machine, after the carried folders were copied to /tmp/carry (as for
# device_selection.sh): the accuracy grid of the selection issue with the default peak scoring
# (prompt-end probe, per-row candidate cover) on fresh seeds (the probe was tuned on seed 0):
#  - RULER on gemma3, seed 1: 4K and 8K with 5 samples, 16K and 32K with 3, every task, with
#    dense, oracle_topk, vertical_slash, block_sparse, dhsa and the paper rule at budget 2048;
#    hip and dash at 4K and 8K (their selection costs 10-30 s a prompt at these lengths);
#  - NIAH on gemma3 at budget 1024, seed 1, every contender but hip and dash;
#  - top-k key recall per layer and head (dhsa fidelity) at 8K, seed 1.
# Parallel processes, each resumable under /tmp/acc, merged into $OUT at the end (or after
# LIMIT seconds with what they have).
source "$(dirname "$0")/device_gemma3_env.sh"
run() {  # name, then the command's arguments
  local name=$1; shift
  timeout "$LIMIT" python3 -m dhsa.cli "$@" --device cuda --dtype bfloat16 --haystack $DHSA_HAYSTACK \
    --no-progress --out /tmp/acc/$name.jsonl > /tmp/acc/$name.log 2>&1 &
}
fast="dense,vertical_slash,block_sparse,dhsa-paper,dhsa"
groups="niah_single_1,niah_single_2,niah_single_3,niah_multikey_1 niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery vt,cwe,fwe"
for tasks in $groups; do
  g=${tasks%%,*}
  run ruler-short-fast-$g ruler --model gemma3 --lengths 4k,8k --tasks $tasks --samples 5 --seed 1 \
    --methods $fast --budgets 2048
  run ruler-short-oracle-$g ruler --model gemma3 --lengths 4k,8k --tasks $tasks --samples 5 --seed 1 \
    --methods oracle_topk --budgets 2048
  run ruler-short-hipdash-$g ruler --model gemma3 --lengths 4k,8k --tasks $tasks --samples 5 --seed 1 \
    --methods hip,dash --budgets 2048
  run ruler-long-$g ruler --model gemma3 --lengths 16k,32k --tasks $tasks --samples 3 --seed 1 \
    --methods $fast,oracle_topk --budgets 2048
done
run niah-1024-short niah --model gemma3 --lengths 4k,8k --depths 0.1,0.5,0.9 --samples 5 --seed 1 \
  --methods dense,oracle_topk,vertical_slash,block_sparse,dhsa-paper,dhsa --budgets 1024
run niah-1024-long niah --model gemma3 --lengths 16k,32k --depths 0.1,0.5,0.9 --samples 3 --seed 1 \
  --methods dense,oracle_topk,vertical_slash,block_sparse,dhsa-paper,dhsa --budgets 1024
run fidelity-8k fidelity --model gemma3 --lengths 8k --samples 2 --seed 1 \
  --methods oracle_topk,vertical_slash,block_sparse,dhsa-paper,dhsa --budgets 2048
wait
cat /tmp/acc/ruler-*.jsonl > "$OUT/ruler-gemma3-probe.jsonl"
cat /tmp/acc/niah-1024-*.jsonl > "$OUT/niah-gemma3-probe-1024.jsonl"
cp /tmp/acc/fidelity-8k.jsonl "$OUT/fidelity-gemma3-probe.jsonl" 2>/dev/null
tail -n 2 /tmp/acc/*.log
grep -c '"type": "cell"' /tmp/acc/*.jsonl
