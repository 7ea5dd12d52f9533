"""Integer arithmetic the layout, the chunkers, the selectors, the decode state and the kernels
share."""

from __future__ import annotations

from typing import TypeVar

from torch import Tensor

Count = TypeVar("Count", int, Tensor)


def ceil_div(numerator: Count, denominator: int | Tensor) -> Count:
    """``ceil(numerator / denominator)`` in integers, for Python ints and integer tensors alike
    (``denominator > 0``): how many blocks of ``denominator`` cover ``numerator`` items."""
    return -(-numerator // denominator)


def doubled_capacity(needed: int) -> int:
    """Room for ``needed`` entries in a buffer that grows, doubled so that growing is rare."""
    return max(2 * needed, 16)
