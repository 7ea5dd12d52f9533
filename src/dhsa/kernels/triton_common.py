"""Triton building blocks shared by the prefill and decode kernels.

Both kernels read keys straight from a layout row's spans. The keys a row selects, span after
span, form a *key stream*: virtual index ``t`` runs over ``[prefix[first_span], prefix[last_span +
1])`` where ``prefix`` (int64 ``[nnz + 1]``) is the running total of span lengths over the whole
layout. Tiles of ``BLOCK_N`` consecutive stream entries are dense for the matrix units however short
the spans are (chunks of 8 to 128 keys would waste most of a tile if each span were tiled on its
own); each entry's key position is found from the spans covering the tile, and K/V rows are
gathered by position (no copy of K/V is ever made).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def tanh(x):
    """``tanh`` through ``exp`` (finite for every finite input; the interpreter has no libdevice)."""
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def find_span(prefix, lo, hi, t):
    """The span ``s`` in ``[lo, hi)`` whose stream range holds ``t``: last ``prefix[s] <= t``."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tl.load(prefix + mid) <= t:
            lo = mid
        else:
            hi = mid
    return lo


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
    prefix,
    starts,
    bias,
    span,
    span_end,
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
    ``[q_first, q_last]``); ``span`` is the span holding ``t_begin`` and ``span_end`` the row's
    last span + 1. Logits are kept in base 2 (``qk_scale = scale * log2 e``); with a softcap they
    are ``cap_out * tanh(cap_in * q.k)``. ``m_i`` may stay ``-inf`` for queries that see no key.
    """
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    for t0 in range(t_begin, t_end, BLOCK_N):
        t = t0 + offs_n
        valid = t < t_end
        # At most BLOCK_N spans can cover BLOCK_N entries: count, for each entry, the candidate
        # spans that end at or before it.
        candidate = span + offs_n
        candidate_ok = candidate < span_end
        stop = tl.load(prefix + candidate + 1, mask=candidate_ok, other=0)
        ended = (stop[None, :] <= t[:, None]) & candidate_ok[None, :]
        span_of_key = span + tl.sum(ended.to(tl.int32), axis=1)
        first = tl.load(prefix + span_of_key, mask=valid, other=0)
        pos = tl.load(starts + span_of_key, mask=valid, other=0) + (t - first).to(tl.int32)
        kv_mask = valid[:, None] & d_ok[None, :]
        k = tl.load(k_base + pos[:, None] * stride_kl + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if HAS_SOFTCAP:
            s = cap_out * tanh(qk * cap_in)
        else:
            s = qk * qk_scale
        if HAS_BIAS:
            s += tl.load(bias + span_of_key, mask=valid, other=0.0)[None, :] * 1.4426950408889634
        # Keys of a stream are sorted, so only tiles reaching the queries' own block (causal),
        # the stream's end, or, with a window, the window's far edge need a per-token mask.
        last_pos = tl.max(tl.where(valid, pos, -1), axis=0)
        need_mask = (t0 + BLOCK_N > t_end) | (last_pos > q_first)
        if HAS_WINDOW:
            first_pos = tl.min(tl.where(valid, pos, 2147483647), axis=0)
            need_mask = need_mask | (q_last - first_pos >= window)
        if need_mask:
            keep = valid[None, :] & (pos[None, :] <= q_pos[:, None])
            if HAS_WINDOW:
                keep = keep & (q_pos[:, None] - pos[None, :] < window)
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + pos[:, None] * stride_vl + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
        span += tl.sum(((stop <= t0 + BLOCK_N) & candidate_ok).to(tl.int32), axis=0)
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


def stream_prefix(layout) -> torch.Tensor:
    """Int64 ``[nnz + 1]``: where each span's keys start in the key stream (see module doc)."""
    lengths = (layout.ends - layout.starts).to(torch.int64)
    prefix = torch.zeros(layout.nnz + 1, dtype=torch.int64, device=layout.device)
    torch.cumsum(lengths, 0, out=prefix[1:])
    return prefix


def dot_precision(dtype: torch.dtype) -> str:
    """Full float32 products for float32 inputs (tf32 would exceed float32 tolerances)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def logit_constants(scale: float, softcap: float | None) -> tuple[float, float, float]:
    """``(qk_scale, cap_in, cap_out)`` for base-2 logits (see :func:`attend_stream`)."""
    if softcap is None:
        return scale * LOG2E, 0.0, 0.0
    return scale * LOG2E, scale / softcap, softcap * LOG2E
