#!/usr/bin/env bash
# Attention recall at equal budget on real smollm2 activations (4K-token essay prompts, CPU):
# dhsa with the similarity chunker, dhsa with the learned predictor (train.sh), block_sparse and
# streaming, on the same prompts (same --seed). All runs share one result file; fidelity.json
# holds per-layer rows and, per method and budget, the mean over layers and prompts.
# Budget 1024 on 2 prompts, budget 2048 on 1 (a shared 2-core CPU: about 5-8 min per prefill).
set -eu
D=benchmarks/learned_predictor
export DHSA_MODELS_DIR=${DHSA_MODELS_DIR:-models}
HAY=${HAYSTACK:-../shared/data/PaulGrahamEssays.json}
P=$D/smollm2-predictor.pt
COMMON=(--model smollm2 --haystack "$HAY" --length 4k --out $D/fidelity.jsonl --no-progress)
.venv/bin/dhsa fidelity "${COMMON[@]}" --budgets 1024 --samples 2 --methods dhsa,block_sparse,streaming
.venv/bin/dhsa fidelity "${COMMON[@]}" --budgets 1024 --samples 2 --methods dhsa \
    --chunker learned --predictor $P
.venv/bin/dhsa fidelity "${COMMON[@]}" --budgets 2048 --samples 1 --methods dhsa,block_sparse
.venv/bin/dhsa fidelity "${COMMON[@]}" --budgets 2048 --samples 1 --methods dhsa \
    --chunker learned --predictor $P
