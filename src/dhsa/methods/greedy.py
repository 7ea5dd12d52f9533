"""Budgeted greedy fill: whole chunks in descending score until each query block's budget is full.

Every key token inherits its chunk's score, so the token-level top-``budget`` is this chunk-level
fill: chunks are taken whole in score order, and the first chunk that no longer fits is cut to the
tokens that do (its latest ones, nearest the queries). No ``L x L`` score matrix is ever formed:
scores are ``[query blocks, chunks]``, computed a tile of query blocks at a time.

Only the best few chunks of a block can ever be taken: every chunk but the (at most two) cut by
the candidate region's edges is at least as long as the shortest chunk, so the fill stops within
the top ``remaining // shortest + 2``. A partial top-k over that many replaces a full sort of all
chunks, and only those spans are merged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels.dispatch import triton_available
from ..layout import Layout, merge_padded_rows
from ..validation import NonFiniteInputError
from .regions import BlockRegions


def greedy_layout(
    q_rep: Tensor,
    k_rep: Tensor,
    bounds: Tensor,
    regions: BlockRegions,
    *,
    budget: int,
    q_len: int,
    k_len: int,
    query_block: int,
    sliding_window: int | None,
    tile_elements: int = 1 << 24,
    use_triton: bool | None = None,
) -> Layout:
    """Layout keeping sink + window + the best-scoring chunks within ``budget`` keys per block.

    ``q_rep [B, Hkv, NQB, D]`` and ``k_rep [B, Hkv, N, D]`` (float32) are scored by dot product;
    ``bounds [B, N + 1]`` gives each chunk's keys. Raises :class:`NonFiniteInputError` when a
    representation is NaN or Inf (some query or key was) or a score overflows.

    Every tile of query blocks writes its merged spans into one padded ``[B, Hkv, NQB, width]``
    buffer, so the tiles queue on the device without waiting for each other; the host waits once,
    at the end, to compact the buffer and read the checks. ``use_triton`` (None: on CUDA when
    Triton is there and a row's chunks fit its registers; :class:`dhsa.DHSAConfig` passes False
    unless ``triton_fill``) fills each tile with one launch of
    :mod:`dhsa.kernels.triton_select` instead of the tensor operations of :func:`_fill`; spans
    that touch stay separate there, so the two layouts keep the same keys in different spans.
    """
    num_chunks = k_rep.shape[2]
    remaining = torch.clamp(budget - regions.fixed_cost, min=0)
    most = int(remaining.max())
    top = min(num_chunks, max_chunks_taken(bounds, most))
    likely = min(top, likely_chunks_taken(bounds, most))
    finite = torch.isfinite(q_rep).all() & torch.isfinite(k_rep).all()
    if use_triton is None:
        use_triton = triton_available(q_rep.device) and num_chunks <= _resident_chunks()
    if use_triton:
        starts, ends, flag = _fill_triton(
            q_rep, k_rep, bounds, regions, remaining, top, tile_elements
        )
        is_finite, overfull = torch.stack([finite & (flag == 0), flag >= 2]).tolist()
        if overfull:
            raise RuntimeError("the Triton fill took more chunks than its width holds")
        redo = False
    else:
        # The fill nearly always ends within the `likely` best chunks; only when some block
        # needs more (its best `likely` chunks are all short) is it redone with the sure bound.
        starts, ends, overflow, short = _fill(
            q_rep, k_rep, bounds, regions, remaining, likely, k_len, tile_elements
        )
        is_finite, too_short = torch.stack([finite & ~overflow, short]).tolist()
        redo = too_short and likely < top
    if not is_finite:
        raise NonFiniteInputError(
            "q or k contains NaN or Inf: chunk scores are not finite, refusing to select"
        )
    if redo:
        starts, ends, _, _ = _fill(
            q_rep, k_rep, bounds, regions, remaining, top, k_len, tile_elements
        )
    keep = ends > starts
    batch, kv_heads = q_rep.shape[:2]
    return Layout.from_counts(
        keep.sum(-1).reshape(-1),
        starts[keep],
        ends[keep],
        batch=batch,
        kv_heads=kv_heads,
        q_len=q_len,
        k_len=k_len,
        query_block=query_block,
        sliding_window=sliding_window,
    )


def _resident_chunks() -> int:
    from ..kernels.triton_select import MAX_RESIDENT_CHUNKS

    return MAX_RESIDENT_CHUNKS


def _fill_triton(
    q_rep: Tensor,
    k_rep: Tensor,
    bounds: Tensor,
    regions: BlockRegions,
    remaining: Tensor,
    ranked: int,
    tile_elements: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_fill` with one Triton launch per tile (scores by one matrix product): padded spans
    ``[B, Hkv, NQB, ranked + 2]`` and the kernel's flag (1: a non-finite score)."""
    from ..kernels.triton_select import prefill_fill_tile

    out_starts, out_ends = _span_buffers(q_rep, ranked + 2)
    flag = torch.zeros(1, dtype=torch.int32, device=q_rep.device)
    for q0, _, scores in _score_tiles(q_rep, k_rep, tile_elements):
        prefill_fill_tile(scores, bounds, regions, remaining, q0, out_starts, out_ends, flag)
    return out_starts, out_ends, flag[0]


