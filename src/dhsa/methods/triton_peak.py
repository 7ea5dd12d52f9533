"""Stage 2 of the ``peak`` scoring as one Triton launch: each candidate chunk's best key.

A row ``(b, h, t)`` lists its candidate chunks in rank order, their keys laid end to end in the
row's slots ``[0, ends[-1])``: chunk ``j`` takes slots ``[ends[j] - size[j], ends[j])``, and
slot ``w`` of chunk ``j`` is key ``offset[j] + w`` (``offset = start - (ends - size)``). One
program takes ``BLOCK_W`` slots of one row: it finds each slot's chunk by binary search in
``ends``, loads the keys straight from ``k``, multiplies them with the group's queries on the
tensor cores, and folds ``max_g (scale * q_g . k - lse_g)`` into its chunk's score with an
atomic maximum. Only the candidate lists and the scores cross memory: no copy of the keys, no
per-slot tensor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit(do_not_specialize=["rows", "chunks", "length"])
def _chunk_peak_kernel(
    q_ptr,
    lse_ptr,
    k_ptr,
    offset_ptr,
    ends_ptr,
    out_ptr,
    rows,
    chunks,
    length,
    scale,
    stride_qb,
    stride_qg,
    stride_qt,
    stride_kb,
    stride_kl,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_W: tl.constexpr,
    SEARCH_STEPS: tl.constexpr,
    IEEE: tl.constexpr,
):
    tile = tl.program_id(0)
    row = tl.program_id(1)  # t of the tile
    head = tl.program_id(2)  # b * Hkv + h
    base = (head * rows + row).to(tl.int64) * chunks
    total = tl.load(ends_ptr + base + chunks - 1)
    w = tile * BLOCK_W + tl.arange(0, BLOCK_W)
    live = w < total
    # The slot's chunk: the number of ends at or before it (a right-sided search).
    lo = tl.zeros([BLOCK_W], dtype=tl.int32)
    hi = tl.zeros([BLOCK_W], dtype=tl.int32) + chunks
    for _ in range(SEARCH_STEPS):
        active = lo < hi
        mid = (lo + hi) // 2
        end = tl.load(ends_ptr + base + mid, mask=live & active, other=0)
        right = end <= w
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & ~right, mid, hi)
    which = tl.minimum(lo, chunks - 1)
    pos = tl.load(offset_ptr + base + which, mask=live, other=0) + w
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, DIM)
    q = tl.load(
        q_ptr + head * stride_qb + g[:, None] * stride_qg + row * stride_qt + d[None, :],
        mask=g[:, None] < GROUP,
        other=0.0,
    )
    lse = tl.load(lse_ptr + (head * GROUP + g) * rows + row, mask=g < GROUP, other=float("inf"))
    pos = tl.minimum(tl.maximum(pos, 0), length - 1).to(tl.int64)
    keys = tl.load(
        k_ptr + head.to(tl.int64) * stride_kb + pos[:, None] * stride_kl + d[None, :],
        mask=live[:, None],
        other=0.0,
    )
    if IEEE:
        logits = tl.dot(q, tl.trans(keys), input_precision="ieee")
    else:
        logits = tl.dot(q, tl.trans(keys))
    best = tl.max(logits * scale - lse[:, None], axis=0)  # padded heads are -inf
    tl.atomic_max(out_ptr + base + which, best, mask=live)


def chunk_peaks(
    head_q: Tensor,
    lse: Tensor,
    k: Tensor,
    offset: Tensor,
    ends: Tensor,
    *,
    width: int,
    scale: float,
) -> Tensor:
    """Float32 ``[B, Hkv, T, K]``: each listed chunk's ``max`` over its keys and the group's heads
    of ``scale * head_q[b, h, g, t] . k[b, h, p] - lse[b, h, g, t]``; ``-inf`` for empty chunks.

    ``head_q [B, Hkv, G, T, D]`` in ``k``'s dtype, ``lse`` float32 ``[B, Hkv, G, T]``, ``k [B,
    Hkv, L, D]``; ``offset`` and ``ends`` integer ``[B, Hkv, T, K]``: the row's chunks laid end
    to end end at ``ends`` (non-decreasing), slot ``w`` of chunk ``j`` being key ``offset[j] + w``
    (clamped into the keys); ``width`` (a host integer, so nothing waits for the device) bounds
    ``ends``. The head size must be a power of two of at least 16.
    """
    batch, kv_heads, group, rows, dim = head_q.shape
    chunks = ends.shape[-1]
    if dim < 16 or dim & (dim - 1):
        raise ValueError(f"the Triton peak kernel needs a power-of-two head size >= 16, got {dim}")
    out = torch.full((batch, kv_heads, rows, chunks), -torch.inf, device=k.device)
    if out.numel() == 0 or width <= 0:
        return out
    queries = head_q.reshape(batch * kv_heads, group, rows, dim)
    if queries.stride(-1) != 1:
        queries = queries.contiguous()
    keys = k.flatten(0, 1)  # a view when (b, h) share one stride, as caches' slices do
    if keys.stride(-1) != 1:
        keys = keys.contiguous()
    block_w = 64
    grid = (triton.cdiv(width, block_w), rows, batch * kv_heads)
    _chunk_peak_kernel[grid](
        queries,
        lse.reshape(batch * kv_heads, group, rows).contiguous(),
        keys,
        offset.to(torch.int64).contiguous(),
        ends.to(torch.int64).contiguous(),
        out,
        rows,
        chunks,
        k.shape[2],
        float(scale),
        queries.stride(0),
        queries.stride(1),
        queries.stride(2),
        keys.stride(0),
        keys.stride(1),
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        DIM=dim,
        BLOCK_W=block_w,
        SEARCH_STEPS=max(1, chunks.bit_length()),
        IEEE=k.dtype == torch.float32,
        num_warps=4,
    )
    return out
