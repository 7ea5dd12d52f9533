"""The plain reference backend: float32 dense masked softmax built from a layout.

Quadratic in time and memory: for tests and small inputs only. Every fast backend is checked
against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layout import Layout


def attend_reference(
    q: Tensor, k: Tensor, v: Tensor, layout: Layout, *, scale: float, softcap: float | None = None
) -> Tensor:
    """Attention of ``q [B, Hq, Lq, D]`` over ``k, v [B, Hkv, Lk, D]`` restricted to ``layout``.

    Query head ``h`` reads KV head ``h // (Hq // Hkv)``. Logits are ``scale * q . k``, soft-capped
    as ``softcap * tanh(logit / softcap)`` when given, plus the layout's span bias. A query with no
    allowed key outputs zeros. Computed in float32, returned in ``q.dtype``.
    """
    group = q.shape[1] // k.shape[1]
    mask = layout.to_dense_mask().repeat_interleave(group, dim=1)
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    logits = (q.float() @ kf.transpose(-1, -2)) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if layout.span_bias is not None:
        nqb, bq = layout.num_q_blocks, layout.query_block
        bias = layout.key_bias().view(layout.batch, layout.kv_heads, nqb, 1, layout.k_len)
        bias = bias.expand(-1, -1, -1, bq, -1).reshape(layout.batch, layout.kv_heads, nqb * bq, -1)
        logits = logits + bias[:, :, : layout.q_len].repeat_interleave(group, dim=1)
    logits = logits.masked_fill(~mask, -torch.inf)
    any_key = mask.any(dim=-1, keepdim=True)
    probs = torch.softmax(logits.masked_fill(~any_key, 0.0), dim=-1) * any_key
    return (probs @ vf).to(q.dtype)
