"""Decode chunk scores: max over the group's query heads instead of the group mean."""

import json
import os
import sys

import torch

import dhsa.decode as dec
from dhsa.config import DHSAConfig
from dhsa.eval.generation import Contender, token_counter
from dhsa.eval.haystack import DEFAULT_HAYSTACK, essay_sentences
from dhsa.eval.niah import niah_cell_sample
from dhsa.eval.runner import answer_cell
from dhsa.models import load_model

length, budget, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cells = [tuple(map(float, c.split(":"))) for c in sys.argv[4].split(",")]


def fill(self, q, config, use_triton=None):
    length = self.length
    window_start = max(length - 1 - config.local, 0)
    sink_end = min(window_start, config.sink)
    remaining = max(config.budget - sink_end - (length - window_start), 0)
    top = min(self.table.shape[2], -(-remaining // max(self.shortest, 1)) + 2)
    batch, kv_heads = self.table.shape[:2]
    qh = q.float().view(batch, kv_heads, -1, q.shape[-1])  # [B, Hkv, G, D]
    per_head = self.table @ qh.transpose(-1, -2)  # [B, Hkv, C, G]
    if mode == "max":
        scores = per_head.max(-1).values
    elif mode == "softmax":  # log-sum-exp over heads, a soft max
        scores = torch.logsumexp(per_head, dim=-1)
    else:
        scores = per_head.mean(-1)
    tail_count = (length - self.lo[:, -1]).clamp(min=1)
    tail_scale = tail_count.float().sqrt() if self.norm == "sqrt" else tail_count.float()
    scores[:, :, -1] /= tail_scale[:, None]
    lo = self.lo.clamp(min=sink_end)
    hi = self.hi.clamp(max=window_start)
    cost = (hi - lo).clamp(min=0)
    scores.masked_fill_((cost == 0)[:, None], -torch.inf)
    order = torch.topk(scores, top, dim=-1, sorted=True).indices
    cost = cost[:, None].expand(-1, kv_heads, -1).gather(-1, order)
    take = torch.minimum((remaining - cost.cumsum(-1) + cost).clamp(min=0), cost)
    ends = hi[:, None].expand(-1, kv_heads, -1).gather(-1, order)
    span_starts = ends.new_empty(batch, kv_heads, top + 2)
    span_ends = torch.empty_like(span_starts)
    for column, (start, end) in enumerate(((0, sink_end), (window_start, length))):
        span_starts[..., column] = start
        span_ends[..., column] = end
    torch.sub(ends, take, out=span_starts[..., 2:])
    span_ends[..., 2:] = ends
    return span_starts, span_ends


dec.ChunkSums.fill = fill
model, tok = load_model("gemma3", device="cpu", dtype=torch.float32)
essays = essay_sentences(os.environ.get("DHSA_HAYSTACK", DEFAULT_HAYSTACK))
count = token_counter(tok)
for index, depth in cells:
    sample = niah_cell_sample(length, int(index), depth, count, essays)
    r = answer_cell(model, tok, sample, Contender("dhsa", budget), DHSAConfig(min_length=0))
    print(
        json.dumps(
            {
                "mode": mode,
                "index": int(index),
                "depth": depth,
                "score": r["score"],
                "reply": r["reply"],
            }
        ),
        flush=True,
    )
