"""The Triton decode kernel: one query per sequence, keys split over programs, log-sum-exp merge.

A decode layout has one row per ``(batch, kv_head)`` holding a single query. One row's key stream
(see :mod:`dhsa.kernels.triton_common`) is a few thousand keys at most, far too little work for one
program to keep a GPU busy, so each row's stream is cut into ``splits`` equal pieces: each program
attends its piece for all ``G`` query heads of the group and writes unnormalized partial results
(running max, sum and weighted values); a second kernel merges the pieces of each head. The split
count comes from the row count alone, so no device-to-host synchronization is needed.

The span kernel also reads a paged cache (pools ``[num_pages, page_size, Hkv, D]`` and a page
table ``[B, max_pages]``, as in :mod:`dhsa.kernels.torch_decode`): each tile of keys looks up its
pages, so a span may cross page boundaries.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..layout import Layout
from .torch_decode import check_paged
from .triton_common import (
    attend_span,
    attend_stream,
    check_inputs,
    dot_precision,
    key_stream,
    logit_constants,
    logits,
    online_softmax_step,
)


@triton.jit
def _group_queries(
    Q,
    b,
    h,
    stride_qb,
    stride_qh,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The ``GROUP`` query heads of KV head ``h`` in batch ``b``, as ``[BLOCK_M, BLOCK_D]``."""
    offs_g = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    head = (h * GROUP + offs_g).to(tl.int64)
    return tl.load(
        Q + b * stride_qb + head[:, None] * stride_qh + offs_d[None, :],
        mask=(offs_g < GROUP)[:, None] & (offs_d < HEAD_DIM)[None, :],
        other=0.0,
    )


