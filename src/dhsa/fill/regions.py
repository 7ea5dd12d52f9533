"""What the fill needs to know about each query block besides its chunk scores."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..intmath import ceil_div


@dataclass(frozen=True)
class FillRegions:
    """The fixed spans and the room left for chunks, per query block of a tile.

    Every field is int64 ``[T]`` (one value per query block of the tile, on the scores' device) or
    a Python int (the same value for every block, as a decode step gives it, so nothing is copied
    to the device); fields may mix the two. Key positions are absolute:

    - ``[sink_start, sink_end)``: the attention sink, always kept (may be empty);
    - ``[window_start, window_end)``: the local window ending at the block's last query, always
      kept;
    - ``[candidate_start, candidate_end)``: where chunks may add keys (between sink and window,
      inside the sliding window if any); each chunk counts only its part inside;
    - ``remaining``: keys the chunks may add, ``>= 0`` (the budget less the sink and window).

    The regions follow one another: ``sink_start <= sink_end <= candidate_start <= candidate_end
    <= window_start < window_end`` (what :func:`dhsa.methods.regions.block_regions` gives).
    """

    sink_start: Tensor | int
    sink_end: Tensor | int
    window_start: Tensor | int
    window_end: Tensor | int
    candidate_start: Tensor | int
    candidate_end: Tensor | int
    remaining: Tensor | int

    def fields(self) -> tuple[Tensor | int, ...]:
        return (
            self.sink_start,
            self.sink_end,
            self.window_start,
            self.window_end,
            self.candidate_start,
            self.candidate_end,
            self.remaining,
        )

    @property
    def scalar(self) -> bool:
        """True when every field is a Python int."""
        return all(isinstance(x, int) for x in self.fields())

    def tile(self, q0: int, q1: int) -> FillRegions:
        """The regions of query blocks ``q0 .. q1 - 1`` (ints stay as they are)."""
        return FillRegions(*(x if isinstance(x, int) else x[q0:q1] for x in self.fields()))


def chunks_taken_bound(remaining: int, shortest: int) -> int:
    """How many chunks one block's fill can touch when ``remaining`` keys are left for chunks and
    no chunk is shorter than ``shortest``: at most two cut short by the candidate region's edges,
    every other one at least ``shortest`` long."""
    return max(1, ceil_div(remaining, max(shortest, 1)) + 2)
