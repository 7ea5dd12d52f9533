"""``oracle_topk``: the keys with the most true attention mass (analysis only, quadratic time).

Per query block, the dense softmax probabilities of its queries (query heads of a KV group
averaged) are summed per key; sink and local window are kept and the rest of the budget goes to the
keys with the largest mass. This is the ceiling for any selector working at query-block
granularity. It computes full attention rows a tile at a time, so memory stays bounded but time is
``O(L^2)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import DHSAConfig
from ..layout import Geometry, Layout
from ..validation import check_finite
from .regions import block_regions


def select_oracle_topk(
    q: Tensor,
    k: Tensor,
    config: DHSAConfig,
    *,
    sliding_window=None,
    boundaries=None,
    scale: float | None = None,
) -> Layout:
    """Top-``budget`` keys by true attention mass per query block (see the module docstring)."""
    check_finite(q, k)
    batch, q_heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    bq = config.query_block
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    geometry = Geometry.of(q, k, bq, sliding_window)
    regions = block_regions(geometry, config.sink, config.local, k.device)
    num_blocks = regions.block_start.numel()
    k_pos = torch.arange(k_len, device=k.device)
    selected = torch.zeros(batch, kv_heads, num_blocks, k_len, dtype=torch.bool, device=k.device)
    kf = k.float()
    for qb in range(num_blocks):
        lo_q = int(regions.block_start[qb]) - (k_len - q_len)
        hi_q = lo_q + int(regions.block_end[qb] - regions.block_start[qb])
        qf = q[:, :, lo_q:hi_q].float().view(batch, kv_heads, group, hi_q - lo_q, dim)
        logits = torch.einsum("bhgqd,bhkd->bhgqk", qf, kf) * scale
        q_pos = regions.block_start[qb] + torch.arange(hi_q - lo_q, device=k.device)
        allowed = k_pos[None, :] <= q_pos[:, None]
        if sliding_window is not None:
            allowed &= q_pos[:, None] - k_pos[None, :] < sliding_window
        mass = logits.masked_fill(~allowed, -torch.inf).softmax(dim=-1).sum(dim=(2, 3))
        in_fixed = (k_pos < regions.sink_end[qb]) & (k_pos >= regions.sink_start[qb])
        in_fixed |= (k_pos >= regions.window_start[qb]) & (k_pos < regions.block_end[qb])
        candidate = (k_pos >= regions.candidate_start[qb]) & (k_pos < regions.candidate_end[qb])
        room = int(config.budget - regions.fixed_cost[qb])
        picks = min(room, int(candidate.sum()))
        chosen = in_fixed.expand(batch, kv_heads, -1).clone()
        if picks > 0:
            best = mass.masked_fill(~candidate, -torch.inf).topk(picks, dim=-1).indices
            chosen.scatter_(-1, best, True)
        selected[:, :, qb] = chosen
    return Layout.from_key_mask(selected.view(-1, k_len), geometry)
