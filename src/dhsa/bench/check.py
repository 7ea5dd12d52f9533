"""Correctness gate of the benchmark: sampled queries recomputed exactly in float64.

A full reference is quadratic, so at long lengths the gate recomputes ``samples`` random queries
(every head) from scratch over the keys the layout allows them, and compares.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..layout import Layout


def _allowed_keys(layout: Layout | None, b: int, h: int, i: int, k_len: int, q_len: int):
    """Bool ``[k_len]`` of the keys query ``i`` may attend, and float64 ``[k_len]`` logit bias."""
    position = k_len - q_len + i
    keys = torch.arange(k_len)
    bias = torch.zeros(k_len, dtype=torch.float64)
    if layout is None:
        return keys <= position, bias
    qb = i // layout.query_block
    row = (b * layout.kv_heads + h) * layout.num_q_blocks + qb
    first = int(layout.offsets[row])
    member = torch.zeros(k_len, dtype=torch.bool)
    for n, (start, end) in enumerate(layout.spans(b, h, qb)):
        member[start:end] = True
        if layout.span_bias is not None:
            bias[start:end] = float(layout.span_bias[first + n])
    return member & layout.token_rule(torch.tensor(position), keys), bias


def spot_check(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    layout: Layout | None,
    *,
    samples: int = 16,
    seed: int = 0,
) -> float:
    """Max relative error of ``out`` at ``samples`` random queries vs float64 recomputation.

    ``layout=None`` checks dense causal attention. Relative to the largest reference value.
    """
    batch, q_heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    scale = 1.0 / math.sqrt(dim)
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randint(0, q_len, (samples,), generator=generator).tolist()
    queries[0] = q_len - 1
    worst = 0.0
    for n, i in enumerate(queries):
        b = n % batch
        for h in range(kv_heads):
            allowed, bias = _allowed_keys(layout, b, h, i, k_len, q_len)
            on_device = allowed.to(k.device)
            keys = k[b, h][on_device].double().cpu()
            values = v[b, h][on_device].double().cpu()
            for g in range(group):
                head = h * group + g
                logits = keys @ q[b, head, i].double().cpu() * scale + bias[allowed]
                ref = torch.softmax(logits, dim=0) @ values
                got = out[b, head, i].double().cpu()
                err = (got - ref).abs().max().item() / max(ref.abs().max().item(), 1e-6)
                worst = max(worst, err)
    return worst


def tolerance(dtype: torch.dtype) -> float:
    """Relative error allowed for an output computed in ``dtype``."""
    return {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 3e-2)
