#!/usr/bin/env bash
# On the GPU machine, after the carried folders (made by device_gemma3_parts.sh: the wheels, the
# haystack and gemma3's GGUF in parts) were copied to /tmp/carry by earlier calls: join and
# check the model, install the wheels, then run the selection grids of the selection issue as
# parallel processes, each resumable under /tmp/acc. Seed 0 tunes (dhsa's chunk range), seed 1
# reports every contender. At the end (or after LIMIT seconds) the files are merged into $OUT.
source "$(dirname "$0")/device_gemma3_env.sh"
job() {  # name, then the command's arguments
  local name=$1; shift
  timeout "$LIMIT" python3 -m dhsa.cli "$@" --device cuda --dtype bfloat16 --haystack $DHSA_HAYSTACK \
    --no-progress --out /tmp/acc/$name.jsonl > /tmp/acc/$name.log 2>&1 &
}
peers="--methods dense,oracle_topk,vertical_slash,block_sparse --budgets 1024,2048"
ours="--methods hip,dash,dhsa-paper,dhsa --budgets 1024,2048"
d="--depths 0.1,0.5,0.9"
job tune-default    niah --model gemma3 --lengths 8k,16k,32k $d --samples 2 --seed 0 --methods dhsa --budgets 2048
job tune-fine       niah --model gemma3 --lengths 8k,16k,32k $d --samples 2 --seed 0 --methods dhsa --budgets 2048 --chunk-range 4-32
job select-4k-peers niah --model gemma3 --lengths 4k,8k $d --samples 5 --seed 1 $peers
job select-4k-ours  niah --model gemma3 --lengths 4k,8k $d --samples 5 --seed 1 $ours
job select-16k-peers niah --model gemma3 --lengths 16k $d --samples 3 --seed 1 $peers
job select-16k-ours niah --model gemma3 --lengths 16k $d --samples 3 --seed 1 $ours
job select-32k-peers niah --model gemma3 --lengths 32k $d --samples 3 --seed 1 $peers
job select-32k-ours niah --model gemma3 --lengths 32k $d --samples 3 --seed 1 $ours
wait
cat /tmp/acc/tune-*.jsonl > "$OUT/niah-gemma3-tune.jsonl"
cat /tmp/acc/select-*.jsonl > "$OUT/niah-gemma3-select.jsonl"
tail -n 2 /tmp/acc/*.log
grep -c '"type": "cell"' /tmp/acc/*.jsonl
