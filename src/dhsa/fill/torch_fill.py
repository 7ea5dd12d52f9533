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
    # In place where possible: a prefill tile of scores is tens of MB.
    bits = scores.contiguous().view(torch.int32)
    flipped = (bits >> 31).bitwise_and_(0x7FFFFFFF).bitwise_xor_(bits)
    flipped.masked_fill_(scores == 0, 0)
    key = flipped.to(torch.int64)
    del flipped
    index = torch.arange(scores.shape[-1], device=scores.device)
    return key.mul_(1 << 32).add_((1 << 32) - 1 - index)


def _per_block(field: Tensor | int, trailing: int) -> Tensor | int:
    """A region field shaped to broadcast over a tile's blocks with ``trailing`` dims after them."""
    return field if isinstance(field, int) else field.view(-1, *([1] * trailing))


def fill_torch(
    scores: Tensor,
    lo: Tensor,
    hi: Tensor,
    regions: FillRegions,
    starts: Tensor,
    ends: Tensor,
    status: Tensor,
) -> None:
    """The fill of :func:`dhsa.fill.greedy_fill` by tensor operations, written into ``starts,
    ends`` (int32 ``[B, Hkv, T, width]``, views allowed) and ``status`` (int32 ``[2]``)."""
    batch, kv_heads, tiles, num_chunks = scores.shape
    width = starts.shape[-1]
    ranked = max(min(width - 2, num_chunks), 0)
    chunk_lo = torch.clamp(lo[:, None, :], min=_per_block(regions.candidate_start, 1))
    chunk_hi = torch.clamp(hi[:, None, :], max=_per_block(regions.candidate_end, 1))
    size = torch.clamp(chunk_hi - chunk_lo, min=0).expand(batch, tiles, num_chunks)
    bad = (torch.isnan(scores) | (scores == torch.inf)).any()

    key = rank_keys(scores).masked_fill_((size == 0)[:, None], _NO_CANDIDATE)
    order = torch.topk(key, ranked, dim=-1, sorted=True).indices
    by_row = (batch, kv_heads, tiles, num_chunks)
    size_ranked = size[:, None].expand(by_row).gather(-1, order)
    end = chunk_hi.expand(batch, tiles, num_chunks)[:, None].expand(by_row).gather(-1, order)
    remaining = _per_block(regions.remaining, 1)
    before = size_ranked.cumsum(-1) - size_ranked
    take = torch.minimum(torch.clamp(remaining - before, min=0), size_ranked)
    candidates = (size > 0).sum(-1)[:, None]
    need_more = (size_ranked.sum(-1) < _per_block(regions.remaining, 0)) & (candidates > ranked)
    status.copy_(torch.maximum(status, torch.stack([bad, need_more.any()]).to(status.dtype)))

    # The chosen chunks in position order, then the unchosen ones, blanked.
    chosen = take > 0
    position, perm = torch.sort(torch.where(chosen, order, num_chunks), dim=-1)
    in_order = position < num_chunks
    chunk_starts = torch.where(in_order, (end - take).gather(-1, perm), 0)
    chunk_ends = torch.where(in_order, end.gather(-1, perm), 0)
    starts[..., 0] = _per_block(regions.sink_start, 0)
    ends[..., 0] = _per_block(regions.sink_end, 0)
    starts[..., 1 : ranked + 1] = chunk_starts
    ends[..., 1 : ranked + 1] = chunk_ends
    starts[..., ranked + 1 :] = 0
    ends[..., ranked + 1 :] = 0
    slot = chosen.sum(-1, keepdim=True) + 1
    for out, field in ((starts, regions.window_start), (ends, regions.window_end)):
        if isinstance(field, int):
            out.scatter_(-1, slot, field)
        else:
            value = field.view(1, 1, -1, 1).expand(batch, kv_heads, tiles, 1).to(out.dtype)
            out.scatter_(-1, slot, value)
