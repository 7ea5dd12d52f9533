"""Every chunk's key sum in one Triton launch: one program per ``(chunk, batch and KV head)``
reads the chunk's keys in place and sums them in float32, so neither a float32 copy of the keys
nor an atomic addition per key is needed."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit(do_not_specialize=["num_chunks", "kv_heads"])
def _chunk_sum_kernel(
    k_ptr,
    bounds_ptr,
    out_ptr,
    num_chunks,
    kv_heads,
    stride_kb,
    stride_kl,
    DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    chunk = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)  # b * Hkv + h
    edge = bounds_ptr + (head // kv_heads) * (num_chunks + 1) + chunk
    start = tl.load(edge)
    end = tl.load(edge + 1)
    d = tl.arange(0, BLOCK_D)
    total = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
    for l0 in range(start, end, BLOCK_L):
        at = l0 + tl.arange(0, BLOCK_L)
        keys = tl.load(
            k_ptr + head * stride_kb + at[:, None] * stride_kl + d[None, :],
            mask=(at[:, None] < end) & (d[None, :] < DIM),
            other=0.0,
        )
        total += keys.to(tl.float32)
    tl.store(out_ptr + (head * num_chunks + chunk) * DIM + d, tl.sum(total, axis=0), mask=d < DIM)


def chunk_sums(k: Tensor, bounds: Tensor) -> Tensor:
    """Float32 ``[B, Hkv, N, D]``: the sum of the keys ``k [B, Hkv, L, D]`` of every chunk of
    ``bounds`` (int64 ``[B, N + 1]``, non-decreasing, within ``[0, L]``); 0 for empty chunks."""
    batch, kv_heads, _, dim = k.shape
    num_chunks = bounds.shape[1] - 1
    out = torch.empty(batch, kv_heads, num_chunks, dim, dtype=torch.float32, device=k.device)
    if out.numel() == 0:
        return out
    keys = k.flatten(0, 1)  # a view when (b, h) share one stride, as caches' slices do
    if keys.stride(-1) != 1:
        keys = keys.contiguous()
    _chunk_sum_kernel[(num_chunks, batch * kv_heads)](
        keys,
        bounds.to(torch.int64).contiguous(),
        out,
        num_chunks,
        kv_heads,
        keys.stride(0),
        keys.stride(1),
        DIM=dim,
        BLOCK_D=triton.next_power_of_2(dim),
        BLOCK_L=32,
        num_warps=4,
    )
    return out
