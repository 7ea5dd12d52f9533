"""The Triton decode kernel: one query per sequence, keys split over programs, log-sum-exp merge.

A decode layout has one row per ``(batch, kv_head)`` holding a single query. One row's key stream
(see :mod:`dhsa.kernels.triton_common`) is a few thousand keys at most, far too little work for one
program to keep a GPU busy, so each row's stream is cut into ``splits`` equal pieces: each program
attends its piece for all ``G`` query heads of the group and writes unnormalized partial results
(running max, sum and weighted values); a second kernel merges the pieces of each head. The split
count comes from the row count alone, so no device-to-host synchronization is needed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..layout import Layout
from .triton_common import (
    attend_stream,
    check_inputs,
    dot_precision,
    key_stream,
    logit_constants,
)


@triton.jit
def _decode_split_kernel(
    Q,
    K,
    V,
    part_acc,
    part_max,
    part_sum,
    row_stream,
    key_pos,
    key_bias,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    kv_heads,
    q_pos,
    window,
    qk_scale,
    cap_in,
    cap_out,
    SPLITS: tl.constexpr,
    GROUP: tl.constexpr,
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
    split = tl.program_id(1)
    h = row % kv_heads
    b = (row // kv_heads).to(tl.int64)
    offs_g = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    g_ok = offs_g < GROUP
    d_ok = offs_d < HEAD_DIM
    head = (h * GROUP + offs_g).to(tl.int64)
    q = tl.load(
        Q + b * stride_qb + head[:, None] * stride_qh + offs_d[None, :],
        mask=g_ok[:, None] & d_ok[None, :],
        other=0.0,
    )

    t_lo = tl.load(row_stream + row)
    t_hi = tl.load(row_stream + row + 1)
    # Whole tiles per split, so only the stream's last tile is ragged.
    per_split = tl.cdiv(tl.cdiv(t_hi - t_lo, SPLITS), BLOCK_N) * BLOCK_N
    t_begin = tl.minimum(t_lo + split * per_split, t_hi)
    t_end = tl.minimum(t_begin + per_split, t_hi)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if t_begin < t_end:
        positions = tl.full([BLOCK_M], 0, dtype=tl.int64) + q_pos
        acc, m_i, l_i = attend_stream(
            acc, m_i, l_i, q,
            K + b * stride_kb + h * stride_kh, V + b * stride_vb + h * stride_vh,
            stride_kl, stride_vl, key_pos, key_bias, t_begin, t_end,
            positions, q_pos, q_pos, window, qk_scale, cap_in, cap_out,
            BLOCK_N, HEAD_DIM, BLOCK_D, HAS_BIAS, HAS_SOFTCAP, HAS_WINDOW, DOT_PRECISION,
        )
    slot = (row * SPLITS + split) * GROUP + offs_g
    tl.store(part_max + slot, m_i, mask=g_ok)
    tl.store(part_sum + slot, l_i, mask=g_ok)
    tl.store(
        part_acc + slot[:, None] * HEAD_DIM + offs_d[None, :], acc,
        mask=g_ok[:, None] & d_ok[None, :],
    )


@triton.jit
def _decode_merge_kernel(
    O,
    part_acc,
    part_max,
    part_sum,
    stride_ob,
    stride_oh,
    kv_heads,
    SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)
    g = tl.program_id(1)
    h = row % kv_heads
    b = (row // kv_heads).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < SPLITS
    slot = (row * SPLITS + offs_s) * GROUP + g
    maxima = tl.load(part_max + slot, mask=s_ok, other=float("-inf"))
    sums = tl.load(part_sum + slot, mask=s_ok, other=0.0)
    top = tl.max(maxima, axis=0)
    weight = tl.exp2(maxima - tl.where(top == float("-inf"), 0.0, top))
    total = tl.sum(sums * weight, axis=0)
    acc = tl.load(
        part_acc + slot[:, None] * HEAD_DIM + offs_d[None, :],
        mask=s_ok[:, None] & (offs_d[None, :] < HEAD_DIM),
        other=0.0,
    )
    # A head that saw no key anywhere has total == 0 and acc == 0: it outputs zeros.
    out = tl.sum(acc * weight[:, None], axis=0) / tl.where(total == 0.0, 1.0, total)
    o_ptrs = O + b * stride_ob + (h * GROUP + g).to(tl.int64) * stride_oh + offs_d
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_d < HEAD_DIM)


def split_count(rows: int, k_len: int, block_n: int, device: torch.device) -> int:
    """Pieces per row: about two programs per multiprocessor over all rows, at most one tile of
    the longest possible stream each."""
    if device.type == "cuda":
        processors = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        processors = 2
    wanted = -(-2 * processors // max(rows, 1))
    return max(1, min(wanted, -(-k_len // block_n), 64))


def attend_triton_decode(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Layout,
    *,
    scale: float,
    softcap: float | None = None,
    splits: int | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Attention of one query per sequence over its layout row's keys, split over programs.

    Args:
        q: ``[B, Hq, 1, D]``, the query at key position ``Lk - 1``; float16, bfloat16 or float32.
        k, v: ``[B, Hkv, Lk, D]`` (a KV cache, read in place); ``Hq = G * Hkv``.
        layout: a layout with ``q_len == 1`` (one row per ``(batch, kv_head)``).
        scale, softcap: as in :func:`dhsa.kernels.triton_prefill.attend_triton`.
        splits: pieces per row's key stream; default from the GPU's size and the row count.
        out: ``[B, Hq, 1, D]`` buffer to write into; allocated like ``q`` when None.

    Returns ``[B, Hq, 1, D]`` in ``q.dtype``; heads with no visible key give zeros.
    """
    check_inputs(q, k, v)
    if layout.q_len != 1:
        raise ValueError(f"the decode kernel takes a single-query layout, got q_len={layout.q_len}")
    batch, q_heads, _, dim = q.shape
    group = q_heads // k.shape[1]
    block_n = 32 if dim > 128 else 64
    rows = layout.num_rows
    splits = splits or split_count(rows, layout.k_len, block_n, q.device)
    row_stream, key_pos, key_bias = key_stream(layout)
    part_acc = torch.empty(rows * splits * group, dim, dtype=torch.float32, device=q.device)
    part_max = torch.empty(rows * splits * group, dtype=torch.float32, device=q.device)
    part_sum = torch.empty_like(part_max)
    out = torch.empty_like(q) if out is None else out
    qk_scale, cap_in, cap_out = logit_constants(scale, softcap)
    block_d = max(16, triton.next_power_of_2(dim))
    _decode_split_kernel[(rows, splits)](
        q, k, v, part_acc, part_max, part_sum, row_stream, key_pos,
        key_pos if key_bias is None else key_bias,
        q.stride(0), q.stride(1),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        layout.kv_heads, layout.k_len - 1, layout.sliding_window or 0,
        qk_scale, cap_in, cap_out,
        SPLITS=splits,
        GROUP=group,
        BLOCK_M=max(16, triton.next_power_of_2(group)),
        BLOCK_N=block_n,
        HEAD_DIM=dim,
        BLOCK_D=block_d,
        HAS_BIAS=layout.span_bias is not None,
        HAS_SOFTCAP=softcap is not None,
        HAS_WINDOW=layout.sliding_window is not None,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=4,
        num_stages=2,
    )
    _decode_merge_kernel[(rows, group)](
        out, part_acc, part_max, part_sum, out.stride(0), out.stride(1), layout.kv_heads,
        SPLITS=splits,
        BLOCK_S=triton.next_power_of_2(splits),
        GROUP=group,
        HEAD_DIM=dim,
        BLOCK_D=block_d,
        num_warps=4,
    )
    return out
