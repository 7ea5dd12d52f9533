"""Chunk-scoring selectors: ``dhsa`` (dynamic chunks, ``sqrt(n) * mean``) and ``block_sparse``
(fixed blocks, plain mean). Both keep sink + local window and fill the budget greedily."""

from __future__ import annotations

from torch import Tensor

from ..chunking import check_boundaries, compute_boundaries, fixed_boundaries
from ..config import DHSAConfig
from ..layout import Layout
from .greedy import greedy_layout
from .regions import block_regions
from .scoring import chunk_representations, query_block_representations


def chunk_select(
    q: Tensor,
    k: Tensor,
    bounds: Tensor,
    config: DHSAConfig,
    *,
    norm: str,
    sliding_window: int | None,
) -> Layout:
    """Score the chunks ``bounds`` of ``k`` against query blocks of ``q`` and fill the budget."""
    q_len, k_len = q.shape[2], k.shape[2]
    regions = block_regions(
        q_len, k_len, config.query_block, config.sink, config.local, sliding_window, k.device
    )
    q_rep = query_block_representations(q, k.shape[1], config.query_block, norm)
    k_rep = chunk_representations(k, bounds, norm)
    return greedy_layout(
        q_rep,
        k_rep,
        bounds,
        regions,
        budget=config.budget,
        q_len=q_len,
        k_len=k_len,
        query_block=config.query_block,
        sliding_window=sliding_window,
        use_triton=None if config.triton_fill else False,
    )


def select_dhsa(
    q: Tensor, k: Tensor, config: DHSAConfig, *, sliding_window=None, boundaries=None, scale=None
) -> Layout:
    """DHSA: chunks from ``config.chunker`` (or the given ``boundaries``), ``sqrt(n) * mean``."""
    if boundaries is None:
        boundaries = compute_boundaries(k, config)
    else:
        check_boundaries(boundaries, k.shape[0], k.shape[2])
    return chunk_select(q, k, boundaries, config, norm="sqrt", sliding_window=sliding_window)


def select_block_sparse(
    q: Tensor, k: Tensor, config: DHSAConfig, *, sliding_window=None, boundaries=None, scale=None
) -> Layout:
    """Block-sparse baseline: fixed ``chunk_size`` blocks scored by their plain mean key."""
    bounds = fixed_boundaries(k.shape[0], k.shape[2], config.chunk_size, k.device)
    return chunk_select(q, k, bounds, config, norm="mean", sliding_window=sliding_window)
