"""``dash`` (DashAttention): 1.5-entmax over key-block scores keeps a variable number of blocks.

Like every selector here, each query block keeps the attention sink and its local window
(``config.sink``, ``config.local``). The candidate keys between them are cut into blocks of
``C = config.dash.block`` tokens, each summarized by its mean key. Query block ``qb``
(``config.query_block`` queries, the query heads of a KV group averaged, mean query ``q_qb``)
scores them, ``z = dash.sparsity * scale * q_qb . k_block``, and ``p = entmax15(z)`` is sparse:
the blocks with ``p > 0`` are the selection, a number that follows the scores. The token budget
caps it: kept blocks are taken in descending ``p`` until ``budget`` keys, the last one cut to its
latest keys. On sliding-window layers only blocks inside the window are candidates.

With ``config.dash.prior`` every kept block's keys get ``log p`` added to their logits, so the
attention is the block prior times the in-block softmax; the sink and window get the row's largest
``log p``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..chunking import fixed_boundaries
from ..config import DHSAConfig
from ..layout import Layout
from ..validation import NonFiniteInputError
from .entmax import entmax15
from .regions import block_regions
from .scoring import chunk_representations, query_block_representations


def dash_probabilities(
    q: Tensor, k: Tensor, config: DHSAConfig, *, sliding_window: int | None, scale: float
) -> tuple[Tensor, Tensor]:
    """Entmax block probabilities and each block's candidate keys per query block.

    Returns float32 ``p [B, Hkv, NQB, NKB]`` (block ``j`` holds keys ``[j * C, (j + 1) * C)``)
    and int64 ``cost [NQB, NKB]``: how many of the block's keys lie in the query block's
    candidate region (blocks with none get ``p = 0``).
    """
    batch, kv_heads, k_len, _ = k.shape
    regions = block_regions(
        q.shape[2], k_len, config.query_block, config.sink, config.local, sliding_window, k.device
    )
    bounds = fixed_boundaries(batch, k_len, config.dash.block, k.device)
    lo = torch.maximum(bounds[0, None, :-1], regions.candidate_start[:, None])
    hi = torch.minimum(bounds[0, None, 1:], regions.candidate_end[:, None])
    cost = (hi - lo).clamp(min=0)
    q_rep = query_block_representations(q, kv_heads, config.query_block, "mean")
    k_rep = chunk_representations(k, bounds, "mean")
    scores = q_rep @ k_rep.transpose(-1, -2)
    if not bool(torch.isfinite(scores).all()):
        raise NonFiniteInputError("q or k contains NaN or Inf: dash block scores are not finite")
    scores = ((config.dash.sparsity * scale) * scores).masked_fill(cost == 0, -torch.inf)
    # A row without candidates (a block near the start) keeps only its sink and window.
    empty = (cost == 0).all(-1)[None, None, :, None]
    probs = entmax15(scores.masked_fill(empty, 0.0)).masked_fill(empty, 0.0)
    return probs, cost


def select_dash(
    q: Tensor,
    k: Tensor,
    config: DHSAConfig,
    *,
    sliding_window: int | None = None,
    boundaries=None,
    scale: float | None = None,
) -> Layout:
    """DashAttention layout for ``q [B, Hq, Lq, D]``, ``k [B, Hkv, Lk, D]`` (module docstring).

    With ``config.dash.prior`` the layout carries ``span_bias = log p`` per kept block.
    """
    batch, kv_heads, k_len, dim = k.shape
    q_len = q.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    probs, cost = dash_probabilities(q, k, config, sliding_window=sliding_window, scale=scale)
    regions = block_regions(
        q_len, k_len, config.query_block, config.sink, config.local, sliding_window, k.device
    )
    num_blocks = probs.shape[-1]
    room = (config.budget - regions.fixed_cost).clamp(min=0)[None, None, :, None]
    # Kept blocks in descending probability until the budget: the last one cut to what fits.
    order = probs.argsort(dim=-1, descending=True, stable=True)
    size = cost.expand(batch, kv_heads, -1, -1).gather(-1, order)
    size = size * (probs.gather(-1, order) > 0)
    take = torch.minimum((room - (size.cumsum(-1) - size)).clamp(min=0), size)
    take = torch.zeros_like(take).scatter(-1, order, take)
    block_end = torch.minimum(
        (torch.arange(num_blocks, device=k.device) + 1) * config.dash.block,
        regions.candidate_end[:, None],
    ).expand(batch, kv_heads, -1, -1)
    fixed_starts, fixed_ends = regions.fixed_spans()
    shape = (batch, kv_heads, len(regions.block_start), 2)
    starts = torch.cat([fixed_starts.expand(shape), block_end - take], dim=-1)
    ends = torch.cat([fixed_ends.expand(shape), block_end], dim=-1)
    bias = None
    if config.dash.prior:
        kept = torch.log(probs.clamp(min=torch.finfo(torch.float32).tiny))
        best = kept.amax(-1, keepdim=True).expand(-1, -1, -1, 2)
        bias = torch.cat([best, kept], dim=-1).reshape(-1, num_blocks + 2)
    width = num_blocks + 2
    return Layout.from_padded(
        starts.reshape(-1, width),
        ends.reshape(-1, width),
        batch=batch,
        kv_heads=kv_heads,
        q_len=q_len,
        k_len=k_len,
        query_block=config.query_block,
        sliding_window=sliding_window,
        bias=bias,
    )


def row_density_quantiles(layout: Layout, quantiles=(0.0, 0.1, 0.5, 0.9, 1.0)) -> dict:
    """Quantiles of the fraction of causal keys each query keeps (dash's density is not fixed)."""
    kept = layout.num_selected().float()
    fraction = (kept / layout.causal_counts().float()).flatten()
    values = torch.quantile(
        fraction, torch.tensor(quantiles, dtype=fraction.dtype, device=fraction.device)
    )
    return {f"q{round(100 * p)}": v for p, v in zip(quantiles, values.tolist(), strict=True)}


__all__ = ["dash_probabilities", "row_density_quantiles", "select_dash"]
