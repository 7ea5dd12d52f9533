"""The ``learned`` chunker: a small boundary predictor on a layer's keys (METHOD.md section 4).

For the cut ``t`` (between positions ``t`` and ``t + 1``) the ``w`` keys left of it
(``k[t-w+1 .. t]``) and right of it (``k[t+1 .. t+w]``), keys averaged over KV heads, go through one
multi-head self-attention layer with LayerNorm; each side is mean-pooled to ``l`` and ``r`` and
``[l, r, |l - r|, l * r, cos(l, r)]`` feeds an MLP (hidden 256) that gives the boundary logit.
Inference keeps logits above ``config.predictor_threshold`` with the similarity chunker's
non-maximum suppression and count cap, then splits long chunks: when nothing passes, the
boundaries are the max-length splits.

A predictor file (``torch.save``) holds ``format``, the constructor arguments under ``config``,
the ``state_dict`` and free-form ``meta`` (what it was trained on).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..intmath import ceil_div
from .boundaries import pad_boundaries, split_long
from .similarity import pick_peaks

logger = logging.getLogger(__name__)

FILE_FORMAT = "dhsa-boundary-predictor-v1"


class BoundaryPredictor(nn.Module):
    """Boundary logits from keys: ``forward(keys [B, L, D]) -> [B, L - 1]`` (see module doc)."""

    def __init__(self, head_dim: int, window: int = 4, heads: int = 4, hidden: int = 256):
        super().__init__()
        if head_dim % heads:
            raise ValueError(f"head_dim={head_dim} must be a multiple of heads={heads}")
        self.head_dim, self.window, self.heads, self.hidden = head_dim, window, heads, hidden
        self.input_norm = nn.LayerNorm(head_dim)
        # Which side and how far from the cut each token sits: attention alone is order-blind.
        self.position = nn.Parameter(torch.zeros(2 * window, head_dim))
        self.attention = nn.MultiheadAttention(head_dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(head_dim)
        self.mlp = nn.Sequential(
            nn.Linear(4 * head_dim + 1, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    def constructor_args(self) -> dict:
        return {
            "head_dim": self.head_dim,
            "window": self.window,
            "heads": self.heads,
            "hidden": self.hidden,
        }

    def forward_windows(self, windows: Tensor, present: Tensor) -> Tensor:
        """Logits ``[N]`` for ``windows [N, 2w, D]`` (left side first) with bool ``present``
        ``[N, 2w]`` (False: padding beyond the sequence ends)."""
        w = self.window
        x = self.input_norm(windows) + self.position
        attended, _ = self.attention(x, x, x, key_padding_mask=~present, need_weights=False)
        x = self.norm(x + attended) * present[..., None]
        count = present.view(-1, 2, w).sum(-1, keepdim=True).clamp(min=1)
        sides = x.view(-1, 2, w, self.head_dim).sum(2) / count
        left, right = sides[:, 0], sides[:, 1]
        cos = F.cosine_similarity(left, right, dim=-1, eps=1e-6)[:, None]
        features = torch.cat([left, right, (left - right).abs(), left * right, cos], dim=-1)
        return self.mlp(features).squeeze(-1)

    def forward(self, keys: Tensor, cut_tile: int = 8192) -> Tensor:
        batch, length, dim = keys.shape
        windows, present = cut_windows(keys, self.window)
        logits = [
            self.forward_windows(windows[i : i + cut_tile], present[i : i + cut_tile])
            for i in range(0, windows.shape[0], cut_tile)
        ]
        return torch.cat(logits).view(batch, length - 1)


def cut_windows(keys: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """The ``2w`` keys around every cut: ``[B * (L - 1), 2w, D]`` and bool present ``[.., 2w]``.

    ``keys`` is ``[B, L, D]``; window ``t`` holds ``keys[t-w+1 .. t+w]``, zero-padded at the ends.
    """
    batch, length, dim = keys.shape
    pad = window - 1
    padded = F.pad(keys.float(), (0, 0, pad, pad))
    ones = F.pad(torch.ones(batch, length, device=keys.device), (pad, pad))
    windows = padded.unfold(1, 2 * window, 1)[:, : length - 1].transpose(-1, -2)
    present = ones.unfold(1, 2 * window, 1)[:, : length - 1] > 0
    return windows.reshape(-1, 2 * window, dim), present.reshape(-1, 2 * window)


def save_predictor(predictor: BoundaryPredictor, path: str | Path, meta: dict | None = None):
    """Write ``predictor`` to ``path`` in the format :func:`load_predictor` reads."""
    torch.save(
        {
            "format": FILE_FORMAT,
            "config": predictor.constructor_args(),
            "state_dict": predictor.state_dict(),
            "meta": meta or {},
        },
        path,
    )


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, modified_ns: int) -> BoundaryPredictor:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable boundary predictor file: {error}") from error
    if not isinstance(blob, dict) or blob.get("format") != FILE_FORMAT:
        raise ValueError(
            f"{path} is not a boundary predictor ({FILE_FORMAT}): make one with "
            "`dhsa train-predictor --model KEY --out FILE`"
        )
    predictor = BoundaryPredictor(**blob["config"])
    predictor.load_state_dict(blob["state_dict"])
    return predictor.eval()


def load_predictor(path: str | Path) -> BoundaryPredictor:
    """The predictor stored at ``path`` (cached until the file changes).

    Raises FileNotFoundError when the file is missing, ValueError when it is not a predictor.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"boundary predictor {str(path)!r} not found: train one with "
            "`dhsa train-predictor --model KEY --out FILE`"
        )
    return _load_cached(str(path.resolve()), path.stat().st_mtime_ns)


def cut_logits(k: Tensor, predictor: BoundaryPredictor) -> Tensor:
    """Float32 ``[B, L - 1]``: the predictor's boundary logit of every cut of ``k [B, Hkv, L, D]``
    (keys averaged over KV heads), the learned counterpart of the similarity shift score."""
    predictor = predictor.to(k.device)
    with torch.no_grad():
        return predictor(k.float().mean(dim=1))


def learned_boundaries(
    k: Tensor,
    predictor: BoundaryPredictor,
    *,
    threshold: float = 0.0,
    min_chunk: int = 8,
    max_chunk: int = 128,
    max_chunks: int | None = None,
) -> Tensor:
    """Int64 ``[B, N + 1]`` boundaries of ``k [B, Hkv, L, D]`` where the predictor's logit exceeds
    ``threshold`` (NMS to ``min_chunk``, long chunks split to ``max_chunk``).

    Raises ValueError when the predictor was trained for another head size than ``D``.
    """
    batch, _, length, dim = k.shape
    if dim != predictor.head_dim:
        raise ValueError(
            f"the boundary predictor was trained for head size {predictor.head_dim}, but the keys "
            f"have head size {dim}: train one on this model with `dhsa train-predictor`"
        )
    ends = torch.tensor([0, length], device=k.device, dtype=torch.int64)
    if length < 2:
        return ends.expand(batch, -1).contiguous()
    logits = cut_logits(k, predictor)
    max_peaks = None
    if max_chunks is not None:
        max_peaks = max(max_chunks - 1 - ceil_div(length, max_chunk), 0)
    per_batch = []
    for b in range(batch):
        cuts = pick_peaks(logits[b], length, min_chunk, 0.0, max_peaks, threshold=threshold)
        per_batch.append(split_long(torch.cat([ends[:1], cuts, ends[1:]]), max_chunk))
    return pad_boundaries(per_batch, length)


__all__ = [
    "BoundaryPredictor",
    "cut_logits",
    "cut_windows",
    "learned_boundaries",
    "load_predictor",
    "save_predictor",
]
