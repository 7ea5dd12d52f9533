"""Triton kernels for the sparse decode fill: score every chunk, then take the best within budget.

The torch fill (:meth:`dhsa.decode.ChunkSums.fill`) sorts the chunk scores with a top-k, which on
the GPU costs a dozen small launches and most of a decode step. Here two launches do it:

1. ``_chunk_scores_kernel`` (one program per ``(row, tile of chunk slots)``): averages the ``G``
   query heads of the row's group, scores each slot of the chunk table and clips each chunk to
   the candidate region ``[sink_end, window_start)``; slots with nothing left score ``-inf``.
2. ``_fill_kernel`` (one program per row): the greedy fill takes chunks in descending score until
   ``remaining`` keys, the last one cut to its latest keys. That set is everything scoring above
   the *cut score* ``t*``, the highest score whose chunks, with all better ones, hold more than
   ``remaining`` keys. ``t*`` is found by bisection over the scores' order-preserving integer
   images (32 rounds, each a masked sum of chunk sizes), then the chosen chunks are written out
   in slot order. Chunks tied at ``t*`` share what is left in slot order.

No device-to-host synchronization: the launch depends on shapes and host integers only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_common import order_key


@triton.jit
def _chunk_scores_kernel(
    Q,
    table,
    lo,
    hi,
    scores,
    sizes,
    stride_qb,
    stride_qh,
    kv_heads,
    slots,
    length,
    sink_end,
    window_start,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
    SQRT_NORM: tl.constexpr,
):
    row = tl.program_id(0)
    tile = tl.program_id(1)
    h = row % kv_heads
    b = (row // kv_heads).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    query = tl.zeros([BLOCK_D], dtype=tl.float32)
    for g in range(GROUP):
        head = (h * GROUP + g).to(tl.int64)
        query += tl.load(Q + b * stride_qb + head * stride_qh + offs_d, mask=d_ok, other=0.0).to(
            tl.float32
        )
    query = query / GROUP
    offs_s = tile * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = offs_s < slots
    reps = tl.load(
        table + (row.to(tl.int64) * slots + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
        mask=s_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    score = tl.sum(reps * query[None, :], axis=1)
    first = tl.load(lo + b * slots + offs_s, mask=s_ok, other=0)
    last = tl.load(hi + b * slots + offs_s, mask=s_ok, other=0)
    # The last slot holds the open tail's key sum: normalize it by the tail's current length.
    tail = offs_s == slots - 1
    count = tl.maximum(length - first, 1).to(tl.float32)
    if SQRT_NORM:
        count = tl.sqrt(count)
    score = tl.where(tail, score / count, score)
    size = tl.maximum(tl.minimum(last, window_start) - tl.maximum(first, sink_end), 0)
    score = tl.where(size > 0, score, float("-inf"))
    tl.store(scores + row.to(tl.int64) * slots + offs_s, score, mask=s_ok)
    tl.store(sizes + row.to(tl.int64) * slots + offs_s, size.to(tl.int32), mask=s_ok)


@triton.jit
def _keys_at_or_above(scores, sizes, base, slots, threshold, BLOCK_S: tl.constexpr):
    """Total size of the chunks of one row whose order key is at least ``threshold``."""
    total = tl.zeros([], dtype=tl.int64)
    for s0 in range(0, slots, BLOCK_S):
        offs = s0 + tl.arange(0, BLOCK_S)
        ok = offs < slots
        key = order_key(tl.load(scores + base + offs, mask=ok, other=float("-inf")))
        size = tl.load(sizes + base + offs, mask=ok, other=0)
        total += tl.sum(tl.where(key >= threshold, size, 0).to(tl.int64), axis=0)
    return total


@triton.jit
def _fill_kernel(
    scores,
    sizes,
    hi,
    starts,
    ends,
    kv_heads,
    slots,
    width,
    length,
    sink_end,
    window_start,
    remaining,
    BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0)
    b = (row // kv_heads).to(tl.int64)
    base = row.to(tl.int64) * slots
    out = row.to(tl.int64) * width
    # Bisection for the cut: the largest key t with size(key >= t) > remaining. When everything
    # fits, t stays below every key and all chunks are taken whole.
    low = tl.full([], -(2**31), dtype=tl.int64)
    high = tl.full([], 2**31 - 1, dtype=tl.int64)
    if _keys_at_or_above(scores, sizes, base, slots, low, BLOCK_S) > remaining:
        for _ in range(32):
            mid = low + (high - low + 1) // 2
            above = _keys_at_or_above(scores, sizes, base, slots, mid, BLOCK_S)
            low = tl.where(above > remaining, mid, low)
            high = tl.where(above > remaining, high, mid - 1)
        left = remaining - _keys_at_or_above(scores, sizes, base, slots, low + 1, BLOCK_S)
    else:
        low = low - 1
        left = tl.zeros([], dtype=tl.int64) + remaining
    tl.store(starts + out, 0)
    tl.store(ends + out, sink_end)
    tl.store(starts + out + 1, window_start)
    tl.store(ends + out + 1, length)
    written = tl.full([], 2, dtype=tl.int64)
    tied_before = tl.zeros([], dtype=tl.int64)
    for s0 in range(0, slots, BLOCK_S):
        offs = s0 + tl.arange(0, BLOCK_S)
        ok = offs < slots
        key = order_key(tl.load(scores + base + offs, mask=ok, other=float("-inf")))
        size = tl.load(sizes + base + offs, mask=ok, other=0).to(tl.int64)
        tied = ok & (key == low)
        tied_size = tl.where(tied, size, 0)
        before = tied_before + tl.cumsum(tied_size, axis=0) - tied_size
        take = tl.where(tied, tl.minimum(tl.maximum(left - before, 0), size), size)
        take = tl.where(ok & (key >= low) & (size > 0), take, 0)
        chosen = take > 0
        slot = written + tl.cumsum(chosen.to(tl.int64), axis=0) - 1
        end = tl.minimum(tl.load(hi + b * slots + offs, mask=ok, other=0), window_start)
        tl.store(starts + out + slot, (end - take).to(tl.int32), mask=chosen & (slot < width))
        tl.store(ends + out + slot, end.to(tl.int32), mask=chosen & (slot < width))
        written += tl.sum(chosen.to(tl.int64), axis=0)
        tied_before += tl.sum(tied_size, axis=0)
    for w0 in range(written, width, BLOCK_S):
        offs = w0 + tl.arange(0, BLOCK_S)
        tl.store(starts + out + offs, 0, mask=offs < width)
        tl.store(ends + out + offs, 0, mask=offs < width)


def fill_triton(
    q: Tensor,
    table: Tensor,
    lo: Tensor,
    hi: Tensor,
    *,
    length: int,
    sink_end: int,
    window_start: int,
    remaining: int,
    width: int,
    norm: str,
) -> tuple[Tensor, Tensor]:
    """The decode fill of :meth:`dhsa.decode.ChunkSums.fill` in two launches.

    Args:
        q: ``[B, Hq, 1, D]``, the newest query (any float dtype; averaged per group in float32).
        table: float32 ``[B, Hkv, N, D]`` contiguous chunk table: normalized closed chunks, zero
            unused slots, and in the last slot the open tail's key sum.
        lo, hi: int64 ``[B, N]`` contiguous: each slot's keys (unused slots ``0, 0``).
        length: keys in the cache (the query is key ``length - 1``).
        sink_end, window_start: the sink ``[0, sink_end)`` and the local window
            ``[window_start, length)``; chunks are clipped to the region between them.
        remaining: keys of the budget left for chunks.
        width: spans per row in the result, at least 2 plus the most chunks the fill can take.
        norm: ``"sqrt"`` or ``"mean"``, how the tail's sum is normalized.

    Returns ``(starts, ends)`` int32 ``[B, Hkv, width]``: the sink, the window, then the chosen
    chunks in slot order, then empty spans.
    """
    batch, kv_heads, slots, dim = table.shape
    rows = batch * kv_heads
    scores = torch.empty(rows, slots, dtype=torch.float32, device=table.device)
    sizes = torch.empty(rows, slots, dtype=torch.int32, device=table.device)
    block_d = max(16, triton.next_power_of_2(dim))
    block_s = max(16, min(128, 8192 // block_d))
    _chunk_scores_kernel[(rows, triton.cdiv(slots, block_s))](
        q,
        table,
        lo,
        hi,
        scores,
        sizes,
        q.stride(0),
        q.stride(1),
        kv_heads,
        slots,
        length,
        sink_end,
        window_start,
        GROUP=q.shape[1] // kv_heads,
        HEAD_DIM=dim,
        BLOCK_D=block_d,
        BLOCK_S=block_s,
        SQRT_NORM=norm == "sqrt",
        num_warps=4,
    )
    starts = torch.empty(batch, kv_heads, width, dtype=torch.int32, device=table.device)
    ends = torch.empty_like(starts)
    _fill_kernel[(rows,)](
        scores,
        sizes,
        hi,
        starts,
        ends,
        kv_heads,
        slots,
        width,
        length,
        sink_end,
        window_start,
        remaining,
        BLOCK_S=1024,
        num_warps=4,
    )
    return starts, ends
