#!/usr/bin/env bash
# Train the learned chunker's boundary predictor on smollm2 keys (CPU). The first attempt is
# interrupted (Ctrl-C) once it has logged step 2000; the same command run again reuses the
# labelled keys and resumes from the last checkpoint. Labelled keys already in OUT.data.pt with the
# same settings are reused (delete that file to label afresh). Run from the repository root.
set -um  # job control: the background run keeps SIGINT (Ctrl-C) instead of ignoring it
D=benchmarks/learned_predictor
TEXT=${TEXT:-../shared/data/PaulGrahamEssays.json}
export DHSA_MODELS_DIR=${DHSA_MODELS_DIR:-models}
OUT=$D/smollm2-predictor.pt
CMD=(.venv/bin/dhsa -v train-predictor --model smollm2 --out $OUT
     --text "$TEXT" --length 2048 --slices 12 --layers 0,2,8,14,20,26
     --steps 6000 --batch 256 --lr 1e-4 --seed 0 --no-progress)
rm -f $OUT $OUT.ckpt
date -u +"start %FT%TZ"
"${CMD[@]}" > $D/train-interrupted.log 2>&1 &
pid=$!
until grep -q "step 2000:" $D/train-interrupted.log || ! kill -0 $pid 2>/dev/null; do
    sleep 0.2
done
kill -INT $pid
wait $pid
date -u +"interrupted %FT%TZ"
"${CMD[@]}" > $D/train-resumed.log 2>&1
date -u +"done %FT%TZ"
