"""Selectors without scores: ``dense`` (everything causal) and ``streaming`` (StreamingLLM)."""

from __future__ import annotations

from torch import Tensor

from ..config import DHSAConfig
from ..layout import Layout, query_block_bounds
from .regions import block_regions


def _layout_from_block_spans(q: Tensor, k: Tensor, starts: Tensor, ends: Tensor, config, window):
    batch, kv_heads, k_len = k.shape[0], k.shape[1], k.shape[2]
    q_len = q.shape[2]
    rows = batch * kv_heads
    return Layout.from_padded(
        starts.expand(rows, -1, -1).reshape(-1, starts.shape[-1]),
        ends.expand(rows, -1, -1).reshape(-1, ends.shape[-1]),
        batch=batch,
        kv_heads=kv_heads,
        q_len=q_len,
        k_len=k_len,
        query_block=config.query_block,
        sliding_window=window,
    )


def select_dense(
    q: Tensor, k: Tensor, config: DHSAConfig, *, sliding_window=None, boundaries=None, scale=None
) -> Layout:
    """Every causal key (inside the sliding window, if any): the reference method."""
    regions = block_regions(
        q.shape[2], k.shape[2], config.query_block, 0, 0, sliding_window, k.device
    )
    starts = regions.lowest[:, None]
    ends = regions.block_end[:, None]
    return _layout_from_block_spans(q, k, starts, ends, config, sliding_window)


def streaming_local(config: DHSAConfig, block_len: Tensor | int) -> Tensor | int:
    """Tokens before its block that a ``streaming`` query block of ``block_len`` queries keeps:
    the budget minus the sink and the block itself (a partial block, such as a decode step's
    single query, keeps more recent keys, so every block keeps ``budget`` keys when it can)."""
    return config.budget - config.sink - block_len


def select_streaming(
    q: Tensor, k: Tensor, config: DHSAConfig, *, sliding_window=None, boundaries=None, scale=None
) -> Layout:
    """StreamingLLM: the first ``sink`` keys and the most recent keys, ``budget`` per block."""
    block_start, block_end = query_block_bounds(
        q.shape[2], k.shape[2], config.query_block, k.device
    )
    regions = block_regions(
        q.shape[2],
        k.shape[2],
        config.query_block,
        config.sink,
        streaming_local(config, block_end - block_start),
        sliding_window,
        k.device,
    )
    starts, ends = regions.fixed_spans()
    return _layout_from_block_spans(q, k, starts, ends, config, sliding_window)


__all__ = ["select_dense", "select_streaming", "streaming_local"]
