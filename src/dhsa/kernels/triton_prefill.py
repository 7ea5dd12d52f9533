"""The Triton backend: fused span-sparse flash-attention forward straight from a layout.

One program serves one layout row ``(batch, kv_head, query_block)``: it stacks the queries of the
row's block for the ``G`` query heads of the KV group into one ``[G * query_block, D]`` tile (split
over a few programs when that tile would not fit in registers), walks the row's key stream (see
:mod:`dhsa.kernels.triton_common`) in dense tiles with an online softmax, and writes the output
once. Each K/V tile is loaded once for all the heads it serves; no gathered copy of K/V and no
``L x L`` tensor is made. Single-query layouts (decode) go to :mod:`dhsa.kernels.triton_decode`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..intmath import ceil_div
from ..layout import Layout
from .triton_common import (
    attend_stream,
    check_inputs,
    dot_precision,
    key_stream,
    logit_constants,
)
from .triton_decode import attend_triton_decode


@triton.jit
def _prefill_kernel(
    Q,
    K,
    V,
    Out,
    row_stream,
    key_pos,
    key_bias,
    stride_qb,
    stride_qh,
    stride_ql,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    stride_ob,
    stride_oh,
    stride_ol,
    q_len,
    q_offset,
    kv_heads,
    num_q_blocks,
    window,
    qk_scale,
    cap_in,
    cap_out,
    GROUP: tl.constexpr,
    QUERY_BLOCK: tl.constexpr,
    HEADS: tl.constexpr,
    QROWS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    row = tl.program_id(0)
    part = tl.program_id(1)
    q_parts: tl.constexpr = (QUERY_BLOCK + QROWS - 1) // QROWS
    head0 = (part // q_parts) * HEADS
    sub = (part % q_parts) * QROWS
    qb = row % num_q_blocks
    h = (row // num_q_blocks) % kv_heads
    b = (row // num_q_blocks // kv_heads).to(tl.int64)

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    g = head0 + offs_m // QROWS
    in_block = sub + offs_m % QROWS
    qi = qb * QUERY_BLOCK + in_block
    row_ok = (offs_m < HEADS * QROWS) & (g < GROUP) & (in_block < QUERY_BLOCK) & (qi < q_len)
    q_pos = q_offset + qi
    q_first = q_offset + qb * QUERY_BLOCK + sub
    q_last = tl.minimum(q_first + QROWS, q_offset + tl.minimum((qb + 1) * QUERY_BLOCK, q_len)) - 1

    head = (h * GROUP + g).to(tl.int64)
    q_ptrs = Q + b * stride_qb + head[:, None] * stride_qh + qi[:, None] * stride_ql
    io_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_ptrs + offs_d[None, :], mask=io_mask, other=0.0)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = attend_stream(
        acc,
        m_i,
        l_i,
        q,
        K + b * stride_kb + h * stride_kh,
        V + b * stride_vb + h * stride_vh,
        stride_kl,
        stride_vl,
        key_pos,
        key_bias,
        tl.load(row_stream + row),
        tl.load(row_stream + row + 1),
        q_pos,
        q_first,
        q_last,
        window,
        qk_scale,
        cap_in,
        cap_out,
        BLOCK_N,
        HEAD_DIM,
        BLOCK_D,
        HAS_BIAS,
        HAS_SOFTCAP,
        HAS_WINDOW,
        DOT_PRECISION,
    )
    # Queries that saw no key have l_i == 0 and acc == 0: they output zeros.
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_ptrs = Out + b * stride_ob + head[:, None] * stride_oh + qi[:, None] * stride_ol
    tl.store(o_ptrs + offs_d[None, :], out.to(Out.dtype.element_ty), mask=io_mask)


@dataclass(frozen=True)
class PrefillTiles:
    """Tile shape of one launch: ``heads`` query heads x ``qrows`` queries per program."""

    heads: int
    qrows: int
    block_n: int
    num_warps: int
    num_stages: int


def default_tiles(head_dim: int, group: int, query_block: int, *, rows_target: int = 128):
    """Tiles measured on the H100 (notes/gpu.md): about ``rows_target`` stacked query rows per
    program, fewer for ``D = 256`` so the accumulator stays in registers."""
    if head_dim > 128:
        rows_target = min(rows_target, 64)
    qrows = min(query_block, rows_target)
    heads = max(1, min(group, rows_target // qrows))
    block_n = 32 if head_dim > 128 else 64
    return PrefillTiles(heads=heads, qrows=qrows, block_n=block_n, num_warps=8, num_stages=3)


def launch_prefill(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Layout,
    *,
    scale: float,
    softcap: float | None,
    tiles: PrefillTiles | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Launch :func:`_prefill_kernel` over every layout row, writing into ``out`` (allocated
    like ``q`` when None)."""
    batch, q_heads, q_len, dim = q.shape
    group = q_heads // k.shape[1]
    bq = layout.query_block
    tiles = tiles or default_tiles(dim, group, bq)
    row_stream, key_pos, key_bias = key_stream(layout)
    out = torch.empty_like(q) if out is None else out
    q_parts = ceil_div(bq, tiles.qrows)
    head_parts = ceil_div(group, tiles.heads)
    block_m = max(16, triton.next_power_of_2(tiles.heads * tiles.qrows))
    qk_scale, cap_in, cap_out = logit_constants(scale, softcap)
    grid = (layout.num_rows, head_parts * q_parts)
    _prefill_kernel[grid](
        q,
        k,
        v,
        out,
        row_stream,
        key_pos,
        key_pos if key_bias is None else key_bias,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        q_len,
        layout.q_offset,
        layout.kv_heads,
        layout.num_q_blocks,
        layout.sliding_window or 0,
        qk_scale,
        cap_in,
        cap_out,
        GROUP=group,
        QUERY_BLOCK=bq,
        HEADS=tiles.heads,
        QROWS=tiles.qrows,
        BLOCK_M=block_m,
        BLOCK_N=tiles.block_n,
        HEAD_DIM=dim,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),
        HAS_BIAS=layout.span_bias is not None,
        HAS_SOFTCAP=softcap is not None,
        HAS_WINDOW=layout.sliding_window is not None,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
    )
    return out


def attend_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Layout,
    *,
    scale: float,
    softcap: float | None = None,
) -> Tensor:
    """Exact attention of every query over the keys its layout row selects, on the GPU.

    Args:
        q: ``[B, Hq, Lq, D]`` queries, the last ``Lq`` of ``Lk`` positions; float16, bfloat16 or
            float32; ``D <= 256`` (64, 128 and 256 are the tuned sizes).
        k, v: ``[B, Hkv, Lk, D]``, same dtype; query head ``h`` reads KV head ``h // (Hq // Hkv)``.
            Any strides with the last dim contiguous (K/V are read in place, never repeated).
        layout: spans per ``(batch, kv_head, query_block)`` row (:class:`dhsa.layout.Layout`),
            on the tensors' device; its causal/sliding-window rule and ``span_bias`` apply.
        scale: logit scale (``1 / sqrt(D)`` usually).
        softcap: logits become ``softcap * tanh(logit / softcap)`` (before the span bias).

    Returns ``[B, Hq, Lq, D]`` in ``q.dtype``; queries with no visible key give zeros. Softmax
    statistics are float32. A layout with ``Lq == 1`` (decode) runs the split-key decode kernel.
    """
    check_inputs(q, k, v)
    if layout.q_len == 1:
        return attend_triton_decode(q, k, v, layout, scale=scale, softcap=softcap)
    return launch_prefill(q, k, v, layout, scale=scale, softcap=softcap)
