"""NIAH gemma3: decode selection scored by the mean of the last `n` queries (the current query
block, sliding) instead of the newest query alone.

Usage: python qblock.py LENGTH BUDGET N CELLS
"""

import sys

import torch
from cells import answer_cells

import dhsa.hf as hf
from dhsa.kernels import attend_decode

length, budget, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
shipped = hf._attend
history = {}


def attend(q, k, v, binding, layer, scale, window, softcap, *, row):
    method, config = binding.plan(layer)
    if q.shape[2] > 1 or window is not None or method != "dhsa":
        if q.shape[2] > 1:
            history[layer] = q[:, :, q.shape[2] - (n - 1) :]
        return shipped(q, k, v, binding, layer, scale, window, softcap, row=row)
    recent = torch.cat([history.get(layer, q[:, :, :0]), q], dim=2)
    history[layer] = recent[:, :, recent.shape[2] - (n - 1) :]
    q_sel = recent.float().mean(dim=2, keepdim=True).to(q.dtype)
    session = binding.session
    starts, ends = session.select_spans(q_sel, k, config, layer=layer, row=row, norm="sqrt")
    return attend_decode(
        q, k, v, starts, ends, scale=scale, softcap=softcap, backend=binding.backend
    )


hf._attend = attend
answer_cells({"n": n}, length, budget, sys.argv[4])
