"""The prefill's budgeted greedy fill: chunk scores a tile of query blocks at a time, then the
shared fill (:mod:`dhsa.fill`) keeps whole chunks in descending score within each block's budget.

Every key token inherits its chunk's score, so the token-level top-``budget`` is this chunk-level
fill. No ``L x L`` score matrix is ever formed: scores are ``[query blocks, chunks]``, computed a
tile of query blocks at a time by :func:`_score_tiles` (the one place that says how a chunk is
scored here; the fill only reads the scores).

Only the best few chunks of a block can ever be taken: every chunk but the (at most two) cut by
the candidate region's edges is at least as long as the shortest chunk, so the fill stops within
the top ``remaining // shortest + 2``. The fill ranks a first guess of that many
(:func:`likely_chunks_taken`) and is redone with the sure bound only when some block needs more.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..fill import FillRegions, chunks_taken_bound, greedy_fill, triton_fill_usable
from ..layout import Geometry, Layout
from ..validation import NonFiniteInputError
from .regions import BlockRegions


def greedy_layout(
    q_rep: Tensor,
    k_rep: Tensor,
    bounds: Tensor,
    regions: BlockRegions,
    *,
    budget: int,
    geometry: Geometry,
    tile_elements: int = 1 << 24,
    use_triton: bool | None = None,
    score_tiles=None,
) -> Layout:
    """Layout keeping sink + window + the best-scoring chunks within ``budget`` keys per block.

    ``q_rep [B, Hkv, NQB, D]`` and ``k_rep [B, Hkv, N, D]`` (float32) are scored by dot product;
    ``bounds [B, N + 1]`` (int64) gives each chunk's keys; ``regions`` are those of the query
    blocks of ``geometry``, the layout's. Raises :class:`NonFiniteInputError`
    when a representation is NaN or Inf (some query or key was) or a score overflows.

    Every tile of query blocks writes its spans into one padded ``[B, Hkv, NQB, width]`` buffer,
    so the tiles queue on the device without waiting for each other; the host waits once, at the
    end, to compact the buffer and read the checks. ``use_triton`` (None: when
    :func:`dhsa.fill.triton_fill_usable`; :class:`dhsa.DHSAConfig` passes False unless
    ``triton_fill``) fills each tile with one Triton launch instead of tensor operations; both
    give the same spans.

    ``score_tiles`` (a function returning an iterable of ``(q0, q1, scores [B, Hkv, q1 - q0,
    N])``) replaces the dot-product scores of ``q_rep`` and ``k_rep``, which then serve only the
    finiteness check. A tile may add ``listed`` (int32 ``[B, Hkv, q1 - q0, K]``, each row's
    chunks in position order, ``-1`` after them) when every other chunk scores below them and
    they hold at least the room of the row or all its candidates: the fill then ranks these
    ``K`` chunks only, with the same result.
    """
    tiles = score_tiles or (lambda: _score_tiles(q_rep, k_rep, tile_elements))
    num_chunks = k_rep.shape[2]
    fill_regions = regions.fill_regions(budget)
    most = int(fill_regions.remaining.max())
    top = min(num_chunks, max_chunks_taken(bounds, most))
    likely = min(top, likely_chunks_taken(bounds, most))
    finite = torch.isfinite(q_rep).all() & torch.isfinite(k_rep).all()
    if use_triton is None:
        use_triton = triton_fill_usable(q_rep.device, num_chunks)
    starts, ends, status = _fill(q_rep, tiles, bounds, fill_regions, likely + 2, use_triton)
    is_finite, short = torch.stack([finite & (status[0] == 0), status[1] > 0]).tolist()
    if not is_finite:
        raise NonFiniteInputError(
            "q or k contains NaN or Inf: chunk scores are not finite, refusing to select"
        )
    if short:
        # Some block's best `likely` chunks were all short: fill again with the sure bound.
        starts, ends, status = _fill(q_rep, tiles, bounds, fill_regions, top + 2, use_triton)
        if int(status[1]):
            raise RuntimeError("the fill took more chunks than the sure bound allows")
    keep = ends > starts
    return Layout.from_counts(keep.sum(-1).reshape(-1), starts[keep], ends[keep], geometry)


def _score_tiles(q_rep: Tensor, k_rep: Tensor, tile_elements: int):
    """``(q0, q1, scores [B, Hkv, q1 - q0, N])`` for tiles of query blocks of at most about
    ``tile_elements`` float32 scores each: the paper's ``q_qb . k_c``."""
    batch, kv_heads, num_blocks, _ = q_rep.shape
    tile = max(1, tile_elements // max(batch * kv_heads * k_rep.shape[2], 1))
    for q0 in range(0, num_blocks, tile):
        q1 = min(q0 + tile, num_blocks)
        yield q0, q1, q_rep[:, :, q0:q1] @ k_rep.transpose(-1, -2)


def _fill(
    q_rep: Tensor,
    tiles,
    bounds: Tensor,
    regions: FillRegions,
    width: int,
    use_triton: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Padded spans int32 ``[B, Hkv, NQB, width]`` of every block (see
    :func:`dhsa.fill.greedy_fill`) and the fill's ``status`` over all tiles."""
    batch, kv_heads, num_blocks, _ = q_rep.shape
    starts = torch.empty(batch, kv_heads, num_blocks, width, dtype=torch.int32, device=q_rep.device)
    ends = torch.empty_like(starts)
    status = torch.zeros(2, dtype=torch.int32, device=q_rep.device)
    lo, hi = bounds[:, :-1], bounds[:, 1:]
    for q0, q1, scores, *listed in tiles():
        chunk_lo, chunk_hi = lo, hi
        if listed:
            scores, chunk_lo, chunk_hi = listed_chunks(scores, lo, hi, listed[0])
        greedy_fill(
            scores,
            chunk_lo,
            chunk_hi,
            regions.tile(q0, q1),
            width=width,
            out=(starts[:, :, q0:q1], ends[:, :, q0:q1]),
            status=status,
            use_triton=use_triton,
        )
    return starts, ends, status


def listed_chunks(scores: Tensor, lo: Tensor, hi: Tensor, listed: Tensor):
    """The scores ``[B, Hkv, T, K]`` and per-row bounds ``lo, hi [B, Hkv, T, K]`` of the chunks
    ``listed`` (int32 ``[B, Hkv, T, K]``, ``-1`` unused: no keys, score ``-inf``) out of
    ``scores [B, Hkv, T, N]`` and ``lo, hi [B, N]``."""
    used = listed >= 0
    index = listed.clamp(min=0).long()
    rows = (*index.shape[:3], lo.shape[1])
    picked = torch.where(used, scores.gather(-1, index), -torch.inf)
    bound_lo = torch.where(used, lo[:, None, None, :].expand(rows).gather(-1, index), 0)
    bound_hi = torch.where(used, hi[:, None, None, :].expand(rows).gather(-1, index), 0)
    return picked, bound_lo, bound_hi


def max_chunks_taken(bounds: Tensor, remaining: int) -> int:
    """How many chunks one block's fill can touch (:func:`dhsa.fill.chunks_taken_bound` at the
    shortest chunk of ``bounds [B, N + 1]``)."""
    lengths = bounds[:, 1:] - bounds[:, :-1]
    shortest = int(torch.where(lengths > 0, lengths, remaining + 1).min()) if remaining else 1
    return chunks_taken_bound(remaining, shortest)


def likely_chunks_taken(bounds: Tensor, remaining: int) -> int:
    """A first guess at :func:`max_chunks_taken`: a quarter more chunks than ``remaining`` keys
    fill at the mean chunk length of ``bounds [B, N + 1]``, plus the two edge chunks."""
    lengths = bounds[:, 1:] - bounds[:, :-1]
    chunks = max(int((lengths > 0).sum()), 1)
    mean = float(lengths.sum()) / chunks
    return max(1, int(1.25 * remaining / max(mean, 1.0)) + 3)
