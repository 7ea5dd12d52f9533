#!/usr/bin/env bash
# On the GPU machine, after the carried folders were copied to /tmp/carry (as for
# device_selection.sh): RULER on gemma3 at 4K and 8K, seed 1, every contender at budget 2048,
# as parallel processes split by task, each resumable under /tmp/acc; merged into $OUT.
source "$(dirname "$0")/device_gemma3_env.sh"
grid="--methods dense,oracle_topk,vertical_slash,block_sparse,hip,dash,dhsa-paper,dhsa --budgets 2048"
for tasks in niah_single_1,niah_single_2,niah_single_3 niah_multikey_1,niah_multikey_2,niah_multikey_3 \
    niah_multivalue,niah_multiquery vt,cwe,fwe; do
  for length in 4k 8k; do
    name=ruler-$length-${tasks%%,*}
    timeout "$LIMIT" python3 -m dhsa.cli ruler --model gemma3 --lengths $length --tasks $tasks \
      --samples 3 --seed 1 $grid --device cuda --dtype bfloat16 --haystack $DHSA_HAYSTACK \
      --no-progress --out /tmp/acc/$name.jsonl > /tmp/acc/$name.log 2>&1 &
  done
done
wait
cat /tmp/acc/ruler-*.jsonl > "$OUT/ruler-gemma3-select.jsonl"
tail -n 2 /tmp/acc/*.log
grep -c '"type": "cell"' /tmp/acc/*.jsonl
