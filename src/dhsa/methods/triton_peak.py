"""Stage 2 of the ``peak`` scoring as one Triton launch: the best key's logit, keys read in place.

For every row ``(b, h, t)`` and slot ``w`` the kernel reads key ``positions[b, h, t, w]`` of
``k`` and writes ``max_g (scale * q[b, h, g, t] . k - lse[b, h, g, t])``: the largest per-token
log mass any query head of the group gives it. The tensor-operation form gathers those keys into
a ``[B, Hkv, T, W, D]`` copy first (26 GB per layer at 128K keys and budget 2048); here one
program loads ``BLOCK_W`` keys straight from ``k`` and multiplies them with the group's queries
on the tensor cores, so only the positions and the scores cross memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit(do_not_specialize=["rows", "width", "length"])
def _best_key_kernel(
    q_ptr,
    lse_ptr,
    k_ptr,
    pos_ptr,
    out_ptr,
    rows,
    width,
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
    IEEE: tl.constexpr,
):
    tile = tl.program_id(0)
    row = tl.program_id(1)  # t of the tile
    head = tl.program_id(2)  # b * Hkv + h
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, DIM)
    w = tile * BLOCK_W + tl.arange(0, BLOCK_W)
    live = w < width
    q = tl.load(
        q_ptr + head * stride_qb + g[:, None] * stride_qg + row * stride_qt + d[None, :],
        mask=g[:, None] < GROUP,
        other=0.0,
    )
    lse = tl.load(lse_ptr + (head * GROUP + g) * rows + row, mask=g < GROUP, other=float("inf"))
    slot = (head * rows + row).to(tl.int64) * width + w
    pos = tl.load(pos_ptr + slot, mask=live, other=0)
    pos = tl.minimum(tl.maximum(pos, 0), length - 1).to(tl.int64)
    keys = tl.load(k_ptr + head.to(tl.int64) * stride_kb + pos[:, None] * stride_kl + d[None, :])
    if IEEE:
        logits = tl.dot(q, tl.trans(keys), input_precision="ieee")
    else:
        logits = tl.dot(q, tl.trans(keys))
    logits = logits * scale - lse[:, None]  # [GROUP_PAD, BLOCK_W]; padded heads are -inf
    tl.store(out_ptr + slot, tl.max(logits, axis=0), mask=live)


def best_key_scores(
    head_q: Tensor, lse: Tensor, k: Tensor, positions: Tensor, *, scale: float
) -> Tensor:
    """Float32 ``[B, Hkv, T, W]``: ``max_g (scale * head_q[b, h, g, t] . k[b, h, p] - lse[b, h,
    g, t])`` at ``p = positions[b, h, t, w]`` (clamped into the keys).

    ``head_q [B, Hkv, G, T, D]`` in ``k``'s dtype, ``lse`` float32 ``[B, Hkv, G, T]``, ``k [B,
    Hkv, L, D]``, ``positions`` integer ``[B, Hkv, T, W]``. The head
    size must be a power of two of at least 16 (the tensor cores' tile).
    """
    batch, kv_heads, group, rows, dim = head_q.shape
    width = positions.shape[-1]
    if dim < 16 or dim & (dim - 1):
        raise ValueError(f"the Triton best-key kernel needs a power-of-two head size >= 16: {dim}")
    out = torch.empty(batch, kv_heads, rows, width, dtype=torch.float32, device=k.device)
    if out.numel() == 0:
        return out
    queries = head_q.reshape(batch * kv_heads, group, rows, dim)
    if queries.stride(-1) != 1:
        queries = queries.contiguous()
    lse = lse.reshape(batch * kv_heads, group, rows).contiguous()
    positions = positions.reshape(batch * kv_heads, rows, width).contiguous()
    keys = k.flatten(0, 1)  # a view when (b, h) share one stride, as caches' slices do
    if keys.stride(-1) != 1:
        keys = keys.contiguous()
    block_w = 64
    grid = (triton.cdiv(width, block_w), rows, batch * kv_heads)
    _best_key_kernel[grid](
        queries,
        lse,
        keys,
        positions,
        out,
        rows,
        width,
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
        IEEE=k.dtype == torch.float32,
        num_warps=4,
    )
    return out
