"""Boundary tensors shared by every chunker.

A boundary tensor is int64 ``[B, N + 1]`` per batch element: ``0 = b_0 < b_1 < ... = L`` followed by
copies of ``L`` where one batch element has fewer chunks than another (zero-length padding chunks,
which every consumer treats as absent).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..intmath import ceil_div


def pad_boundaries(per_batch: list[Tensor], length: int) -> Tensor:
    """Stack 1-D boundary vectors of several lengths into ``[B, N + 1]``, padded with ``length``."""
    width = max(int(b.numel()) for b in per_batch)
    out = torch.full((len(per_batch), width), length, dtype=torch.int64, device=per_batch[0].device)
    for i, b in enumerate(per_batch):
        out[i, : b.numel()] = b
    return out


def split_long(bounds: Tensor, max_chunk: int) -> Tensor:
    """Split every chunk of a 1-D boundary vector longer than ``max_chunk`` into equal parts."""
    starts = bounds[:-1]
    lengths = bounds[1:] - starts
    pieces = torch.clamp(ceil_div(lengths, max_chunk), min=1)
    chunk_of_piece = torch.repeat_interleave(
        torch.arange(len(starts), device=bounds.device), pieces
    )
    first_piece = torch.cumsum(pieces, 0) - pieces
    j = torch.arange(len(chunk_of_piece), device=bounds.device) - first_piece[chunk_of_piece]
    piece_starts = starts[chunk_of_piece] + (j * lengths[chunk_of_piece]) // pieces[chunk_of_piece]
    return torch.cat([piece_starts, bounds[-1:]])


def chunk_ids(bounds: Tensor, length: int) -> Tensor:
    """Int64 ``[B, length]``: the chunk index of every key position."""
    positions = torch.arange(length, device=bounds.device).expand(bounds.shape[0], -1).contiguous()
    return torch.searchsorted(bounds.contiguous(), positions, right=True) - 1


def check_boundaries(bounds: Tensor, batch: int, length: int) -> None:
    """Raise ValueError unless ``bounds`` is a valid ``[batch, N + 1]`` boundary tensor."""
    if bounds.dim() != 2 or bounds.shape[0] != batch or bounds.shape[1] < 2:
        raise ValueError(
            f"boundaries must have shape [B={batch}, N+1 >= 2], got {tuple(bounds.shape)}"
        )
    if bounds.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"boundaries must be an integer tensor, got {bounds.dtype}")
    if bool((bounds[:, 0] != 0).any()) or bool((bounds[:, -1] != length).any()):
        raise ValueError(f"boundaries must start at 0 and end at the key length {length}")
    if bool((bounds[:, 1:] < bounds[:, :-1]).any()):
        raise ValueError("boundaries must be non-decreasing")
