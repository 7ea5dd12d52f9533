"""The one entry point of the fill: torch or Triton, prefill tile or decode step alike."""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from .regions import FillRegions
from .torch_fill import fill_torch


def triton_fill_usable(device: torch.device, num_chunks: int) -> bool:
    """True when the Triton fill can run rows of ``num_chunks`` chunks on ``device``: CUDA,
    triton importable, and the row fits the kernel's registers."""
    if device.type != "cuda":
        return False
    try:
        module = importlib.import_module("dhsa.fill.triton_fill")
    except ImportError:
        return False
    return num_chunks <= module.MAX_RESIDENT_CHUNKS


def greedy_fill(
    scores: Tensor,
    lo: Tensor,
    hi: Tensor,
    regions: FillRegions,
    *,
    width: int,
    out: tuple[Tensor, Tensor] | None = None,
    status: Tensor | None = None,
    use_triton: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Sink, window and the best chunks within the budget, for every row of a tile of blocks.

    The rule is :func:`dhsa.fill.naive.naive_fill`'s: per row ``(b, h, t)``, chunks in descending
    score (ties in position order), each counted by its part of the candidate region, taken whole
    until ``regions.remaining`` keys, the last one cut to its latest keys that fit.

    Args:
        scores: float32 ``[B, Hkv, T, N]``: chunk ``c``'s score for query block ``t`` of the tile
            (a decode step is ``T = 1``). How scores are computed is the caller's business.
        lo, hi: int64 ``[B, N]``, last dim contiguous: chunk ``c`` holds keys ``[lo, hi)``
            (chunks may be empty or reach past every key: only their candidate part counts);
            or ``[B, Hkv, T, N]``: each row its own chunks (a row's list of candidates, in
            position order, empty ones unused).
        regions: the tile's :class:`~dhsa.fill.regions.FillRegions` (``[T]`` tensors or ints).
        width: spans per row, at least 2 (sink and window); a row can take ``width - 2`` chunks.
            :func:`~dhsa.fill.regions.chunks_taken_bound` gives a width that always suffices.
        out: int32 ``(starts, ends) [B, Hkv, T, width]`` to write (views of a larger buffer
            allowed, last dim contiguous); allocated when None.
        status: int32 ``[2]`` flags, raised (never lowered) so one tensor can gather a whole
            prefill: ``[0]`` some score is NaN or ``+inf``; ``[1]`` some row needed more than
            ``width - 2`` chunks (its spans are incomplete: fill again wider). None: no flags
            (a decode step's width always suffices and its scores are not checked).
        use_triton: the Triton kernel (:mod:`dhsa.fill.triton_fill`) instead of tensor operations;
            None: when :func:`triton_fill_usable`.

    Returns ``(starts, ends, status)`` (``status`` as given): per row the sink (possibly empty),
    the chosen chunk parts in position order, the window, then ``(0, 0)`` padding: sorted and
    disjoint, though neighbours may touch. Both implementations give the same tensors. Nothing
    waits for the device: read ``status`` when convenient.
    """
    batch, kv_heads, tiles, num_chunks = scores.shape
    if width < 2:
        raise ValueError(f"width must be at least 2 (sink and window), got {width}")
    if scores.dtype != torch.float32:
        raise TypeError(f"the fill takes float32 scores, got {scores.dtype}")
    if out is None:
        starts = torch.empty(batch, kv_heads, tiles, width, dtype=torch.int32, device=scores.device)
        out = (starts, torch.empty_like(starts))
    if use_triton is None:
        use_triton = triton_fill_usable(scores.device, num_chunks)
    if use_triton:
        from .triton_fill import fill_triton

        fill_triton(scores, lo, hi, regions, *out, status)
    else:
        fill_torch(scores, lo, hi, regions, *out, status)
    return out[0], out[1], status
