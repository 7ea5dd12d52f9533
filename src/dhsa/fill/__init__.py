"""The budgeted greedy fill shared by every chunk-scoring selector, prefill and decode alike.

Given chunk scores per query block, a fill keeps the sink, the local window and whole chunks in
descending score until the budget, the last chunk cut to its latest keys. Modules:

- :mod:`~dhsa.fill.naive`: the specification, a plain loop (tests only);
- :mod:`~dhsa.fill.torch_fill`: tensor operations, any device;
- :mod:`~dhsa.fill.triton_fill`: one Triton launch per tile, CUDA;
- :mod:`~dhsa.fill.dispatch`: :func:`greedy_fill`, the one entry point.

The fill takes scores, not representations: how chunks are scored stays with the selector.
"""

from .dispatch import greedy_fill, triton_fill_usable
from .naive import naive_fill
from .regions import FillRegions, chunks_taken_bound

__all__ = [
    "FillRegions",
    "chunks_taken_bound",
    "greedy_fill",
    "naive_fill",
    "triton_fill_usable",
]
