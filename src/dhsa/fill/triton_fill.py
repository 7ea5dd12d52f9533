"""The fill as one Triton launch per tile: every row's chunk scores held in registers.

One program fills one row ``(batch, kv head, query block of the tile)``:

- each chunk's size is its part of the row's candidate region (chunks outside it have size 0 and
  are never taken);
- the fill takes chunks in descending score until ``remaining`` keys, the last one cut to its
  latest keys. That set is everything scoring above the *cut score* ``t*``, the highest score
  whose chunks, with all better ones, hold more than ``remaining`` keys; ``t*`` is found by
  bisection over the scores' order-preserving integer images (32 rounds, each a masked sum over
  the registers). Chunks tied at ``t*`` share what is left in position order, as the
  specification (:mod:`dhsa.fill.naive`) ranks them;
- the row is written as the sink span, the chosen chunks in position order, the window, then
  empty ``(0, 0)`` spans.

The launch depends on shapes and host integers only: nothing waits for the device. Rows of more
than :data:`MAX_RESIDENT_CHUNKS` chunks do not fit the registers (use the torch fill).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .regions import FillRegions

# Chunks of one row the kernel keeps in registers (128K keys at the minimum chunk length of 8).
MAX_RESIDENT_CHUNKS = 16384


@triton.jit
def order_key(score):
    """An int32 whose order is the float32 ``score``'s order (``-inf`` lowest among them, ``-0.0``
    equal to ``0.0``): the bisection searches these instead of floats."""
    score = tl.where(score == 0.0, 0.0, score)
    bits = score.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


# Integer arguments are not specialized (Triton would compile one variant per divisibility of each
# value, so every new tile, chunk count or decode length would compile again).
@triton.jit(
    do_not_specialize=[
        "sink_start",
        "sink_end",
        "window_start",
        "window_end",
        "candidate_start",
        "candidate_end",
        "remaining",
        "kv_heads",
        "tiles",
        "num_chunks",
        "stride_lo",
        "stride_hi",
        "stride_row",
        "stride_ob",
        "stride_oh",
        "stride_ot",
        "width",
    ]
)
def _fill_kernel(
    scores,
    lo,
    hi,
    sink_start,
    sink_end,
    window_start,
    window_end,
    candidate_start,
    candidate_end,
    remaining,
    starts,
    ends,
    status,
    kv_heads,
    tiles,
    num_chunks,
    stride_lo,
    stride_hi,
    stride_row,
    stride_ob,
    stride_oh,
    stride_ot,
    width,
    BLOCK_N: tl.constexpr,
    SCALAR_REGIONS: tl.constexpr,
    FLAGS: tl.constexpr,
):
    pid = tl.program_id(0)
    t = pid % tiles
    bh = pid // tiles
    b = (bh // kv_heads).to(tl.int64)
    h = (bh % kv_heads).to(tl.int64)
    out = b * stride_ob + h * stride_oh + t.to(tl.int64) * stride_ot
    if SCALAR_REGIONS:
        first = candidate_start
        last = candidate_end
        budget = remaining
        sink_lo = sink_start
        sink_hi = sink_end
        window_lo = window_start
        window_hi = window_end
    else:
        first = tl.load(candidate_start + t)
        last = tl.load(candidate_end + t)
        budget = tl.load(remaining + t)
        sink_lo = tl.load(sink_start + t)
        sink_hi = tl.load(sink_end + t)
        window_lo = tl.load(window_start + t)
        window_hi = tl.load(window_end + t)

    offs = tl.arange(0, BLOCK_N)
    ok = offs < num_chunks
    score = tl.load(scores + pid.to(tl.int64) * num_chunks + offs, mask=ok, other=float("-inf"))
    # Per-row chunk bounds sit one row (stride_row) apart; shared ones repeat (stride_row 0).
    own = (h * tiles + t) * stride_row
    chunk_lo = tl.load(lo + b * stride_lo + own + offs, mask=ok, other=0)
    chunk_hi = tl.load(hi + b * stride_hi + own + offs, mask=ok, other=0)
    end = tl.minimum(chunk_hi, last)
    size = tl.maximum(end - tl.maximum(chunk_lo, first), 0)
    if FLAGS:
        nonfinite = tl.sum(((score != score) | (score == float("inf"))).to(tl.int32), axis=0)
        tl.atomic_max(status, tl.minimum(nonfinite, 1))
    key = order_key(tl.where(size > 0, score, float("-inf")))

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
    count = tl.sum(chosen.to(tl.int32), axis=0)
    # A row that takes more chunks than the width holds keeps what fits and raises the flag.
    if FLAGS:
        tl.atomic_max(status + 1, tl.where(count + 2 > width, 1, 0))
    fits = chosen & (slot < width - 1)
    tl.store(starts + out + slot, (end - take).to(tl.int32), mask=fits)
    tl.store(ends + out + slot, end.to(tl.int32), mask=fits)
    window_slot = tl.minimum(count + 1, width - 1)
    tl.store(starts + out, sink_lo.to(tl.int32))
    tl.store(ends + out, sink_hi.to(tl.int32))
    tl.store(starts + out + window_slot, window_lo.to(tl.int32))
    tl.store(ends + out + window_slot, window_hi.to(tl.int32))
    for w0 in range(0, width, BLOCK_N):
        pad = w0 + offs
        empty = (pad > window_slot) & (pad < width)
        tl.store(starts + out + pad, 0, mask=empty)
        tl.store(ends + out + pad, 0, mask=empty)


def fill_triton(
    scores: Tensor,
    lo: Tensor,
    hi: Tensor,
    regions: FillRegions,
    starts: Tensor,
    ends: Tensor,
    status: Tensor | None,
) -> None:
    """The fill of :func:`dhsa.fill.greedy_fill` in one launch, written into ``starts, ends``
    (int32 ``[B, Hkv, T, width]``, last dim contiguous, views allowed) and ``status`` (int32
    ``[2]``, or None: no flags)."""
    batch, kv_heads, tiles, num_chunks = scores.shape
    if num_chunks > MAX_RESIDENT_CHUNKS:
        raise ValueError(
            f"{num_chunks} chunks per row exceed the register-resident fill's "
            f"{MAX_RESIDENT_CHUNKS}: use the torch fill"
        )
    if (
        lo.stride(-1) != 1
        or hi.stride(-1) != 1
        or starts.stride(3) != 1
        or ends.stride() != (starts.stride())
    ):
        raise ValueError(
            "the Triton fill needs lo, hi, starts and ends contiguous in their last dim"
        )
    stride_row = 0
    if lo.dim() == 4:  # per row: [B, Hkv, T, N], the rows of a batch one after another
        lo, hi = lo.contiguous(), hi.contiguous()
        stride_row = num_chunks
    # One compiled variant per power of two of the chunk count (the register width).
    block_n = max(16, triton.next_power_of_2(num_chunks))
    fields = regions.fields()
    if not regions.scalar:  # pointers all, one int64 per block
        fields = [
            torch.full((tiles,), x, dtype=torch.int64, device=scores.device)
            if isinstance(x, int)
            else x.to(torch.int64).contiguous()
            for x in fields
        ]
    _fill_kernel[(batch * kv_heads * tiles,)](
        scores.contiguous(),
        lo,
        hi,
        *fields,
        starts,
        ends,
        scores if status is None else status,
        kv_heads,
        tiles,
        num_chunks,
        lo.stride(0),
        hi.stride(0),
        stride_row,
        starts.stride(0),
        starts.stride(1),
        starts.stride(2),
        starts.shape[3],
        BLOCK_N=block_n,
        SCALAR_REGIONS=regions.scalar,
        FLAGS=status is not None,
        num_warps=max(4, min(16, block_n // 1024)),
    )
