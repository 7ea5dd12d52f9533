"""Boundary detectors: each returns an int64 ``[B, N + 1]`` boundary tensor (see ``boundaries``).

- :mod:`~dhsa.chunking.similarity`, :mod:`~dhsa.chunking.fixed`, :mod:`~dhsa.chunking.learned`
  (trained by :mod:`~dhsa.chunking.training` on :mod:`~dhsa.chunking.labels`): the full-sequence
  chunkers;
- :mod:`~dhsa.chunking.dispatch`: :func:`compute_boundaries`, the chunker ``config.chunker`` names;
- :mod:`~dhsa.chunking.incremental`: :class:`BoundaryTracker`, the same boundaries extended one
  token at a time (decode).
"""

from .boundaries import check_boundaries, chunk_ids, pad_boundaries, split_long
from .dispatch import compute_boundaries
from .fixed import fixed_boundaries
from .incremental import BoundaryTracker
from .learned import learned_boundaries, load_predictor
from .similarity import similarity_boundaries

__all__ = [
    "BoundaryTracker",
    "check_boundaries",
    "chunk_ids",
    "compute_boundaries",
    "fixed_boundaries",
    "learned_boundaries",
    "load_predictor",
    "pad_boundaries",
    "similarity_boundaries",
    "split_long",
]
