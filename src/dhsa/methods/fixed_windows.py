"""Selectors without scores: ``dense`` (everything causal) and ``streaming`` (StreamingLLM)."""

from __future__ import annotations

from torch import Tensor

from ..config import DHSAConfig
from ..layout import Geometry, Layout
from .regions import block_regions


def _layout_from_block_spans(starts: Tensor, ends: Tensor, geometry: Geometry) -> Layout:
    """The layout in which every ``(batch, kv_head)`` keeps the spans ``[NQB, M]`` of its
    blocks."""
    rows = geometry.batch * geometry.kv_heads
    return Layout.from_padded(
        starts.expand(rows, -1, -1).reshape(-1, starts.shape[-1]),
        ends.expand(rows, -1, -1).reshape(-1, ends.shape[-1]),
        geometry,
    )


def select_dense(
    q: Tensor, k: Tensor, config: DHSAConfig, *, sliding_window=None, boundaries=None, scale=None
) -> Layout:
    """Every causal key (inside the sliding window, if any): the reference method."""
    geometry = Geometry.of(q, k, config.query_block, sliding_window)
    regions = block_regions(geometry, 0, 0, k.device)
    return _layout_from_block_spans(regions.lowest[:, None], regions.block_end[:, None], geometry)


def streaming_local(config: DHSAConfig, block_len: Tensor | int) -> Tensor | int:
    """Tokens before its block that a ``streaming`` query block of ``block_len`` queries keeps:
    the budget minus the sink and the block itself (a partial block, such as a decode step's
    single query, keeps more recent keys, so every block keeps ``budget`` keys when it can)."""
    return config.budget - config.sink - block_len


def select_streaming(
    q: Tensor, k: Tensor, config: DHSAConfig, *, sliding_window=None, boundaries=None, scale=None
) -> Layout:
    """StreamingLLM: the first ``sink`` keys and the most recent keys, ``budget`` per block."""
    geometry = Geometry.of(q, k, config.query_block, sliding_window)
    block_start, block_end = geometry.block_bounds(k.device)
    local = streaming_local(config, block_end - block_start)
    regions = block_regions(geometry, config.sink, local, k.device)
    return _layout_from_block_spans(*regions.fixed_spans(), geometry)


__all__ = ["select_dense", "select_streaming", "streaming_local"]
