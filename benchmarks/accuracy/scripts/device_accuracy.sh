#!/usr/bin/env bash
# On the GPU machine, after device_parts.sh's folders were copied to /tmp/carry by earlier calls:
# join and check the models, install the carried wheels, then run the NIAH and RULER grids of the
# accuracy issue as parallel processes (the models are small: each process is bound by its own
# kernel launches, so several share the GPU well). Each process keeps a resumable JSONL under
# /tmp/acc; a rerun continues where a stopped one ended. At the end (or when LIMIT seconds are up)
# the files are merged per model and task kind into $OUT.
set -uo pipefail
LIMIT=${LIMIT:-480}
C=/tmp/carry
mkdir -p /tmp/models /tmp/acc /tmp/site
if [ ! -f /tmp/models/gemma-3-270m-q4_k_m.gguf ]; then
  cat $C/models.part* > /tmp/models/all.bin
  head -c 98362432 /tmp/models/all.bin > /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
  tail -c +98362433 /tmp/models/all.bin > /tmp/models/gemma-3-270m-q4_k_m.gguf
  rm /tmp/models/all.bin
fi
sha256sum /tmp/models/*.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site $C/*.whl || exit 1
PYTHONPATH=/tmp/site python3 -c "import transformers; print('transformers', transformers.__version__)"
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 DHSA_MODELS_DIR=/tmp/models
export DHSA_HAYSTACK=$C/PaulGrahamEssays.json
OUT=${OUT:-out}; mkdir -p "$OUT"
job() {  # name, then the command's arguments
  local name=$1; shift
  timeout "$LIMIT" python3 -m dhsa.cli "$@" --device cuda --dtype bfloat16 --haystack $DHSA_HAYSTACK \
    --no-progress --out /tmp/acc/$name.jsonl > /tmp/acc/$name.log 2>&1 &
}
grid="--methods dense,dhsa,block_sparse,streaming --budgets 1024,2048"
needles=niah_single_1,niah_single_2,niah_single_3,niah_multikey_1
keys=niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery
rest=$keys,vt,cwe,fwe
# The earlier H200 RULER records of smollm2 seed the 1K job, so it only adds the missing samples.
[ -f /tmp/acc/ruler-smollm2-1k.jsonl ] || cp benchmarks/accuracy/ruler-smollm2-gpu.jsonl /tmp/acc/ruler-smollm2-1k.jsonl
job ruler-smollm2-1k    ruler --model smollm2 --lengths 1k  --tasks all --samples 5 $grid
job niah-smollm2-8k     niah  --model smollm2 --lengths 8k  --depths 0.1,0.5,0.9 --samples 5 $grid
job niah-gemma3-4k      niah  --model gemma3  --lengths 4k,8k --depths 0.1,0.5,0.9 --samples 5 $grid
job niah-gemma3-16k     niah  --model gemma3  --lengths 16k --depths 0.1,0.5,0.9 --samples 3 $grid
job niah-gemma3-32k     niah  --model gemma3  --lengths 32k --depths 0.1,0.5,0.9 --samples 3 $grid
job ruler-gemma3-8k     ruler --model gemma3  --lengths 8k  --tasks all --samples 5 $grid
job ruler-gemma3-16k-a  ruler --model gemma3  --lengths 16k --tasks $needles --samples 3 $grid
job ruler-gemma3-16k-b  ruler --model gemma3  --lengths 16k --tasks $rest --samples 3 $grid
job ruler-gemma3-32k-a  ruler --model gemma3  --lengths 32k --tasks $needles --samples 3 $grid
job ruler-gemma3-32k-b  ruler --model gemma3  --lengths 32k --tasks $keys --samples 3 $grid
job ruler-gemma3-32k-c  ruler --model gemma3  --lengths 32k --tasks vt,cwe,fwe --samples 3 $grid
job fidelity-gemma3     fidelity --model gemma3 --lengths 16k,32k --samples 1 \
  --methods dhsa,block_sparse,streaming --budgets 1024,2048
wait
for kind in niah ruler fidelity; do
  for model in gemma3 smollm2; do
    cat /tmp/acc/$kind-$model*.jsonl > "$OUT/$kind-$model-gpu.jsonl" 2>/dev/null
  done
done
tail -n 3 /tmp/acc/*.log
grep -c '"type": "cell"' /tmp/acc/*.jsonl
