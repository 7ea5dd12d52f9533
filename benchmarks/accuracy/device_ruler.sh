#!/usr/bin/env bash
# On the GPU machine, after the carried folders were copied to /tmp/carry (as for
# device_selection.sh): RULER on gemma3 at 4K and 8K, seed 1, every contender at budget 2048,
# as parallel processes split by task, each resumable under /tmp/acc; merged into $OUT.
set -uo pipefail
LIMIT=${LIMIT:-480}
C=/tmp/carry
mkdir -p /tmp/models /tmp/acc /tmp/site
[ -f /tmp/models/gemma-3-270m-q4_k_m.gguf ] || cat $C/gemma.part* > /tmp/models/gemma-3-270m-q4_k_m.gguf
sha256sum /tmp/models/*.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site $C/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 DHSA_MODELS_DIR=/tmp/models
export DHSA_HAYSTACK=$C/PaulGrahamEssays.json
OUT=${OUT:-out}; mkdir -p "$OUT"
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
