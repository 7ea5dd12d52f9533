"""Decode chunk scores with plain means (norm='mean') for dhsa instead of sqrt(n) * mean."""

import json
import os
import sys

import torch

import dhsa.hf as hf
from dhsa.config import DHSAConfig
from dhsa.eval.generation import Contender, token_counter
from dhsa.eval.haystack import DEFAULT_HAYSTACK, essay_sentences
from dhsa.eval.niah import niah_cell_sample
from dhsa.eval.runner import answer_cell
from dhsa.models import load_model

length, budget, norm = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cells = [tuple(map(float, c.split(":"))) for c in sys.argv[4].split(",")]
hf.INCREMENTAL_NORMS["dhsa"] = norm
model, tok = load_model("gemma3", device="cpu", dtype=torch.float32)
essays = essay_sentences(os.environ.get("DHSA_HAYSTACK", DEFAULT_HAYSTACK))
count = token_counter(tok)
for index, depth in cells:
    sample = niah_cell_sample(length, int(index), depth, count, essays)
    r = answer_cell(model, tok, sample, Contender("dhsa", budget), DHSAConfig(min_length=0))
    print(
        json.dumps(
            {
                "norm": norm,
                "index": int(index),
                "depth": depth,
                "score": r["score"],
                "reply": r["reply"],
            }
        ),
        flush=True,
    )
