"""The fixed part of every query block's selection: attention sink and local window."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..layout import query_block_bounds


@dataclass(frozen=True)
class BlockRegions:
    """Absolute key positions per query block, int64 ``[num_q_blocks]`` each.

    ``[sink_start, sink_end)`` is the attention sink, ``[window_start, block_end)`` the local window
    (the block itself and ``local`` tokens before it), ``[candidate_start, candidate_end)`` what a
    selector may add on top; ``lowest`` is the first key any query of the block may see (0, or the
    sliding window's reach).
    """

    block_start: Tensor
    block_end: Tensor
    lowest: Tensor
    sink_start: Tensor
    sink_end: Tensor
    window_start: Tensor
    candidate_start: Tensor
    candidate_end: Tensor

    @property
    def fixed_cost(self) -> Tensor:
        """Keys the sink and local window take from the budget, per block."""
        return (self.sink_end - self.sink_start) + (self.block_end - self.window_start)

    def fixed_spans(self) -> tuple[Tensor, Tensor]:
        """Starts and ends ``[num_q_blocks, 2]`` of the sink and window spans."""
        starts = torch.stack([self.sink_start, self.window_start], dim=-1)
        ends = torch.stack([self.sink_end, self.block_end], dim=-1)
        return starts, ends


def block_regions(
    q_len: int,
    k_len: int,
    query_block: int,
    sink: int,
    local: int,
    sliding_window: int | None,
    device,
) -> BlockRegions:
    """Sink, window and candidate regions of every query block (see :class:`BlockRegions`)."""
    block_start, block_end = query_block_bounds(q_len, k_len, query_block, device)
    lowest = torch.zeros_like(block_start)
    if sliding_window is not None:
        lowest = torch.clamp(block_start - sliding_window + 1, min=0)
    window_start = torch.maximum(block_start - local, lowest)
    sink_start = lowest
    sink_end = torch.maximum(torch.clamp(window_start, max=sink), sink_start)
    candidate_start = torch.clamp(torch.maximum(lowest, sink_end), max=window_start)
    return BlockRegions(
        block_start=block_start,
        block_end=block_end,
        lowest=lowest,
        sink_start=sink_start,
        sink_end=sink_end,
        window_start=window_start,
        candidate_start=candidate_start,
        candidate_end=window_start,
    )
