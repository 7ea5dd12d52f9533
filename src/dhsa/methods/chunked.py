"""Chunk-scoring selectors: ``dhsa`` (dynamic chunks, scored by ``DHSAConfig.scoring``: ``peak``
or the paper's ``sqrt(n) * mean``) and ``block_sparse`` (fixed blocks, plain mean). Both keep
sink + local window and fill the budget greedily."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..chunking import check_boundaries, compute_boundaries, fixed_boundaries
from ..config import DHSAConfig
from ..layout import Geometry, Layout
from .greedy import greedy_layout
from .regions import block_regions
from .scoring import (
    CANDIDATE_FACTOR,
    chunk_representations,
    head_block_means,
    peak_scores,
    probe_chunk_scores,
    query_block_representations,
    triton_peak_usable,
)

# One tile of the ``peak`` scores holds its rows' stage-1 logits and (on the CPU, where stage 2
# gathers them) their candidates' keys: up to this many times ``DHSAConfig.backend.peak_tile``
# elements. On the GPU small tiles are launch-bound (benchmarks/gpu/selection_cost.jsonl: 1.26 s
# at 32K keys with one row per tile), so tiles there may be 32 times larger.
PEAK_TILE_FACTOR = {"cpu": 8, "cuda": 256}


def chunk_select(
    q: Tensor,
    k: Tensor,
    bounds: Tensor,
    config: DHSAConfig,
    *,
    norm: str,
    sliding_window: int | None,
    peak: bool = False,
    scale: float | None = None,
) -> Layout:
    """Score the chunks ``bounds`` of ``k`` against query blocks of ``q`` and fill the budget."""
    geometry = Geometry.of(q, k, config.query_block, sliding_window)
    regions = block_regions(geometry, config.sink, config.local, k.device)
    k_rep = chunk_representations(k, bounds, norm)
    tiles = None
    if peak:
        # The fill reads the representations' shape and finiteness only: q is read once.
        head_q = head_block_means(q, k.shape[1], config.query_block)
        q_rep = head_q.mean(dim=2)
        tiles = peak_tiles(q, k, bounds, regions, config, scale, k_rep, head_q=head_q)
    else:
        q_rep = query_block_representations(q, k.shape[1], config.query_block, norm)
    return greedy_layout(
        q_rep,
        k_rep,
        bounds,
        regions,
        budget=config.budget,
        geometry=geometry,
        use_triton=None if config.backend.triton_fill else False,
        score_tiles=tiles,
    )


def peak_tiles(
    q, k, bounds, regions, config: DHSAConfig, scale: float, chunk_means: Tensor, head_q=None
):
    """The ``peak`` scores (:func:`peak_scores`) of the chunks ``bounds`` of ``k`` for the query
    blocks of ``q``, as a function whose call yields them a tile of query blocks at a time,
    ``(q0, q1, scores, listed)`` (``listed``: the chunks stage 2 rescored, which hold every chunk
    a fill takes; see :func:`dhsa.methods.greedy.greedy_layout`); the tiles' size follows
    ``config.backend.peak_tile``. ``head_q``: the :func:`head_block_means` of ``q`` when already
    computed."""
    kv_heads, dim = k.shape[1], k.shape[3]
    if head_q is None:
        head_q = head_block_means(q, kv_heads, config.query_block)
    lo, hi = bounds[:, :-1], bounds[:, 1:]
    lengths = hi - lo
    positive = torch.where(lengths > 0, lengths, lengths.max())
    longest, shortest = (int(x) for x in torch.stack([lengths.max(), positive.min()]).tolist())
    room = max(int((config.budget - regions.fixed_cost).clamp(min=0).max()), 1)
    width = CANDIDATE_FACTOR * room + longest
    # Per row: stage 1's logits of every head and chunk, and per slot of stage 2 the gathered key
    # and its logits (none where the Triton kernel reads the keys in place).
    per_slot = 1 if triton_peak_usable(k.device, dim) else dim + head_q.shape[2] + 4
    per_row = k.shape[0] * kv_heads * (width * per_slot + 2 * head_q.shape[2] * lo.shape[1])
    factor = PEAK_TILE_FACTOR.get(k.device.type, PEAK_TILE_FACTOR["cpu"])
    tile = max(1, factor * config.backend.peak_tile // max(per_row, 1))
    num_blocks = head_q.shape[3]
    # The last query block's own exact attention (the question, in a prompt) adds its chunks.
    # A single query is a decode step, which scores as decode does (without its exact attention).
    probe = None
    if q.shape[2] > 1:
        last = (num_blocks - 1) * config.query_block
        probe = probe_chunk_scores(q[:, :, last:], k, bounds, scale=scale)[:, :, None]

    def tiles():
        for q0 in range(0, num_blocks, tile):
            q1 = min(q0 + tile, num_blocks)
            yield (
                q0,
                q1,
                *peak_scores(
                    head_q[:, :, :, q0:q1],
                    k,
                    chunk_means,
                    lo,
                    hi,
                    regions.lowest[q0:q1],
                    regions.block_end[q0:q1],
                    regions.candidate_start[q0:q1],
                    regions.candidate_end[q0:q1],
                    scale=scale,
                    room=room,
                    shortest=shortest,
                    longest=longest,
                    prior=None if probe is None or q1 < num_blocks else _last_row(probe, q1 - q0),
                    exact_prior=True,
                    candidates=True,
                ),
            )

    return tiles


def _last_row(probe: Tensor, rows: int) -> Tensor:
    """``[B, Hkv, rows, N]``: ``probe [B, Hkv, 1, N]`` on the last row, ``-inf`` elsewhere."""
    prior = torch.full((*probe.shape[:2], rows, probe.shape[3]), -torch.inf, device=probe.device)
    prior[:, :, -1] = probe[:, :, 0]
    return prior


def select_dhsa(
    q: Tensor, k: Tensor, config: DHSAConfig, *, sliding_window=None, boundaries=None, scale=None
) -> Layout:
    """DHSA: chunks from ``config.chunker`` (or the given ``boundaries``), scored by the
    ``config.scoring`` rule (:func:`dhsa.methods.scoring.peak_scores`, or ``sqrt(n) * mean``)."""
    if boundaries is None:
        boundaries = compute_boundaries(k, config)
    else:
        check_boundaries(boundaries, k.shape[0], k.shape[2])
    if config.scoring == "peak":
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        return chunk_select(
            q,
            k,
            boundaries,
            config,
            norm="mean",
            sliding_window=sliding_window,
            peak=True,
            scale=scale,
        )
    return chunk_select(q, k, boundaries, config, norm="sqrt", sliding_window=sliding_window)


def select_block_sparse(
    q: Tensor, k: Tensor, config: DHSAConfig, *, sliding_window=None, boundaries=None, scale=None
) -> Layout:
    """Block-sparse baseline: fixed ``chunk_size`` blocks scored by their plain mean key."""
    bounds = fixed_boundaries(k.shape[0], k.shape[2], config.chunk_size, k.device)
    return chunk_select(q, k, bounds, config, norm="mean", sliding_window=sliding_window)
