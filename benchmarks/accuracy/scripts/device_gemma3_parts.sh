#!/usr/bin/env bash
# Here (not on the GPU machine): cut what the gemma3 GPU runs need into folders of at most ~50 MB
# (one device call carries at most 64 MiB with the working tree): .carry/p0..p4 hold gemma3's
# GGUF in parts, .carry/w the wheels the device image lacks and the haystack. Carry one folder
# per back-to-back call and copy it to /tmp/carry there; then run device_selection.sh or
# device_ruler.sh (they source device_gemma3_env.sh, which joins and checks the model).
set -euo pipefail
MODELS=${DHSA_MODELS_DIR:-models}
HAYSTACK=${DHSA_HAYSTACK:-../shared/data/PaulGrahamEssays.json}
rm -rf .carry && mkdir -p .carry/w
split -b 52000000 -d -a 1 "$MODELS/gemma-3-270m-q4_k_m.gguf" .carry/gemma.part
for f in .carry/gemma.part*; do
  mkdir -p ".carry/p${f##*part}" && mv "$f" ".carry/p${f##*part}/"
done
cp "$HAYSTACK" .carry/w/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  -d .carry/w gguf==0.19.0 wonderwords==3.0.1 transformers==5.24.0 regex==2026.11.19 \
  pytest==9.0.3 pluggy==1.6.0 iniconfig==2.3.0
du -sh .carry/*
