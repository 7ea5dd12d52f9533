"""Triton kernel scoring a decode step's chunk table: one launch, no device-to-host sync.

The torch scoring (:meth:`dhsa.decode.ChunkSums.chunk_scores`) averages the query heads of each
group, multiplies by the table and normalizes the open tail's key sum: a handful of small launches
per step. Here one program per ``(row, tile of chunk slots)`` does all of it. What the scores are
used for (the budgeted fill) is :func:`dhsa.fill.greedy_fill`'s business.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit(do_not_specialize=["kv_heads", "slots", "length"])
def _chunk_scores_kernel(
    Q,
    table,
    lo,
    scores,
    stride_qb,
    stride_qh,
    kv_heads,
    slots,
    length,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
    SQRT_NORM: tl.constexpr,
    LENGTH_ON_DEVICE: tl.constexpr,
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
    # The last slot holds the open tail's key sum: normalize it by the tail's current length.
    first = tl.load(lo + b * slots + offs_s, mask=s_ok, other=0)
    tail = offs_s == slots - 1
    if LENGTH_ON_DEVICE:  # each row's length, read from the device
        keys = tl.load(length + b)
    else:
        keys = length
    count = tl.maximum(keys - first, 1).to(tl.float32)
    if SQRT_NORM:
        count = tl.sqrt(count)
    score = tl.where(tail, score / count, score)
    tl.store(scores + row.to(tl.int64) * slots + offs_s, score, mask=s_ok)


def chunk_scores_triton(
    q: Tensor,
    table: Tensor,
    lo: Tensor,
    *,
    length: int | Tensor,
    norm: str,
    out: Tensor | None = None,
) -> Tensor:
    """The scores of :meth:`dhsa.decode.ChunkSums.chunk_scores` in one launch.

    Args:
        q: ``[B, Hq, 1, D]``, the newest query (any float dtype; averaged per group in float32).
        table: float32 ``[B, Hkv, N, D]`` contiguous chunk table: normalized closed chunks, zero
            unused slots, and in the last slot the open tail's key sum.
        lo: int64 ``[B, N]`` contiguous: each slot's first key (the tail's start in the last).
        length: keys in the cache (the query is key ``length - 1``): a host integer, or int64
            ``[B]`` on the device (each row's own, read by the kernel: the launch is then the
            same at every step).
        norm: ``"sqrt"`` or ``"mean"``, how the tail's sum is normalized.
        out: float32 ``[B, Hkv, N]`` contiguous buffer to write into; allocated when None.

    Returns float32 ``[B, Hkv, N]``: each slot's table row dotted with the group's mean query,
    the tail's divided by the square root (or the number) of its keys.
    """
    batch, kv_heads, slots, dim = table.shape
    if out is None:
        out = torch.empty(batch, kv_heads, slots, dtype=torch.float32, device=table.device)
    scores = out
    block_d = max(16, triton.next_power_of_2(dim))
    block_s = max(16, min(128, 8192 // block_d))
    _chunk_scores_kernel[(batch * kv_heads, triton.cdiv(slots, block_s))](
        q,
        table,
        lo,
        scores,
        q.stride(0),
        q.stride(1),
        kv_heads,
        slots,
        length,
        GROUP=q.shape[1] // kv_heads,
        HEAD_DIM=dim,
        BLOCK_D=block_d,
        BLOCK_S=block_s,
        SQRT_NORM=norm == "sqrt",
        LENGTH_ON_DEVICE=isinstance(length, Tensor),
        num_warps=4,
    )
    return scores
