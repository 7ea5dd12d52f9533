#!/usr/bin/env bash
# Here (not on the GPU machine): cut what the GPU accuracy runs need into folders .carry/p0..p6 of
# at most ~60 MB each, since one device call carries at most 64 MiB with the working tree. Both
# fetched GGUF files are concatenated and split; the last folder also gets the haystack and the
# wheels the device image lacks (gguf, wonderwords). Carry one folder per back-to-back call and
# copy it to /tmp/carry there (see device_accuracy.sh).
set -euo pipefail
MODELS=${DHSA_MODELS_DIR:-models}
HAYSTACK=${DHSA_HAYSTACK:-../shared/data/PaulGrahamEssays.json}
rm -rf .carry && mkdir -p .carry
cat "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODELS/gemma-3-270m-q4_k_m.gguf" \
  | split -b 59000000 -d -a 1 - .carry/models.part
for f in .carry/models.part*; do
  mkdir -p ".carry/p${f##*part}" && mv "$f" ".carry/p${f##*part}/"
done
last=$(ls -d .carry/p* | sort | tail -1)
cp "$HAYSTACK" "$last/"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp -d "$last" gguf==0.19.0 wonderwords==3.0.1
# The device image's transformers (5.17) converts Gemma-3's GGUF tokenizer wrongly (it splits
# common words into pieces and the model reads garbled text): carry 5.24, in a folder of its own,
# with a regex new enough for it.
mkdir -p .carry/p6
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp -d .carry/p6 transformers==5.24.0 regex==2026.11.19
du -sh .carry/p*
