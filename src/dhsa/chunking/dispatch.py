"""The one entry point of the full-sequence chunkers: the chunker that ``config.chunker`` names."""

from __future__ import annotations

from torch import Tensor

from ..config import DHSAConfig
from .fixed import fixed_boundaries
from .learned import learned_boundaries, load_predictor
from .similarity import similarity_boundaries


def compute_boundaries(k: Tensor, config: DHSAConfig) -> Tensor:
    """Boundaries of the keys ``k [B, Hkv, L, D]`` by ``config.chunker``."""
    batch, length = k.shape[0], k.shape[2]
    if config.chunker == "fixed":
        return fixed_boundaries(batch, length, config.chunk_size, k.device)
    if config.chunker == "similarity":
        return similarity_boundaries(
            k,
            window=config.boundary_window,
            z=config.boundary_z,
            min_chunk=config.min_chunk,
            max_chunk=config.max_chunk,
            max_chunks=config.max_chunks,
        )
    if config.chunker == "learned":
        return learned_boundaries(
            k,
            load_predictor(config.predictor),
            threshold=config.predictor_threshold,
            min_chunk=config.min_chunk,
            max_chunk=config.max_chunk,
            max_chunks=config.max_chunks,
        )
    raise ValueError(f"chunker {config.chunker!r} is not available in this build")