def _span_buffers(q_rep: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Uninitialized int32 ``(starts, ends) [B, Hkv, NQB, width]``: every tile writes its rows."""
    batch, kv_heads, num_blocks, _ = q_rep.shape
    starts = torch.empty(batch, kv_heads, num_blocks, width, dtype=torch.int32, device=q_rep.device)
    return starts, torch.empty_like(starts)


def _score_tiles(q_rep: Tensor, k_rep: Tensor, tile_elements: int):
    """``(q0, q1, scores [B, Hkv, q1 - q0, N])`` for tiles of query blocks of at most about
    ``tile_elements`` float32 scores each."""
    batch, kv_heads, num_blocks, _ = q_rep.shape
    tile = max(1, tile_elements // max(batch * kv_heads * k_rep.shape[2], 1))
    for q0 in range(0, num_blocks, tile):
        q1 = min(q0 + tile, num_blocks)
        yield q0, q1, q_rep[:, :, q0:q1] @ k_rep.transpose(-1, -2)


def _fill(
    q_rep: Tensor,
    k_rep: Tensor,
    bounds: Tensor,
    regions: BlockRegions,
    remaining: Tensor,
    ranked: int,
    k_len: int,
    tile_elements: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fill over each block's best ``ranked`` chunks: padded merged spans
    ``[B, Hkv, NQB, ranked + 2]`` (int32 starts and ends, empty slots last), whether a ranked
    score was NaN or +Inf, and whether some block ran out of ranked chunks before its budget."""
    batch, kv_heads = q_rep.shape[:2]
    device = q_rep.device
    chunk_lo = bounds[:, None, :-1]
    chunk_hi = bounds[:, None, 1:]
    fixed_starts, fixed_ends = regions.fixed_spans()
    width = ranked + 2
    out_starts, out_ends = _span_buffers(q_rep, width)
    overflow = torch.zeros((), dtype=torch.bool, device=device)
    short = torch.zeros((), dtype=torch.bool, device=device)
    for q0, q1, scores in _score_tiles(q_rep, k_rep, tile_elements):
        lo = torch.maximum(chunk_lo, regions.candidate_start[q0:q1, None])
        hi = torch.minimum(chunk_hi, regions.candidate_end[q0:q1, None])
        cost = torch.clamp(hi - lo, min=0)[:, None].expand(-1, kv_heads, -1, -1)
        scores = torch.where(cost > 0, scores, torch.full_like(scores, -torch.inf))
        tile_remaining = remaining[None, None, q0:q1, None]
        best, order = torch.topk(scores, ranked, dim=-1, sorted=True)
        overflow |= (torch.isnan(best) | (best == torch.inf)).any()
        cost_sorted = cost.gather(-1, order)
        short |= (
            (cost_sorted.sum(-1, keepdim=True) < tile_remaining) & (best[..., -1:] > -torch.inf)
        ).any()
        before = cost_sorted.cumsum(-1) - cost_sorted
        take = torch.minimum(torch.clamp(tile_remaining - before, min=0), cost_sorted)
        span_end = hi[:, None].expand(-1, kv_heads, -1, -1).gather(-1, order)
        shape = (batch, kv_heads, q1 - q0, 2)
        tile_starts = torch.cat([fixed_starts[q0:q1].expand(shape), span_end - take], dim=-1)
        tile_ends = torch.cat([fixed_ends[q0:q1].expand(shape), span_end], dim=-1)
        merged_starts, merged_ends = merge_padded_rows(
            tile_starts.reshape(-1, width), tile_ends.reshape(-1, width), k_len
        )
        out_starts[:, :, q0:q1] = merged_starts.view(batch, kv_heads, q1 - q0, width)
        out_ends[:, :, q0:q1] = merged_ends.view(batch, kv_heads, q1 - q0, width)
    return out_starts, out_ends, overflow, short


def max_chunks_taken(bounds: Tensor, remaining: int) -> int:
    """How many chunks one block's fill can touch: at most two cut short by the candidate region's
    edges, every other one at least as long as the shortest chunk of ``bounds [B, N + 1]``."""
    lengths = bounds[:, 1:] - bounds[:, :-1]
    shortest = int(torch.where(lengths > 0, lengths, remaining + 1).min()) if remaining else 1
    return max(1, -(-remaining // max(shortest, 1)) + 2)


def likely_chunks_taken(bounds: Tensor, remaining: int) -> int:
    """A first guess at :func:`max_chunks_taken`: a quarter more chunks than ``remaining`` keys
    fill at the mean chunk length of ``bounds [B, N + 1]``, plus the two edge chunks."""
    lengths = bounds[:, 1:] - bounds[:, :-1]
    chunks = max(int((lengths > 0).sum()), 1)
    mean = float(lengths.sum()) / chunks
    return max(1, int(1.25 * remaining / max(mean, 1.0)) + 3)
