"""The torch decode step: one query per sequence over padded key spans, without a layout.

The tiled prefill backend (:mod:`dhsa.kernels.torch_tiled`) handles query blocks, causal
diagonals and windows; a decode query needs none of that, and building a layout per token (sort,
merge, CSR) costs more than the attention itself on a CPU. Here the spans are expanded straight
into key positions, gathered once from the cache (read in place) and attended.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .torch_tiled import flat_rows


def attend_decode_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    starts: Tensor,
    ends: Tensor,
    *,
    scale: float,
    softcap: float | None = None,
) -> Tensor:
    """Attention of ``q [B, Hq, 1, D]`` over the keys ``[start, end)`` of each ``(batch, kv_head)``.

    ``k, v [B, Hkv, Lk, D]``; ``starts, ends`` integer ``[B, Hkv, S]``, disjoint spans, empty where
    ``end <= start``. Logits and softmax in float32 (products in float32 on CPU, in the input
    dtype on GPU). Returns ``[B, Hq, 1, D]`` in ``q.dtype``; a row with no key gives zeros.
    """
    batch, q_heads, _, dim = q.shape
    kv_heads = k.shape[1]
    rows = batch * kv_heads
    compute = torch.float32 if q.device.type == "cpu" else q.dtype
    starts = starts.reshape(rows, -1).long()
    lengths = (ends.reshape(rows, -1).long() - starts).clamp(min=0)
    through = lengths.cumsum(dim=1)
    counts = through[:, -1]
    width = max(int(counts.max()), 1)
    column = torch.arange(width, device=q.device).expand(rows, -1).contiguous()
    span = torch.searchsorted(through, column, right=True).clamp(max=lengths.shape[1] - 1)
    before = through.gather(1, span) - lengths.gather(1, span)
    present = column < counts[:, None]
    positions = torch.where(present, starts.gather(1, span) + column - before, 0)
    k_rows, k_stride = flat_rows(k)
    v_rows, v_stride = flat_rows(v)
    row = torch.arange(rows, device=q.device)[:, None]
    keys = k_rows.index_select(0, (row * k_stride + positions).view(-1))
    values = v_rows.index_select(0, (row * v_stride + positions).view(-1))
    keys = keys.view(rows, width, dim).to(compute)
    values = values.view(rows, width, v.shape[-1]).to(compute)
    queries = q.reshape(rows, q_heads // kv_heads, dim).to(compute)
    logits = torch.bmm(queries, keys.transpose(1, 2)).float() * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logits.masked_fill_(~present[:, None, :], -torch.inf)
    probs = torch.softmax(logits, dim=-1).nan_to_num_(0.0)
    out = torch.bmm(probs.to(compute), values).to(q.dtype)
    return out.view(batch, q_heads, 1, v.shape[-1])
