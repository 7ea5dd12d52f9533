"""``dash`` (DashAttention): 1.5-entmax over key-block scores keeps a variable number of blocks.

Keys are cut into blocks of ``C = config.dash_block`` tokens, each summarized by its mean key.
Query block ``qb`` (``config.query_block`` queries, the query heads of a KV group averaged, mean
query ``q_qb``) scores every complete key block before its own one, and its own block (the keys from
the start of the key block holding its first query up to its last query, the causal part only):
``z = dash_sparsity * scale * q_qb . k_block``. ``p = entmax15(z)`` is sparse: the blocks with
``p > 0`` are kept, a number that follows the scores instead of a budget; the own block is always
kept. On sliding-window layers only blocks some query of ``qb`` can still see are candidates.

With ``config.dash_prior`` every kept block's keys get ``log p`` added to their logits, so the
attention is the block prior times the in-block softmax. The own block gets at least the smallest
kept probability of its row (its entmax probability may be 0, and ``log 0`` would drop it).
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


def _own_block_keys(k: Tensor, own_start: Tensor, block_end: Tensor, width: int) -> Tensor:
    """Float32 ``[B, Hkv, NQB, D]``: mean key of ``[own_start, block_end)`` per query block."""
    positions = own_start[:, None] + torch.arange(width, device=k.device)
    inside = positions < block_end[:, None]
    flat = positions.clamp(max=k.shape[2] - 1).reshape(-1)
    keys = k[:, :, flat].float().view(*k.shape[:2], *positions.shape, k.shape[-1])
    keys = keys * inside[..., None]
    return keys.sum(dim=3) / inside.sum(dim=1)[:, None].to(torch.float32)


def dash_probabilities(
    q: Tensor, k: Tensor, config: DHSAConfig, *, sliding_window: int | None, scale: float
) -> tuple[Tensor, Tensor]:
    """Entmax block probabilities and the candidates they were taken over.

    Returns float32 ``p [B, Hkv, NQB, NKB + 1]`` and bool ``candidate [NQB, NKB + 1]``: column
    ``j < NKB`` is key block ``j`` (``[j * C, (j + 1) * C)``), the last column the own block.
    """
    batch, kv_heads, k_len, _ = k.shape
    block = config.dash_block
    regions = block_regions(q.shape[2], k_len, config.query_block, 0, 0, sliding_window, k.device)
    own_start = (regions.block_start // block) * block
    bounds = fixed_boundaries(batch, k_len, block, k.device)
    key_ends = bounds[0, 1:]
    before_own = key_ends[None, :] <= own_start[:, None]
    complete = before_own & (key_ends[None, :] > regions.lowest[:, None])
    own = torch.ones_like(complete[:, :1])
    candidate = torch.cat([complete, own], dim=1)
    q_rep = query_block_representations(q, kv_heads, config.query_block, "mean")
    k_rep = chunk_representations(k, bounds, "mean")
    own_rep = _own_block_keys(k, own_start, regions.block_end, block + config.query_block)
    scores = torch.cat(
        [q_rep @ k_rep.transpose(-1, -2), (q_rep * own_rep).sum(-1, keepdim=True)], dim=-1
    )
    if not bool(torch.isfinite(scores).all()):
        raise NonFiniteInputError("q or k contains NaN or Inf: dash block scores are not finite")
    scores = (config.dash_sparsity * scale) * scores
    scores = scores.masked_fill(~candidate, -torch.inf)
    return entmax15(scores), candidate


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

    With ``config.dash_prior`` the layout carries ``span_bias = log p`` per kept block.
    """
    batch, kv_heads, k_len, dim = k.shape
    q_len = q.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    probs, candidate = dash_probabilities(q, k, config, sliding_window=sliding_window, scale=scale)
    block = config.dash_block
    regions = block_regions(q_len, k_len, config.query_block, 0, 0, sliding_window, k.device)
    num_blocks = probs.shape[-1] - 1
    key_starts = torch.arange(num_blocks, device=k.device) * block
    own_start = (regions.block_start // block) * block
    starts = torch.cat([key_starts.expand(len(own_start), -1), own_start[:, None]], dim=1)
    key_ends = torch.clamp(key_starts + block, max=k_len)
    ends = torch.cat([key_ends.expand(len(own_start), -1), regions.block_end[:, None]], dim=1)
    keep = (probs > 0) & candidate
    keep[..., -1] = True
    starts = torch.where(keep, starts, ends)
    bias = None
    if config.dash_prior:
        smallest = torch.where(probs > 0, probs, torch.ones_like(probs)).amin(-1)
        probs[..., -1] = torch.maximum(probs[..., -1], smallest)
        bias = torch.log(probs.clamp(min=torch.finfo(torch.float32).tiny)).reshape(
            -1, num_blocks + 1
        )
    width = num_blocks + 1
    return Layout.from_padded(
        starts.reshape(-1, width),
        ends.expand(batch, kv_heads, -1, -1).reshape(-1, width),
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
