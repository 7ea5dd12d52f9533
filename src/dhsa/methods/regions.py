"""The fixed part of every query block's selection: attention sink and local window."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..fill import FillRegions
from ..layout import Geometry


@dataclass(frozen=True)
class BlockRegions:
    """Absolute key positions per query block, int64 ``[num_q_blocks]`` each (Python ints for
    the single query of a decode step, :func:`last_query_regions`).

    ``[sink_start, sink_end)`` is the attention sink, ``[window_start, block_end)`` the local window
    (the block itself and ``local`` tokens before it), ``[candidate_start, candidate_end)`` what a
    selector may add on top; ``lowest`` is the first key any query of the block may see (0, or the
    sliding window's reach).
    """

    block_start: Tensor | int
    block_end: Tensor | int
    lowest: Tensor | int
    sink_start: Tensor | int
    sink_end: Tensor | int
    window_start: Tensor | int
    candidate_start: Tensor | int
    candidate_end: Tensor | int

    @property
    def fixed_cost(self) -> Tensor | int:
        """Keys the sink and local window take from the budget, per block."""
        return (self.sink_end - self.sink_start) + (self.block_end - self.window_start)

    def fixed_spans(self) -> tuple[Tensor, Tensor]:
        """Starts and ends ``[num_q_blocks, 2]`` of the sink and window spans."""
        starts = torch.stack([self.sink_start, self.window_start], dim=-1)
        ends = torch.stack([self.sink_end, self.block_end], dim=-1)
        return starts, ends

    def fill_regions(self, budget: int) -> FillRegions:
        """What the budgeted fill needs: these regions and ``budget`` less the fixed cost."""
        cost = self.fixed_cost
        remaining = max(budget - cost, 0) if isinstance(cost, int) else (budget - cost).clamp(min=0)
        return FillRegions(
            sink_start=self.sink_start,
            sink_end=self.sink_end,
            window_start=self.window_start,
            window_end=self.block_end,
            candidate_start=self.candidate_start,
            candidate_end=self.candidate_end,
            remaining=remaining,
        )


def _at_least(x, floor):
    return torch.clamp(x, min=floor) if isinstance(x, Tensor) else max(x, floor)


def _at_most(x, ceiling):
    return torch.clamp(x, max=ceiling) if isinstance(x, Tensor) else min(x, ceiling)


def _regions(block_start, block_end, sink: int, local: int, sliding_window: int | None):
    """The regions of blocks ``[block_start, block_end)``, int64 tensors or Python ints alike."""
    lowest = block_start * 0
    if sliding_window is not None:
        lowest = _at_least(block_start - sliding_window + 1, 0)
    window_start = _at_least(block_start - local, lowest)
    sink_end = _at_least(_at_most(window_start, sink), lowest)
    candidate_start = _at_most(_at_least(sink_end, lowest), window_start)
    return BlockRegions(
        block_start=block_start,
        block_end=block_end,
        lowest=lowest,
        sink_start=lowest,
        sink_end=sink_end,
        window_start=window_start,
        candidate_start=candidate_start,
        candidate_end=window_start,
    )


def block_regions(geometry: Geometry, sink: int, local: int, device) -> BlockRegions:
    """Sink, window and candidate regions of every query block of ``geometry`` (see
    :class:`BlockRegions`)."""
    block_start, block_end = geometry.block_bounds(device)
    return _regions(block_start, block_end, sink, local, geometry.sliding_window)


def last_query_regions(k_len: int, sink: int, local: int) -> BlockRegions:
    """:func:`block_regions` of a single query at key ``k_len - 1`` (a decode step) as Python
    ints: computed on the host, so a decode step copies nothing to the device for them."""
    return _regions(k_len - 1, k_len, sink, local, None)
