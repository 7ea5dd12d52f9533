"""``vertical_slash`` (MInference-style): the last query block picks key columns and diagonals.

The last query block's dense attention (its queries, all query heads of a KV group summed) gives
two profiles per KV head: the mass of every key column (``vertical``) and the mass of every
diagonal offset ``o = query position - key position`` (``slash``). Of the budget left after sink
and local window, ``config.vertical_slash.slash_share`` goes to the top diagonals, each a query
block wide, the rest to the top single columns. Every query block then keeps its sink and local
window, the chosen columns, and for each chosen offset ``o`` the keys
``[block_start - o, block_end - o)``, all clipped to its candidate region (between sink and
window, inside the sliding window if any), so no query exceeds the budget. Only columns and
offsets that reach the last block's candidate region compete: the sink and window are kept anyway.

Cost: one ``query_block x L`` attention per KV group, ``O(L * query_block * D)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import DHSAConfig
from ..layout import Layout
from ..validation import NonFiniteInputError
from .regions import BlockRegions, block_regions


def last_block_profiles(
    q: Tensor, k: Tensor, query_block: int, scale: float, sliding_window: int | None
) -> tuple[Tensor, Tensor]:
    """Attention mass of the last query block per key column and per diagonal offset.

    Returns float32 ``vertical [B, Hkv, Lk]`` (index: key position) and ``slash [B, Hkv, Lk]``
    (index: offset, query position minus key position).
    """
    batch, q_heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    n = q_len - (-(-q_len // query_block) - 1) * query_block
    last = q[:, :, q_len - n :].float().reshape(batch, kv_heads, group * n, dim)
    logits = (last @ k.float().transpose(-1, -2)) * scale
    q_pos = (k_len - n + torch.arange(n, device=q.device)).repeat(group)
    k_pos = torch.arange(k_len, device=q.device)
    allowed = k_pos[None, :] <= q_pos[:, None]
    if sliding_window is not None:
        allowed &= q_pos[:, None] - k_pos[None, :] < sliding_window
    probs = logits.masked_fill(~allowed, -torch.inf).softmax(dim=-1)
    if not bool(torch.isfinite(probs).all()):
        raise NonFiniteInputError(
            "q or k contains NaN or Inf: vertical_slash profiles are not finite"
        )
    vertical = probs.sum(dim=2)
    offsets = (q_pos[:, None] - k_pos[None, :]).clamp(min=0).expand(batch, kv_heads, -1, -1)
    slash = torch.zeros_like(vertical).scatter_add_(
        -1, offsets.reshape(batch, kv_heads, -1), probs.reshape(batch, kv_heads, -1)
    )
    return vertical, slash


def _top(profile: Tensor, eligible: Tensor, count: int) -> Tensor:
    """Indices ``[B, Hkv, count]`` of the largest eligible entries (``-1`` where none is left)."""
    count = min(count, profile.shape[-1])
    masked = profile.masked_fill(~eligible, -torch.inf)
    values, index = masked.topk(count, dim=-1)
    return torch.where(values > -torch.inf, index, torch.full_like(index, -1))


def _clip(starts: Tensor, ends: Tensor, regions: BlockRegions) -> tuple[Tensor, Tensor]:
    """Spans ``[B, Hkv, NQB, M]`` cut to each block's candidate region (empty when outside)."""
    lo = regions.candidate_start[:, None]
    hi = regions.candidate_end[:, None]
    return torch.maximum(starts, lo), torch.minimum(ends, hi)


def select_vertical_slash(
    q: Tensor,
    k: Tensor,
    config: DHSAConfig,
    *,
    sliding_window: int | None = None,
    boundaries=None,
    scale: float | None = None,
) -> Layout:
    """Vertical-slash layout for ``q [B, Hq, Lq, D]``, ``k [B, Hkv, Lk, D]`` (module docstring)."""
    batch, kv_heads, k_len, dim = k.shape
    q_len, bq = q.shape[2], config.query_block
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    regions = block_regions(q_len, k_len, bq, config.sink, config.local, sliding_window, k.device)
    vertical, slash = last_block_profiles(q, k, bq, scale, sliding_window)
    room = int((config.budget - regions.fixed_cost).min())
    num_slash = int(config.vertical_slash.slash_share * room) // bq
    num_vertical = room - num_slash * bq
    positions = torch.arange(k_len, device=k.device)
    last_start, last_end = regions.candidate_start[-1], regions.candidate_end[-1]
    columns = _top(vertical, (positions >= last_start) & (positions < last_end), num_vertical)
    # Offset o reaches the last block's candidates when [start - o, end - o) meets them.
    reach_lo = regions.block_start[-1] - last_end
    reach_hi = regions.block_end[-1] - last_start
    offsets = _top(slash, (positions > reach_lo) & (positions < reach_hi), num_slash)
    col_starts = columns[:, :, None, :].expand(-1, -1, len(regions.block_start), -1)
    diag_starts = regions.block_start[:, None] - offsets[:, :, None, :]
    col_starts, col_ends = _clip(col_starts, col_starts + 1, regions)
    diag_starts, diag_ends = _clip(diag_starts, diag_starts + bq, regions)
    # A column or offset that was not found (-1) must stay empty.
    col_ends = torch.where(columns[:, :, None, :] >= 0, col_ends, col_starts)
    diag_ends = torch.where(offsets[:, :, None, :] >= 0, diag_ends, diag_starts)
    fixed_starts, fixed_ends = regions.fixed_spans()
    shape = (batch, kv_heads, -1, 2)
    starts = torch.cat([fixed_starts.expand(shape), col_starts, diag_starts], dim=-1)
    ends = torch.cat([fixed_ends.expand(shape), col_ends, diag_ends], dim=-1)
    return Layout.from_padded(
        starts.reshape(-1, starts.shape[-1]),
        ends.reshape(-1, ends.shape[-1]),
        batch=batch,
        kv_heads=kv_heads,
        q_len=q_len,
        k_len=k_len,
        query_block=bq,
        sliding_window=sliding_window,
    )


__all__ = ["last_block_profiles", "select_vertical_slash"]
