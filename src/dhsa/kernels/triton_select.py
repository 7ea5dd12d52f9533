"""Triton kernel for the prefill greedy fill: each query block's best chunks within its budget.

The torch fill (:func:`dhsa.methods.greedy.greedy_layout`) ranks each block's chunks with a top-k,
gathers their sizes, merges the candidate spans with a sort and writes them out: about forty
launches per tile of blocks, most of the selection time at 128K keys. Here one launch per tile
does the fill of every ``(batch, kv head, query block)`` row, its row of chunk scores held in
registers:

- each chunk's size is its part of the row's candidate region ``[candidate_start,
  candidate_end)`` (chunks outside it have size 0 and are never taken);
- the greedy fill takes chunks in descending score until ``remaining`` keys, the last one cut to
  its latest keys. That set is everything scoring above the *cut score* ``t*``, the highest score
  whose chunks, with all better ones, hold more than ``remaining`` keys; ``t*`` is found by
  bisection over the scores' order-preserving integer images (32 rounds, each a masked sum over
  the registers). Chunks tied at ``t*`` share what is left in position order;
- the row is written as the sink span, the chosen chunks in position order, then the local
  window, padded with empty spans: sorted and disjoint, so the layout needs no merge.

A row whose scores hold NaN or ``+inf`` raises the tile's ``bad`` flag, read once by the caller.
Rows of more than :data:`MAX_RESIDENT_CHUNKS` chunks do not fit the registers: the caller uses
the torch fill for them.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .triton_common import order_key

# Chunks of one row the kernel keeps in registers (128K keys at the minimum chunk length of 8).
MAX_RESIDENT_CHUNKS = 16384


# Integer arguments are not specialized (Triton would compile one variant per divisibility of each
# value, so every new tile offset or chunk count of a prompt would compile again).
@triton.jit(
    do_not_specialize=[
        "kv_heads",
        "q0",
        "tile_blocks",
        "num_blocks",
        "num_chunks",
        "bounds_stride",
        "width",
    ]
)
def _prefill_fill_kernel(
    scores,
    bounds,
    sink_start,
    sink_end,
    window_start,
    block_end,
    candidate_start,
    candidate_end,
    remaining,
    starts,
    ends,
    bad,
    kv_heads,
    q0,
    tile_blocks,
    num_blocks,
    num_chunks,
    bounds_stride,
    width,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    t = pid % tile_blocks
    bh = pid // tile_blocks
    b = (bh // kv_heads).to(tl.int64)
    qb = q0 + t
    out = (bh.to(tl.int64) * num_blocks + qb) * width
    first = tl.load(candidate_start + qb)
    last = tl.load(candidate_end + qb)
    budget = tl.load(remaining + qb)

    offs = tl.arange(0, BLOCK_N)
    ok = offs < num_chunks
    score = tl.load(scores + pid.to(tl.int64) * num_chunks + offs, mask=ok, other=float("-inf"))
    lo = tl.load(bounds + b * bounds_stride + offs, mask=ok, other=0)
    hi = tl.load(bounds + b * bounds_stride + offs + 1, mask=ok, other=0)
    size = tl.maximum(tl.minimum(hi, last) - tl.maximum(lo, first), 0)
    nonfinite = tl.sum(((score != score) | (score == float("inf"))).to(tl.int32), axis=0)
    tl.atomic_max(bad, tl.minimum(nonfinite, 1))
    key = order_key(tl.where(size > 0, score, float("-inf")))
    size = tl.where(size > 0, size, 0)

    # Bisection for the cut: the largest key t with size(key >= t) > budget. When everything
    # fits, t stays below every key and all chunks are taken whole.
    low = tl.full([], -(2**31), dtype=tl.int64)
    high = tl.full([], 2**31 - 1, dtype=tl.int64)
    total = tl.sum(size.to(tl.int64), axis=0)
    if total > budget:
        for _ in range(32):
            mid = low + (high - low + 1) // 2
            above = tl.sum(tl.where(key >= mid, size, 0).to(tl.int64), axis=0)
            low = tl.where(above > budget, mid, low)
            high = tl.where(above > budget, high, mid - 1)
        left = budget - tl.sum(tl.where(key >= low + 1, size, 0).to(tl.int64), axis=0)
    else:
        low = low - 1
        left = tl.zeros([], dtype=tl.int64) + budget
    tied = key == low
    tied_size = tl.where(tied, size, 0).to(tl.int64)
    before = tl.cumsum(tied_size, axis=0) - tied_size
    take = tl.where(tied, tl.minimum(tl.maximum(left - before, 0), size), size)
    take = tl.where((key >= low) & (size > 0), take, 0)
    chosen = take > 0
    slot = tl.cumsum(chosen.to(tl.int32), axis=0)  # after the sink, in slot 0
    end = tl.minimum(hi, last)
    tl.store(starts + out + slot, (end - take).to(tl.int32), mask=chosen & (slot < width))
    tl.store(ends + out + slot, end.to(tl.int32), mask=chosen & (slot < width))
    count = tl.sum(chosen.to(tl.int32), axis=0)
    tl.atomic_max(bad, tl.where(count + 2 > width, 2, 0))  # cannot happen with a valid width
    tl.store(starts + out, tl.load(sink_start + qb).to(tl.int32))
    tl.store(ends + out, tl.load(sink_end + qb).to(tl.int32))
    tl.store(starts + out + count + 1, tl.load(window_start + qb).to(tl.int32))
    tl.store(ends + out + count + 1, tl.load(block_end + qb).to(tl.int32))
    for w0 in range(0, width, BLOCK_N):
        pad = w0 + offs
        empty = (pad > count + 1) & (pad < width)
        tl.store(starts + out + pad, 0, mask=empty)
        tl.store(ends + out + pad, 0, mask=empty)


def prefill_fill_tile(
    scores: Tensor,
    bounds: Tensor,
    regions,
    remaining: Tensor,
    q0: int,
    out_starts: Tensor,
    out_ends: Tensor,
    bad: Tensor,
) -> None:
    """Fill the query blocks ``q0 .. q0 + T - 1`` of every ``(batch, kv head)``.

    Args:
        scores: float32 ``[B, Hkv, T, N]`` contiguous chunk scores of the tile's blocks.
        bounds: int64 ``[B, N + 1]`` chunk boundaries.
        regions: the :class:`dhsa.methods.regions.BlockRegions` of all blocks.
        remaining: int64 ``[num_blocks]``, keys of each block's budget left for chunks.
        q0: the tile's first query block.
        out_starts, out_ends: int32 ``[B, Hkv, num_blocks, width]``, written for the tile's
            blocks: sink, chosen chunks in position order, window, then empty ``(0, 0)`` spans.
            ``width`` must be at least 2 plus the most chunks a block can take.
        bad: int32 ``[1]``, raised to 1 when some score is NaN or ``+inf``, to 2 when a row
            took more chunks than ``width`` holds (a caller's error).
    """
    batch, kv_heads, tile_blocks, num_chunks = scores.shape
    if num_chunks > MAX_RESIDENT_CHUNKS:
        raise ValueError(
            f"{num_chunks} chunks per row exceed the register-resident fill's "
            f"{MAX_RESIDENT_CHUNKS}: use the torch fill"
        )
    # One compiled variant per power of two of the chunk count (the register width).
    block_n = max(16, triton.next_power_of_2(num_chunks))
    bounds = bounds.contiguous()
    _prefill_fill_kernel[(batch * kv_heads * tile_blocks,)](
        scores,
        bounds,
        regions.sink_start,
        regions.sink_end,
        regions.window_start,
        regions.block_end,
        regions.candidate_start,
        regions.candidate_end,
        remaining,
        out_starts,
        out_ends,
        bad,
        kv_heads,
        q0,
        tile_blocks,
        out_starts.shape[2],
        num_chunks,
        bounds.stride(0),
        out_starts.shape[3],
        BLOCK_N=block_n,
        num_warps=max(4, min(16, block_n // 1024)),
    )
