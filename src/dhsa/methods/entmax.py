"""1.5-entmax without sorting: the threshold by a few batched Newton steps, then solved exactly.

``entmax15(z) = [z / 2 - tau]_+ ** 2`` with ``tau`` such that the result sums to one (Peters et al.,
2019). Unlike softmax it gives exact zeros: scores far enough below the best get no mass, so the
number of kept entries follows the scores. The usual algorithm sorts every row; here a few batched
Newton steps on ``||[a - tau]_+|| - 1`` (``a = z / 2``, convex and decreasing in ``tau``, so they
never overshoot) find the support at ``O(n)`` each, and ``tau`` is then solved in closed form on
that support.
"""

from __future__ import annotations

import torch
from torch import Tensor


def entmax15_threshold(z: Tensor, steps: int = 5) -> Tensor:
    """The threshold ``tau`` ``[..., 1]`` of 1.5-entmax over the last dim of ``z`` (float32),
    relative to the row's maximum of ``z / 2``.

    Entries of ``-inf`` are excluded; every row needs one finite entry.
    """
    a = z.float() / 2
    a = a - a.max(dim=-1, keepdim=True).values
    # h(tau) = ||[a - tau]_+|| - 1 is convex and decreasing with h(-1) >= 0, so Newton from -1
    # climbs to the root without overshooting; h is nearly linear, so a few steps suffice
    # whatever the number of entries (Newton on the squared norm would crawl there).
    tau = torch.full_like(a[..., :1], -1.0)
    for _ in range(steps):
        gap = torch.clamp(a - tau, min=0)
        norm = gap.norm(dim=-1, keepdim=True)
        tau = tau + (norm - 1) * norm / gap.sum(-1, keepdim=True)
    # On the support found, sum((a - tau)^2) = 1 is a quadratic: take its smaller root.
    support = a > tau
    n = support.sum(-1, keepdim=True).to(a.dtype)
    a_in = torch.where(support, a, torch.zeros_like(a))
    mean = a_in.sum(-1, keepdim=True) / n
    spread = (torch.where(support, a - mean, torch.zeros_like(a)) ** 2).sum(-1, keepdim=True)
    return mean - torch.sqrt(torch.clamp(1 - spread, min=0) / n)


def entmax15(z: Tensor, steps: int = 5) -> Tensor:
    """1.5-entmax probabilities over the last dim of ``z`` (float32, same shape, rows sum to 1).

    ``-inf`` entries get probability 0; every row needs at least one finite entry.
    """
    a = z.float() / 2
    tau = entmax15_threshold(z, steps)
    gap = torch.clamp(a - a.max(dim=-1, keepdim=True).values - tau, min=0)
    return gap * gap


__all__ = ["entmax15", "entmax15_threshold"]
