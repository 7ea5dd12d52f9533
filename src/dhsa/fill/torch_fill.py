"""The fill in tensor operations (any device): a partial top-k per row instead of a full sort.

Only the best ``width - 2`` chunks of a row are ranked (``torch.topk``); the caller picks a width
that holds every chunk the row can take (:func:`~dhsa.fill.regions.chunks_taken_bound`) or a
smaller first guess, and redoes the fill wider when ``status[1]`` says some row needed more.
Ranking ties are broken by position exactly as :func:`~dhsa.fill.naive.naive_fill` does: each
score becomes one int64 whose high half orders the float32 and whose low half the chunk index.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .regions import FillRegions

_NO_CANDIDATE = torch.iinfo(torch.int64).min


def rank_keys(scores: Tensor) -> Tensor:
    """Int64 ``[..., N]``, distinct per row, ordered like ``scores`` (float32 ``[..., N]``) with
    equal scores ordered by position, lower index higher; ``-0.0`` ranks as ``0.0``."""
    # In place where possible: a prefill tile of scores is tens of MB. Adding +0.0 turns -0.0
    # into 0.0 and leaves every other float as it is.
    bits = (scores + 0.0).view(torch.int32)
    flipped = (bits >> 31).bitwise_and_(0x7FFFFFFF).bitwise_xor_(bits)
    del bits
    index = torch.arange((1 << 32) - 1, (1 << 32) - 1 - scores.shape[-1], -1, device=scores.device)
    return torch.add(index, flipped, alpha=1 << 32)  # computed in int64


def _per_block(field: Tensor | int, trailing: int) -> Tensor | int:
    """A region field shaped to broadcast over a tile's blocks with ``trailing`` dims after them."""
    return field if isinstance(field, int) else field.view(-1, *([1] * trailing))


def _per_row(bound: Tensor) -> Tensor:
    """Chunk bounds ``[B, N]`` (every row of a batch alike) or ``[B, Hkv, T, N]`` (per row) as a
    tensor that broadcasts over ``[B, Hkv, T, N]``."""
    return bound[:, None, None, :] if bound.dim() == 2 else bound


def _column(field: Tensor | int, like: Tensor) -> Tensor:
    """A region field as a ``[B, Hkv, T, 1]`` column shaped and typed like ``like``."""
    if isinstance(field, int):
        return torch.full_like(like, field)
    return field.view(1, 1, -1, 1).to(like.dtype).expand_as(like)


def fill_torch(
    scores: Tensor,
    lo: Tensor,
    hi: Tensor,
    regions: FillRegions,
    starts: Tensor,
    ends: Tensor,
    status: Tensor | None,
) -> None:
    """The fill of :func:`dhsa.fill.greedy_fill` by tensor operations, written into ``starts,
    ends`` (int32 ``[B, Hkv, T, width]``, views allowed) and ``status`` (int32 ``[2]``; None: the
    flags are not computed, a decode step's dozen small operations saved)."""
    batch, kv_heads, tiles, num_chunks = scores.shape
    width = starts.shape[-1]
    ranked = max(min(width - 2, num_chunks), 0)
    by_row = (batch, kv_heads, tiles, num_chunks)
    chunk_lo = torch.clamp(_per_row(lo), min=_per_block(regions.candidate_start, 1))
    chunk_hi = torch.clamp(_per_row(hi), max=_per_block(regions.candidate_end, 1))
    size = (chunk_hi - chunk_lo).clamp_(min=0)  # [B, 1 or Hkv, T or 1, N]
    key = rank_keys(scores).masked_fill_(size == 0, _NO_CANDIDATE)
    order = torch.topk(key, ranked, dim=-1, sorted=True).indices
    size_ranked = size.expand(by_row).gather(-1, order)
    end = chunk_hi.expand(by_row).gather(-1, order)
    through = size_ranked.cumsum(-1)
    remaining = _per_block(regions.remaining, 1)
    take = torch.minimum((remaining - through).add_(size_ranked).clamp_(min=0), size_ranked)

    if status is not None:
        # A NaN or +inf score; a row whose ranked chunks hold less than its room while more
        # candidates are left.
        bad = (scores < torch.inf).logical_not_().any()
        held = through[..., -1] if ranked else torch.zeros_like(key[..., 0])
        more = (size > 0).sum(-1) > ranked
        need_more = ((held < _per_block(regions.remaining, 0)) & more).any()
        torch.maximum(status, torch.stack([bad, need_more]).to(status.dtype), out=status)

    # Sink, chosen chunk parts, window: disjoint, so sorting by start puts them in position order
    # (the sink's start is the lowest, the window's the highest; a stable sort keeps an empty sink
    # first). Unchosen chunks start past every key and are blanked.
    past = torch.iinfo(torch.int64).max
    chunk_starts = torch.where(take > 0, end - take, past)
    like = end.new_empty(batch, kv_heads, tiles, 1)
    first, last = (_column(x, like) for x in (regions.sink_start, regions.window_start))
    span_starts, perm = torch.sort(torch.cat([first, chunk_starts, last], -1), dim=-1, stable=True)
    first, last = (_column(x, like) for x in (regions.sink_end, regions.window_end))
    span_ends = torch.cat([first, end, last], -1).gather(-1, perm)
    unused = span_starts == past
    starts[..., : ranked + 2] = span_starts.masked_fill_(unused, 0)
    ends[..., : ranked + 2] = span_ends.masked_fill_(unused, 0)
    if width > ranked + 2:
        starts[..., ranked + 2 :] = 0
        ends[..., ranked + 2 :] = 0
