"""Chunks the similarity chunker makes on real keys at several thresholds, and the selection time.

Usage: python threshold_chunks.py LENGTH Z[,Z...]  (gemma3 on the CPU, float32)

Records the queries and keys of gemma3's first global layer (5) on NIAH prompts (index 0-2,
depth 0.5), then per threshold ``boundary_z`` prints one JSON line per prompt: the chunk count,
the mean and shortest chunk length, and the median time of ``dhsa.select`` at budget 1024 over
those queries and keys (5 runs).
"""

import json
import os
import sys
import time

import torch

import dhsa
import dhsa.hf as hf
from dhsa.chunking import compute_boundaries
from dhsa.eval.generation import token_counter
from dhsa.eval.haystack import DEFAULT_HAYSTACK, essay_sentences
from dhsa.eval.niah import niah_cell_sample
from dhsa.models import load_model

length, thresholds = int(sys.argv[1]), [float(z) for z in sys.argv[2].split(",")]
model, tokenizer = load_model("gemma3", device="cpu", dtype=torch.float32)
essays = essay_sentences(os.environ.get("DHSA_HAYSTACK", DEFAULT_HAYSTACK))
shipped = hf._attend
captured = {}


def spy(q, k, v, binding, layer, scale, window, softcap, *, row):
    if layer == 5 and q.shape[2] > 1:
        captured["qk"] = (q.detach(), k.detach())
    return shipped(q, k, v, binding, layer, scale, window, softcap, row=row)


hf._attend = spy
dhsa.configure(model, dhsa.DHSAConfig(min_length=0, budget=1 << 20))
for index in range(3):
    sample = niah_cell_sample(length, index, 0.5, token_counter(tokenizer), essays)
    with torch.no_grad():
        model(tokenizer(sample.prompt, return_tensors="pt")["input_ids"])
    q, k = captured["qk"]
    for z in thresholds:
        config = dhsa.DHSAConfig(budget=1024, min_length=0, boundary_z=z)
        lengths = (lambda b: (b[1:] - b[:-1]).float())(compute_boundaries(k, config)[0])
        times = []
        for _ in range(5):
            start = time.perf_counter()
            dhsa.select(q, k, config, method="dhsa")
            times.append((time.perf_counter() - start) * 1e3)
        print(
            json.dumps(
                {
                    "index": index,
                    "keys": k.shape[2],
                    "boundary_z": z,
                    "chunks": len(lengths),
                    "mean_chunk": round(float(lengths.mean()), 1),
                    "shortest": int(lengths.min()),
                    "select_ms": round(sorted(times)[2], 1),
                }
            ),
            flush=True,
        )
