#!/usr/bin/env bash
# On the GPU machine, after the carried folders (made by device_gemma3_parts.sh: the wheels, the
# haystack and gemma3's GGUF in parts) were copied to /tmp/carry by earlier calls: join and
# check the model, install the wheels, then run the selection grid of the selection issue as
# parallel processes, each resumable under /tmp/acc. The prompt-end probe was tuned on seed 0;
# this grid reports fresh seeds 1 and 2 with every contender at budget 2048, and dhsa with dense
# decode steps beside sparse decode. At the end (or after LIMIT seconds) the files are merged
# into $OUT.
source "$(dirname "$0")/device_gemma3_env.sh"
job() {  # name, then the command's arguments
  local name=$1; shift
  timeout "$LIMIT" python3 -m dhsa.cli "$@" --device cuda --dtype bfloat16 --haystack $DHSA_HAYSTACK \
    --no-progress --out /tmp/acc/$name.jsonl > /tmp/acc/$name.log 2>&1 &
}
peers="--methods dense,oracle_topk,vertical_slash,block_sparse --budgets 2048"
ours="--methods hip,dash,dhsa-paper,dhsa --budgets 2048"
d="--depths 0.1,0.5,0.9"
for seed in 1 2; do
  job s$seed-short-peers niah --model gemma3 --lengths 4k,8k $d --samples 5 --seed $seed $peers
  job s$seed-short-ours  niah --model gemma3 --lengths 4k,8k $d --samples 5 --seed $seed $ours
  job s$seed-16k-peers   niah --model gemma3 --lengths 16k $d --samples 3 --seed $seed $peers
  job s$seed-16k-ours    niah --model gemma3 --lengths 16k $d --samples 3 --seed $seed $ours
  job s$seed-32k-peers   niah --model gemma3 --lengths 32k $d --samples 3 --seed $seed $peers
  job s$seed-32k-ours    niah --model gemma3 --lengths 32k $d --samples 3 --seed $seed $ours
  job s$seed-dense-decode niah --model gemma3 --lengths 8k,16k,32k $d --samples 3 --seed $seed \
    --methods dhsa --budgets 2048 --decode dense
done
wait
cat /tmp/acc/s*.jsonl > "$OUT/niah-gemma3-probe.jsonl"
tail -n 2 /tmp/acc/*.log
grep -c '"type": "cell"' /tmp/acc/*.jsonl
