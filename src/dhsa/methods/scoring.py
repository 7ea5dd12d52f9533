"""Chunk and query-block representations and their scores.

A chunk of ``n`` keys is represented by ``sqrt(n) * mean`` (``norm="sqrt"``, DHSA: neither long nor
short chunks are favoured by their length) or by the plain ``mean`` (``norm="mean"``, block-sparse).
Query blocks use the same rule over the block's tokens, with the query heads of a KV group averaged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..chunking import chunk_ids

NORMS = ("sqrt", "mean")


def _normalize(sums: Tensor, counts: Tensor, norm: str) -> Tensor:
    counts = torch.clamp(counts, min=1).to(sums.dtype)
    if norm == "sqrt":
        return sums / counts.sqrt()
    if norm == "mean":
        return sums / counts
    raise ValueError(f"unknown normalization {norm!r}: allowed {NORMS}")


def chunk_representations(k: Tensor, bounds: Tensor, norm: str, token_tile: int = 1 << 14):
    """Float32 ``[B, Hkv, N, D]`` chunk keys for ``k [B, Hkv, L, D]`` and ``bounds [B, N + 1]``.

    Padding chunks (zero length) get zero vectors. Keys are summed in float32, ``token_tile``
    positions at a time, so no float32 copy of all of ``k`` is made.
    """
    batch, kv_heads, length, dim = k.shape
    num_chunks = bounds.shape[1] - 1
    ids = chunk_ids(bounds, length)
    sums = torch.zeros(batch, kv_heads, num_chunks, dim, dtype=torch.float32, device=k.device)
    for b in range(batch):
        for t0 in range(0, length, token_tile):
            t1 = min(t0 + token_tile, length)
            sums[b].index_add_(1, ids[b, t0:t1], k[b, :, t0:t1].float())
    counts = (bounds[:, 1:] - bounds[:, :-1])[:, None, :, None]
    return _normalize(sums, counts, norm)


def query_block_representations(q: Tensor, kv_heads: int, query_block: int, norm: str) -> Tensor:
    """Float32 ``[B, Hkv, num_q_blocks, D]``: one vector per query block and KV group.

    ``q`` is ``[B, Hq, Lq, D]`` with ``Hq = G * Hkv``; the ``G`` heads of a group are averaged.
    """
    batch, q_heads, q_len, dim = q.shape
    group = q_heads // kv_heads
    num_blocks = -(-q_len // query_block)
    padded = num_blocks * query_block
    summed = q.view(batch, kv_heads, group, q_len, dim).sum(dim=2, dtype=torch.float32) / group
    if padded != q_len:
        summed = torch.nn.functional.pad(summed, (0, 0, 0, padded - q_len))
    sums = summed.view(batch, kv_heads, num_blocks, query_block, dim).sum(dim=3)
    counts = torch.full((num_blocks,), query_block, device=q.device)
    counts[-1] = q_len - (num_blocks - 1) * query_block
    return _normalize(sums, counts[:, None], norm)
