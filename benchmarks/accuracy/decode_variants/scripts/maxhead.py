"""Decode chunk scores: max over the group's query heads instead of the group mean.

Usage: python maxhead.py LENGTH BUDGET MODE CELLS (MODE: max, or mean as shipped)
"""

import sys

from cells import answer_cells

import dhsa.decode as dec

length, budget, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


def chunk_scores(self, q):
    batch, kv_heads = self.table.shape[:2]
    per_head = self.table @ q.float().view(batch, kv_heads, -1, q.shape[-1]).transpose(-1, -2)
    return per_head.max(-1).values if mode == "max" else per_head.mean(-1)


dec.ChunkSums.chunk_scores = chunk_scores
answer_cells({"mode": mode}, length, budget, sys.argv[4])
