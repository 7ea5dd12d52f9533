"""The ``fixed`` chunker: a boundary every ``chunk_size`` tokens (the block-sparse baseline)."""

from __future__ import annotations

import torch
from torch import Tensor


def fixed_boundaries(batch: int, length: int, chunk_size: int, device) -> Tensor:
    """Int64 ``[batch, ceil(length / chunk_size) + 1]``: ``0, chunk_size, 2 chunk_size, ..., L``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    inner = torch.arange(0, length, chunk_size, device=device, dtype=torch.int64)
    bounds = torch.cat([inner, torch.tensor([length], device=device, dtype=torch.int64)])
    return bounds.expand(batch, -1).contiguous()