@triton.jit
def _store_partials(
    part_acc,
    part_max,
    part_sum,
    acc,
    m_i,
    l_i,
    piece,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Write one piece's unnormalized ``acc``, running max and sum for the group's heads."""
    offs_g = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    g_ok = offs_g < GROUP
    slot = piece * GROUP + offs_g
    tl.store(part_max + slot, m_i, mask=g_ok)
    tl.store(part_sum + slot, l_i, mask=g_ok)
    tl.store(
        part_acc + slot[:, None] * HEAD_DIM + offs_d[None, :],
        acc,
        mask=g_ok[:, None] & (offs_d < HEAD_DIM)[None, :],
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
    q = _group_queries(Q, b, h, stride_qb, stride_qh, GROUP, BLOCK_M, HEAD_DIM, BLOCK_D)

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
            t_begin,
            t_end,
            positions,
            q_pos,
            q_pos,
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
    _store_partials(
        part_acc,
        part_max,
        part_sum,
        acc,
        m_i,
        l_i,
        row * SPLITS + split,
        GROUP,
        BLOCK_M,
        HEAD_DIM,
        BLOCK_D,
    )


@triton.jit
def _attend_paged_span(
    acc,
    m_i,
    l_i,
    q,
    k_base,
    v_base,
    pages,
    page_size,
    stride_kp,
    stride_ks,
    stride_vp,
    stride_vs,
    lo,
    hi,
    qk_scale,
    cap_in,
    cap_out,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """:func:`attend_span` over a paged cache: key ``t`` lies in slot ``t % page_size`` of page
    ``pages[t // page_size]`` (``pages`` points at the sequence's page-table row)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    for t0 in range(lo, hi, BLOCK_N):
        pos = t0 + offs_n
        valid = pos < hi
        page = tl.load(pages + pos // page_size, mask=valid, other=0).to(tl.int64)
        slot = (pos % page_size).to(tl.int64)
        kv_mask = valid[:, None] & d_ok[None, :]
        k_rows = page * stride_kp + slot * stride_ks
        k = tl.load(k_base + k_rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        s = logits(q, k, qk_scale, cap_in, cap_out, HAS_SOFTCAP, DOT_PRECISION)
        s = tl.where(valid[None, :], s, float("-inf"))
        v_rows = page * stride_vp + slot * stride_vs
        v = tl.load(v_base + v_rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v, DOT_PRECISION)
    return acc, m_i, l_i


@triton.jit
def _decode_spans_kernel(
    Q,
    K,
    V,
    part_acc,
    part_max,
    part_sum,
    span_starts,
    span_ends,
    num_spans,
    page_table,
    stride_pt,
    page_size,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    kv_heads,
    qk_scale,
    cap_in,
    cap_out,
    SPLITS: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PAGED: tl.constexpr,
):
    """Contiguous: ``stride_kb, stride_kh, stride_kl`` step batch, head and position. ``PAGED``:
    they step the pool's page, head and slot, and ``page_table`` row ``b`` maps positions."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    h = row % kv_heads
    b = (row // kv_heads).to(tl.int64)
    q = _group_queries(Q, b, h, stride_qb, stride_qh, GROUP, BLOCK_M, HEAD_DIM, BLOCK_D)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    k_base = K + h * stride_kh
    v_base = V + h * stride_vh
    if not PAGED:
        k_base += b * stride_kb
        v_base += b * stride_vb
    # Spans come best-scored first, so dealing them out in turn spreads the long ones.
    for i in range(split, num_spans, SPLITS):
        lo = tl.load(span_starts + row * num_spans + i)
        hi = tl.load(span_ends + row * num_spans + i)
        if PAGED:
            acc, m_i, l_i = _attend_paged_span(
                acc,
                m_i,
                l_i,
                q,
                k_base,
                v_base,
                page_table + b * stride_pt,
                page_size,
                stride_kb,
                stride_kl,
                stride_vb,
                stride_vl,
                lo,
                hi,
                qk_scale,
                cap_in,
                cap_out,
                BLOCK_N,
                HEAD_DIM,
                BLOCK_D,
                HAS_SOFTCAP,
                DOT_PRECISION,
            )
        else:
            acc, m_i, l_i = attend_span(
                acc,
                m_i,
                l_i,
                q,
                k_base,
                v_base,
                stride_kl,
                stride_vl,
                lo,
                hi,
                qk_scale,
                cap_in,
                cap_out,
                BLOCK_N,
                HEAD_DIM,
                BLOCK_D,
                HAS_SOFTCAP,
                DOT_PRECISION,
            )
    _store_partials(
        part_acc,
        part_max,
        part_sum,
        acc,
        m_i,
        l_i,
        row * SPLITS + split,
        GROUP,
        BLOCK_M,
        HEAD_DIM,
        BLOCK_D,
    )


@triton.jit
def _decode_merge_kernel(
    Out,
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
    o_ptrs = Out + b * stride_ob + (h * GROUP + g).to(tl.int64) * stride_oh + offs_d
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=offs_d < HEAD_DIM)


def split_count(rows: int, pieces: int, device: torch.device) -> int:
    """Programs per row: about two per multiprocessor over all rows, at most ``pieces`` (tiles of
    the longest possible key stream, or spans) each."""
    if device.type == "cuda":
        processors = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        processors = 2
    wanted = -(-2 * processors // max(rows, 1))
    return max(1, min(wanted, pieces, 64))


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
    block_n = _key_tile(dim)
    rows = layout.num_rows
    splits = splits or split_count(rows, -(-layout.k_len // block_n), q.device)
    row_stream, key_pos, key_bias = key_stream(layout)
    parts = _partials(rows, splits, group, dim, q.device)
    out = torch.empty_like(q) if out is None else out
    qk_scale, cap_in, cap_out = logit_constants(scale, softcap)
    block_d = max(16, triton.next_power_of_2(dim))
    _decode_split_kernel[(rows, splits)](
        q,
        k,
        v,
        *parts,
        row_stream,
        key_pos,
        key_pos if key_bias is None else key_bias,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        layout.kv_heads,
        layout.k_len - 1,
        layout.sliding_window or 0,
        qk_scale,
        cap_in,
        cap_out,
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
    _merge(out, parts, splits, group, layout.kv_heads)
    return out


def _key_tile(dim: int) -> int:
    """Keys per tile of the decode kernels: fewer for wide heads, to stay within registers."""
    return 32 if dim > 128 else 64


def _partials(rows: int, splits: int, group: int, dim: int, device) -> tuple[Tensor, ...]:
    """Buffers ``(acc, max, sum)`` for the per-piece results of ``rows x splits`` programs."""
    acc = torch.empty(rows * splits * group, dim, dtype=torch.float32, device=device)
    maxima = torch.empty(rows * splits * group, dtype=torch.float32, device=device)
    return acc, maxima, torch.empty_like(maxima)


def _merge(out: Tensor, parts: tuple[Tensor, ...], splits: int, group: int, kv_heads: int):
    dim = out.shape[-1]
    _decode_merge_kernel[(out.shape[0] * kv_heads, group)](
        out,
        *parts,
        out.stride(0),
        out.stride(1),
        kv_heads,
        SPLITS=splits,
        BLOCK_S=triton.next_power_of_2(splits),
        GROUP=group,
        HEAD_DIM=dim,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),
        num_warps=4,
    )


def attend_triton_decode_spans(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    starts: Tensor,
    ends: Tensor,
    *,
    scale: float,
    softcap: float | None = None,
    splits: int | None = None,
    out: Tensor | None = None,
    page_table: Tensor | None = None,
) -> Tensor:
    """Attention of one query per sequence over padded key spans, read straight from the cache.

    Args:
        q: ``[B, Hq, 1, D]``, the query at key position ``Lk - 1``; float16, bfloat16 or float32.
        k, v: ``[B, Hkv, Lk, D]`` (a KV cache, read in place); ``Hq = G * Hkv``. With
            ``page_table``: pools ``[num_pages, page_size, Hkv, D]``.
        starts, ends: integer ``[B, Hkv, S]``: disjoint spans ``[start, end)`` of keys before the
            query (the fields of :class:`~dhsa.layout.DecodeSpans`, as
            :meth:`dhsa.decode.DecodeSession.select_spans` gives them); a span with
            ``end <= start`` is empty. Nothing is masked: every span key is attended.
        scale, softcap: as in :func:`dhsa.kernels.triton_prefill.attend_triton`.
        splits: programs per ``(batch, kv_head)`` row, spans dealt out in turn; default from the
            GPU's size and the row count.
        out: ``[B, Hq, 1, D]`` buffer to write into; allocated like ``q`` when None.
        page_table: int32 ``[B, max_pages]``: the pool page of each sequence's positions
            ``[i * page_size, (i + 1) * page_size)`` (see :mod:`dhsa.kernels.torch_decode`); the
            spans must lie within the table's pages. None for a contiguous cache.

    Returns ``[B, Hq, 1, D]`` in ``q.dtype``; heads with no key give zeros. No device-to-host
    synchronization: the launch depends on shapes only.
    """
    check_inputs(q, k, v)
    batch, q_heads, q_len, dim = q.shape
    if page_table is None:
        kv_heads = k.shape[1]
        k_strides = (k.stride(0), k.stride(1), k.stride(2))
        v_strides = (v.stride(0), v.stride(1), v.stride(2))
        table, page_size = starts, 1  # unread
    else:
        check_paged(q, k, v, page_table)
        kv_heads, page_size = k.shape[2], k.shape[1]
        k_strides = (k.stride(0), k.stride(2), k.stride(1))
        v_strides = (v.stride(0), v.stride(2), v.stride(1))
        table = page_table.to(torch.int32)
    spans_ok = starts.shape == ends.shape == (batch, kv_heads, starts.shape[-1])
    if q_len != 1 or not spans_ok:
        raise ValueError(
            f"decode spans need q [B, Hq, 1, D] and starts/ends [B, Hkv, S] alike; got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)}, starts {tuple(starts.shape)}, ends "
            f"{tuple(ends.shape)}"
        )
    group = q_heads // kv_heads
    rows, num_spans = batch * kv_heads, starts.shape[-1]
    splits = splits or split_count(rows, num_spans, q.device)
    parts = _partials(rows, splits, group, dim, q.device)
    out = torch.empty_like(q) if out is None else out
    qk_scale, cap_in, cap_out = logit_constants(scale, softcap)
    _decode_spans_kernel[(rows, splits)](
        q,
        k,
        v,
        *parts,
        starts.to(torch.int32).contiguous(),
        ends.to(torch.int32).contiguous(),
        num_spans,
        table,
        table.stride(0),
        page_size,
        q.stride(0),
        q.stride(1),
        *k_strides,
        *v_strides,
        kv_heads,
        qk_scale,
        cap_in,
        cap_out,
        SPLITS=splits,
        GROUP=group,
        BLOCK_M=max(16, triton.next_power_of_2(group)),
        BLOCK_N=_key_tile(dim),
        HEAD_DIM=dim,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),
        HAS_SOFTCAP=softcap is not None,
        DOT_PRECISION=dot_precision(q.dtype),
        PAGED=page_table is not None,
        num_warps=4,
        num_stages=2,
    )
    _merge(out, parts, splits, group, kv_heads)
    return out
