"""The ``similarity`` chunker (training-free): cut the keys where their content shifts.

The shift at position ``t`` compares the mean key of ``k[t-w+1 .. t]`` with the mean key of
``k[t+1 .. t+w]`` (keys averaged over KV heads): ``1 - cos``. Peaks more than ``boundary_z``
standard deviations above the sequence's mean shift become boundaries ``t + 1``, thinned by
non-maximum suppression so that no chunk is shorter than ``min_chunk``; chunks longer than
``max_chunk`` are split evenly. Flat input has no peaks and falls back to max-length splits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .boundaries import pad_boundaries, split_long


def shift_scores(k: Tensor, window: int) -> Tensor:
    """Float32 ``[B, L - 1]``: ``1 - cos`` between the ``window`` keys before and after each cut.

    ``k`` is ``[B, Hkv, L, D]``; entry ``t`` scores a cut between positions ``t`` and ``t + 1``.
    """
    keys = k.sum(dim=1, dtype=torch.float32).transpose(1, 2)
    length = keys.shape[2]
    # Window means by pooling over zero-padded keys (near the ends a window holds fewer keys; the
    # cosine ignores the scale): pooled[i] averages keys i - window + 1 .. i, so the left side of
    # cut t is pooled[t] and the right side pooled[t + window]. A running sum along L computes
    # the same but is slow on the GPU (a scan over the outer dimension: 46 ms of a 65 ms dhsa
    # selection at 128K keys on the H200,
    # benchmarks/archive/gpu/profile_v2.txt).
    pooled = F.avg_pool1d(F.pad(keys, (window - 1, window)), window, stride=1)
    left = pooled[:, :, : length - 1]
    right = pooled[:, :, window : window + length - 1]
    return 1.0 - F.cosine_similarity(left, right, dim=1, eps=1e-12)


def pick_peaks(
    scores: Tensor,
    length: int,
    min_chunk: int,
    z: float,
    max_peaks: int | None,
    threshold: float | None = None,
):
    """Cut positions (``t + 1``) of one sequence's peaks: above threshold, NMS-separated.

    The threshold is ``mean + z * std`` of the eligible scores unless ``threshold`` is given.
    """
    device = scores.device
    t = torch.arange(length - 1, device=device)
    # Eligible cuts t + 1 lie in [min_chunk, length - min_chunk]: a slice, known on the host.
    first, last = max(min_chunk, 1) - 1, length - min_chunk - 1
    if last < first:
        return torch.zeros(0, dtype=torch.int64, device=device)
    eligible = (t >= first) & (t <= last)
    if threshold is None:
        values = scores[first : last + 1]
        threshold = values.mean() + z * values.std(unbiased=False)
    masked = torch.where(eligible, scores, torch.full_like(scores, -torch.inf))
    radius = min_chunk - 1
    if radius > 0:
        _, winner = F.max_pool1d(
            masked.view(1, 1, -1), 2 * radius + 1, stride=1, padding=radius, return_indices=True
        )
        is_peak = winner.view(-1) == t
    else:
        is_peak = torch.ones_like(eligible)
    keep = is_peak & eligible & (masked > threshold)
    cuts = t[keep] + 1
    if max_peaks is not None and cuts.numel() > max_peaks:
        best = torch.topk(scores[keep], max(max_peaks, 0)).indices
        cuts = torch.sort(cuts[best]).values
    return cuts


def similarity_boundaries(
    k: Tensor,
    *,
    window: int = 4,
    z: float = 1.0,
    min_chunk: int = 8,
    max_chunk: int = 128,
    max_chunks: int | None = None,
) -> Tensor:
    """Int64 ``[B, N + 1]`` boundaries of ``k [B, Hkv, L, D]`` (see the module docstring).

    ``max_chunks`` caps the detected cuts so that, after max-length splitting, at most
    ``max(max_chunks, ceil(L / max_chunk))`` chunks remain.
    """
    batch, length = k.shape[0], k.shape[2]
    device = k.device
    ends = torch.tensor([0, length], device=device, dtype=torch.int64)
    if length < 2:
        return ends.expand(batch, -1).contiguous()
    scores = shift_scores(k, window)
    max_peaks = None
    if max_chunks is not None:
        max_peaks = max(max_chunks - 1 - (-(-length // max_chunk)), 0)
    per_batch = []
    for b in range(batch):
        cuts = pick_peaks(scores[b], length, min_chunk, z, max_peaks)
        bounds = torch.cat([ends[:1], cuts, ends[1:]])
        per_batch.append(split_long(bounds, max_chunk))
    return pad_boundaries(per_batch, length)
