"""``hip`` (HiP attention): hierarchical top-k search for the key blocks each query block needs.

Per query block, the candidate keys (between the attention sink and the local window, inside the
sliding window if any) are cut into ``n = room // hip.block`` equal ranges, ``room`` being the
budget left after sink and window. Each round halves every range longer than ``hip.block`` and
scores each half by the largest dot product between the block's queries (every query head of the
KV group) and a representative block of ``hip.block`` keys at the half's centre; the best
``n`` halves survive. After about ``log2(candidates / room)`` rounds the ``n`` survivors are at
most ``hip.block`` long and become the selected spans, so no query exceeds the budget.

Each round costs ``2 * room * G * query_block * D`` per query block, so selection is
``O(L * room * D * log(L / room))`` in time and never forms an ``L x L`` tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import DHSAConfig
from ..layout import Layout
from ..validation import NonFiniteInputError
from .regions import BlockRegions, block_regions


def _padded_query_blocks(q: Tensor, kv_heads: int, query_block: int) -> Tensor:
    """Every query of a block, the ``G`` heads of a KV group side by side: float32
    ``[B * Hkv, NQB, G * Bq, D]``. A short last block repeats its last query (a repeated query
    leaves every max dot product unchanged, so no mask is needed). The heads stay apart: a range
    that one head looks for keeps its score instead of being averaged away by the others."""
    batch, q_heads, q_len, dim = q.shape
    group = q_heads // kv_heads
    num_blocks = -(-q_len // query_block)
    rows = torch.clamp(torch.arange(num_blocks * query_block, device=q.device), max=q_len - 1)
    x = q[:, :, rows].float().view(batch, kv_heads, group, num_blocks, query_block, dim)
    x = x.permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch * kv_heads, num_blocks, group * query_block, dim)


def _score_ranges(queries: Tensor, keys: Tensor, lo: Tensor, hi: Tensor, rep: int) -> Tensor:
    """Max ``q . k`` between each query block and the ``rep`` keys at the centre of each range.

    ``queries [R, T, Bq, D]``, ``keys [R, L, D]``, ranges ``lo, hi [R, T, M]``. Returns float32
    ``[R, T, M]``, ``-inf`` for empty ranges.
    """
    first = torch.clamp((lo + hi) // 2 - rep // 2, min=0)
    first = torch.maximum(torch.minimum(first, hi - rep), lo)
    # Ranges shorter than ``rep`` repeat their last key: a repeat leaves the max unchanged.
    positions = torch.minimum(
        first[..., None] + torch.arange(rep, device=keys.device), hi[..., None] - 1
    )
    rows = torch.arange(keys.shape[0], device=keys.device)[:, None]
    flat = positions.clamp(min=0).flatten(1)
    gathered = keys[rows, flat].view(*positions.shape, keys.shape[-1])
    dots = torch.einsum("rtqd,rtmkd->rtmqk", queries, gathered)
    best = dots.amax(dim=(-1, -2))
    return best.masked_fill(hi <= lo, -torch.inf)


def _search(
    queries: Tensor,
    keys: Tensor,
    start: Tensor,
    end: Tensor,
    keep: int,
    rep: int,
) -> tuple[Tensor, Tensor]:
    """Hierarchical top-``keep`` ranges of ``[start, end)`` ``[T]``, ``hip.block = rep`` long.

    Returns ``lo, hi [R, T, keep]`` (empty ranges where the candidates ran out).
    """
    rows, tile = keys.shape[0], start.shape[0]
    i = torch.arange(keep + 1, device=keys.device)
    edges = start[:, None] + (end - start)[:, None] * i // keep
    lo = edges[:, :-1].expand(rows, tile, keep)
    hi = edges[:, 1:].expand(rows, tile, keep)
    # A range longer than ``rep`` always shrinks when halved, so this ends after about
    # log2(longest range / rep) rounds.
    while bool((hi - lo > rep).any()):
        splits = hi - lo > rep
        mid = torch.where(splits, (lo + hi) // 2, hi)
        halves_lo = torch.cat([lo, mid], dim=-1)
        halves_hi = torch.cat([mid, hi], dim=-1)
        scores = _score_ranges(queries, keys, halves_lo, halves_hi, rep)
        best = scores.topk(keep, dim=-1).indices
        lo, hi = halves_lo.gather(-1, best), halves_hi.gather(-1, best)
    return lo, hi


def select_hip(
    q: Tensor,
    k: Tensor,
    config: DHSAConfig,
    *,
    sliding_window: int | None = None,
    boundaries=None,
    scale: float | None = None,
) -> Layout:
    """HiP layout for ``q [B, Hq, Lq, D]``, ``k [B, Hkv, Lk, D]`` (see the module docstring)."""
    batch, kv_heads, k_len, dim = k.shape
    q_len, bq, rep = q.shape[2], config.query_block, config.hip.block
    regions = block_regions(q_len, k_len, bq, config.sink, config.local, sliding_window, k.device)
    queries = _padded_query_blocks(q, kv_heads, bq)
    keys = k.reshape(batch * kv_heads, k_len, dim).float()
    if not (bool(torch.isfinite(queries).all()) and bool(torch.isfinite(keys).all())):
        raise NonFiniteInputError("q or k contains NaN or Inf: hip scores are not finite")
    room = int((config.budget - regions.fixed_cost).min())
    # Leaves never outgrow the budget: with less room than one block, the leaves shrink.
    rep = max(min(rep, room), 1)
    keep = room // rep
    fixed_starts, fixed_ends = regions.fixed_spans()
    num_blocks = regions.block_start.numel()
    width = queries.shape[2]
    tile = max(1, config.tile_elements // max(batch * kv_heads * 2 * keep * rep * width, 1))
    starts, ends = [], []
    for t0 in range(0, num_blocks, tile):
        t1 = min(t0 + tile, num_blocks)
        lo, hi = _select_tile(queries, keys, regions, t0, t1, keep, rep, room)
        rows = (batch * kv_heads, t1 - t0, 2)
        starts.append(torch.cat([fixed_starts[t0:t1].expand(rows), lo], dim=-1))
        ends.append(torch.cat([fixed_ends[t0:t1].expand(rows), hi], dim=-1))
    width = keep + 2
    return Layout.from_padded(
        torch.cat(starts, dim=1).reshape(-1, width),
        torch.cat(ends, dim=1).reshape(-1, width),
        batch=batch,
        kv_heads=kv_heads,
        q_len=q_len,
        k_len=k_len,
        query_block=bq,
        sliding_window=sliding_window,
    )


def _select_tile(
    queries: Tensor,
    keys: Tensor,
    regions: BlockRegions,
    t0: int,
    t1: int,
    keep: int,
    rep: int,
    room: int,
) -> tuple[Tensor, Tensor]:
    """Selected ranges ``[R, t1 - t0, keep]`` of query blocks ``t0..t1``: everything when the
    candidates fit in ``room``, the hierarchical search's survivors otherwise."""
    start = regions.candidate_start[t0:t1]
    end = regions.candidate_end[t0:t1]
    if keep == 0:
        empty = torch.zeros(keys.shape[0], t1 - t0, 0, dtype=torch.int64, device=keys.device)
        return empty, empty
    lo, hi = _search(queries[:, t0:t1], keys, start, end, keep, rep)
    fits = (end - start <= room)[None, :, None]
    first = torch.arange(keep, device=keys.device) == 0
    whole_lo = torch.where(first, start[:, None], end[:, None]).expand_as(lo)
    whole_hi = end[:, None].expand_as(hi)
    return torch.where(fits, whole_lo, lo), torch.where(fits, whole_hi, hi)
