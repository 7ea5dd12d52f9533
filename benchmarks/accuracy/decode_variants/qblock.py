"""NIAH gemma3: decode selection scored by the mean of the last `n` queries (the current query
block, sliding) instead of the newest query alone."""

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
from dhsa.kernels import attend_decode
from dhsa.models import load_model

length, budget, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cells = [tuple(map(float, c.split(":"))) for c in sys.argv[4].split(",")]
model, tok = load_model("gemma3", device="cpu", dtype=torch.float32)
essays = essay_sentences(os.environ.get("DHSA_HAYSTACK", DEFAULT_HAYSTACK))
count = token_counter(tok)
orig = hf._attend
history = {}


def attend(q, k, v, binding, layer, scale, window, softcap, *, row):
    method, config = binding.plan(layer)
    if q.shape[2] > 1:
        history[layer] = q[:, :, -(n - 1) :] if n > 1 else q[:, :, :0]
        return orig(q, k, v, binding, layer, scale, window, softcap, row=row)
    if window is not None or method != "dhsa":
        return orig(q, k, v, binding, layer, scale, window, softcap, row=row)
    past = history.get(layer, q[:, :, :0])
    recent = torch.cat([past, q], dim=2)
    history[layer] = recent[:, :, -(n - 1) :] if n > 1 else q[:, :, :0]
    q_sel = recent.float().mean(dim=2, keepdim=True).to(q.dtype)
    starts, ends = binding.session.select_spans(q_sel, k, config, layer=layer, row=row, norm="sqrt")
    return attend_decode(
        q, k, v, starts, ends, scale=scale, softcap=softcap, backend=binding.backend
    )


hf._attend = attend
base = DHSAConfig(min_length=0)
for index, depth in cells:
    sample = niah_cell_sample(length, int(index), depth, count, essays)
    r = answer_cell(model, tok, sample, Contender("dhsa", budget), base)
    print(
        json.dumps(
            {"n": n, "index": int(index), "depth": depth, "score": r["score"], "reply": r["reply"]}
        ),
        flush=True,
    )
