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
common="--methods dense,dhsa,block_sparse,streaming --budgets 1024,2048 --device cuda --dtype bfloat16 --haystack $DHSA_HAYSTACK --no-progress"
job() {  # name, then the command's arguments
  local name=$1; shift
  timeout "$LIMIT" python3 -m dhsa.cli "$@" $common --out /tmp/acc/$name.jsonl > /tmp/acc/$name.log 2>&1 &
}
job ruler-gemma3-4k   ruler --model gemma3  --lengths 4k  --tasks all --samples 5
job ruler-gemma3-8k   ruler --model gemma3  --lengths 8k  --tasks all --samples 5
job ruler-gemma3-16k  ruler --model gemma3  --lengths 16k --tasks all --samples 3
job ruler-gemma3-32k  ruler --model gemma3  --lengths 32k --tasks all --samples 3
job ruler-smollm2-1k  ruler --model smollm2 --lengths 1k,2k --tasks all --samples 5
job ruler-smollm2-4k  ruler --model smollm2 --lengths 4k  --tasks all --samples 5
job ruler-smollm2-8k  ruler --model smollm2 --lengths 8k  --tasks all --samples 5
job niah-gemma3-4k    niah  --model gemma3  --lengths 4k,8k   --depths 0.1,0.5,0.9 --samples 5
job niah-gemma3-16k   niah  --model gemma3  --lengths 16k,32k --depths 0.1,0.5,0.9 --samples 3
job niah-smollm2      niah  --model smollm2 --lengths 1k,2k,4k,8k --depths 0.1,0.5,0.9 --samples 5
wait
for kind in niah ruler; do
  for model in gemma3 smollm2; do
    cat /tmp/acc/$kind-$model*.jsonl > "$OUT/$kind-$model-gpu.jsonl" 2>/dev/null
  done
done
tail -n 3 /tmp/acc/*.log
grep -c '"type": "cell"' /tmp/acc/*.jsonl
