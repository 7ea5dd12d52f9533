"""Triton building blocks shared by the prefill and decode kernels.

Both kernels read keys straight from a layout row's spans. The keys a row selects, span after
span, form a *key stream*: entry ``t`` of row ``r`` runs over ``[row_stream[r], row_stream[r + 1])``
and ``key_pos[t]`` is its key position (:func:`key_stream`, one int32 per selected key: memory
``O(L / query_block * budget)``, no copy of K/V). Tiles of ``BLOCK_N`` consecutive stream entries
are dense for the matrix units however short the spans are (chunks of 8 to 128 keys would waste
most of a tile if each span were tiled on its own), and each tile's positions come from one
contiguous load, so K/V rows are gathered with no search over the spans.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def tanh(x):
    """``tanh`` through ``exp``: finite for finite inputs (the interpreter has no libdevice)."""
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def logits(q, k, qk_scale, cap_in, cap_out, HAS_SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Base-2 logits of ``q [M, D]`` against ``k [N, D]`` (see :func:`attend_stream`)."""
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if HAS_SOFTCAP:
        return cap_out * tanh(qk * cap_in)
    return qk * qk_scale


@triton.jit
def online_softmax_step(acc, m_i, l_i, s, v, DOT_PRECISION: tl.constexpr):
    """Fold the base-2 logits ``s [M, N]`` (``-inf`` where masked) and values ``v [N, D]`` into
    the running ``acc, m_i, l_i``; rows that have seen no key keep ``m_i = -inf``."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def attend_span(
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
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Online-softmax accumulation of the contiguous keys ``[lo, hi)``, all visible to every
    query of ``q [BLOCK_M, BLOCK_D]`` (a decode query sees every key before it)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    for t0 in range(lo, hi, BLOCK_N):
        pos = (t0 + offs_n).to(tl.int64)
        valid = pos < hi
        kv_mask = valid[:, None] & d_ok[None, :]
        k = tl.load(k_base + pos[:, None] * stride_kl + offs_d[None, :], mask=kv_mask, other=0.0)
        s = logits(q, k, qk_scale, cap_in, cap_out, HAS_SOFTCAP, DOT_PRECISION)
        s = tl.where(valid[None, :], s, float("-inf"))
        v = tl.load(v_base + pos[:, None] * stride_vl + offs_d[None, :], mask=kv_mask, other=0.0)
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v, DOT_PRECISION)
    return acc, m_i, l_i


@triton.jit
def attend_stream(
    acc,
    m_i,
    l_i,
    q,
    k_base,
    v_base,
    stride_kl,
    stride_vl,
    key_pos,
    key_bias,
    t_begin,
    t_end,
    q_pos,
    q_first,
    q_last,
    window,
    qk_scale,
    cap_in,
    cap_out,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Online-softmax accumulation of stream entries ``[t_begin, t_end)`` into ``acc, m_i, l_i``.

    ``q [BLOCK_M, BLOCK_D]`` holds queries at absolute positions ``q_pos [BLOCK_M]`` (all within
    ``[q_first, q_last]``); ``key_pos`` / ``key_bias`` are the stream's key positions and, with
    ``HAS_BIAS``, their float32 logit biases. Logits are kept in base 2 (``qk_scale = scale *
    log2 e``); with a softcap they are ``cap_out * tanh(cap_in * q.k)``. ``m_i`` may stay ``-inf``
    for queries that see no key.
    """
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    for t0 in range(t_begin, t_end, BLOCK_N):
        t = t0 + offs_n
        valid = t < t_end
        pos = tl.load(key_pos + t, mask=valid, other=0)
        kv_mask = valid[:, None] & d_ok[None, :]
        k = tl.load(k_base + pos[:, None] * stride_kl + offs_d[None, :], mask=kv_mask, other=0.0)
        s = logits(q, k, qk_scale, cap_in, cap_out, HAS_SOFTCAP, DOT_PRECISION)
        if HAS_BIAS:
            s += tl.load(key_bias + t, mask=valid, other=0.0)[None, :] * 1.4426950408889634
        # Keys of a stream are sorted, so only tiles reaching the queries' own block (causal),
        # the stream's end, or, with a window, the window's far edge need a per-token mask.
        last_pos = tl.load(key_pos + tl.minimum(t0 + BLOCK_N, t_end) - 1)
        need_mask = (t0 + BLOCK_N > t_end) | (last_pos > q_first)
        if HAS_WINDOW:
            need_mask = need_mask | (q_last - tl.load(key_pos + t0) >= window)
        if need_mask:
            keep = valid[None, :] & (pos[None, :] <= q_pos[:, None])
            if HAS_WINDOW:
                keep = keep & (q_pos[:, None] - pos[None, :] < window)
            s = tl.where(keep, s, float("-inf"))
        v = tl.load(v_base + pos[:, None] * stride_vl + offs_d[None, :], mask=kv_mask, other=0.0)
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v, DOT_PRECISION)
    return acc, m_i, l_i


SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """TypeError / ValueError unless the Triton kernels can take these tensors."""
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"backend 'triton' takes {SUPPORTED_DTYPES}, got {q.dtype}")
    if q.shape[-1] > 256 or v.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"backend 'triton' needs head dims <= 256 with v's equal to q's, got "
            f"q {q.shape[-1]}, v {v.shape[-1]}"
        )
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.stride(-1) != 1:
            raise ValueError(f"backend 'triton' needs {name} contiguous in its last dim")


def key_stream(layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(row_stream, key_pos, key_bias)`` of a layout (see the module docstring).

    ``row_stream`` int64 ``[rows + 1]``: where each row's entries start; ``key_pos`` int32
    ``[total]``: the key position of every entry, rows one after another, each row's spans in
    order; ``key_bias`` float32 ``[total]``: each entry's span bias, or None without one.
    """
    lengths = (layout.ends - layout.starts).to(torch.int64)
    prefix = torch.zeros(layout.nnz + 1, dtype=torch.int64, device=layout.device)
    torch.cumsum(lengths, 0, out=prefix[1:])
    total = int(prefix[-1])
    if total >= 2**31:
        raise ValueError(
            f"the layout selects {total} keys in all, over the Triton backend's int32 key stream: "
            "attend fewer sequences or heads per call"
        )
    span_of_entry = torch.repeat_interleave(
        torch.arange(layout.nnz, device=layout.device, dtype=torch.int32),
        lengths,
        output_size=total,
    )
    shift = (layout.starts.to(torch.int64) - prefix[:-1]).to(torch.int32)
    key_pos = torch.arange(total, device=layout.device, dtype=torch.int32)
    key_pos += shift[span_of_entry]
    key_bias = None if layout.span_bias is None else layout.span_bias[span_of_entry]
    return prefix[layout.offsets], key_pos, key_bias


def dot_precision(dtype: torch.dtype) -> str:
    """Full float32 products for float32 inputs (tf32 would exceed float32 tolerances)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def logit_constants(scale: float, softcap: float | None) -> tuple[float, float, float]:
    """``(qk_scale, cap_in, cap_out)`` for base-2 logits (see :func:`attend_stream`)."""
    if softcap is None:
        return scale * LOG2E, 0.0, 0.0
    return scale * LOG2E, scale / softcap, softcap * LOG2E
