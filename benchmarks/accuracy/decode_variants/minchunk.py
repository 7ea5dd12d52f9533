"""NIAH gemma3 with dhsa, decode variant: a smaller minimum chunk (DHSAConfig.min_chunk)."""

import json
import os
import sys

import torch

from dhsa.config import DHSAConfig
from dhsa.eval.generation import Contender, token_counter
from dhsa.eval.haystack import DEFAULT_HAYSTACK, essay_sentences
from dhsa.eval.niah import niah_cell_sample
from dhsa.eval.runner import answer_cell
from dhsa.models import load_model

length, budget, mc = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cells = [tuple(map(float, c.split(":"))) for c in sys.argv[4].split(",")]
model, tok = load_model("gemma3", device="cpu", dtype=torch.float32)
essays = essay_sentences(os.environ.get("DHSA_HAYSTACK", DEFAULT_HAYSTACK))
count = token_counter(tok)
for index, depth in cells:
    sample = niah_cell_sample(length, int(index), depth, count, essays)
    r = answer_cell(
        model, tok, sample, Contender("dhsa", budget), DHSAConfig(min_length=0, min_chunk=mc)
    )
    print(
        json.dumps(
            {
                "min_chunk": mc,
                "index": int(index),
                "depth": depth,
                "score": r["score"],
                "reply": r["reply"],
            }
        ),
        flush=True,
    )
