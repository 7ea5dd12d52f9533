"""The fill's specification: a plain loop over rows, small enough to check by eye.

For one row ``(b, h, t)`` (a query block of a tile, or a decode step's single query):

1. chunk ``c`` has the keys ``[lo[b, c], hi[b, c])``; only its part inside the candidate region
   ``[candidate_start, candidate_end)`` counts, and a chunk with no such part is no candidate;
2. candidates are ranked by score, highest first, equal scores in position order (lower ``c``
   first);
3. down that ranking each candidate is taken whole while ``remaining`` keys allow; the first one
   that no longer fits is cut to its latest keys that do (those nearest the queries), and the fill
   stops there;
4. the row's spans are the sink, the chosen chunk parts in position order, then the window.

Because every key inherits its chunk's score, this is the token-level top-``remaining`` of the
candidate keys, ties going to the earlier chunk. Scores are float32; ``-inf`` is a valid lowest
score, and ``-0.0`` ranks as ``0.0``. NaN and ``+inf`` scores make the ranking meaningless: the fast
fills flag them, and the specification leaves their outcome open.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .regions import FillRegions


def naive_fill(
    scores: Tensor, lo: Tensor, hi: Tensor, regions: FillRegions
) -> list[list[list[list[tuple[int, int]]]]]:
    """The spans of every row, as nested lists ``[b][h][t]`` of ``(start, end)`` pairs.

    ``scores`` float ``[B, Hkv, T, N]``; ``lo, hi`` integer ``[B, N]``; ``regions`` as in
    :class:`~dhsa.fill.regions.FillRegions` for the ``T`` blocks. Each row is ``[sink, chosen
    chunk parts in position order..., window]``; the sink is listed even when empty.
    """
    batch, kv_heads, tiles, num_chunks = scores.shape

    def at(field, t: int) -> int:
        return field if isinstance(field, int) else int(field[t])

    rows = []
    for b in range(batch):
        per_head = []
        for h in range(kv_heads):
            per_block = []
            for t in range(tiles):
                first = at(regions.candidate_start, t)
                last = at(regions.candidate_end, t)
                candidates = []
                for c in range(num_chunks):
                    start = max(int(lo[b, c]), first)
                    end = min(int(hi[b, c]), last)
                    if end > start:
                        candidates.append((float(scores[b, h, t, c]), c, start, end))
                candidates.sort(key=lambda item: (-item[0], item[1]))
                left = at(regions.remaining, t)
                chosen = []
                for _, _, start, end in candidates:
                    if left <= 0:
                        break
                    taken = min(left, end - start)
                    chosen.append((end - taken, end))
                    left -= taken
                sink = (at(regions.sink_start, t), at(regions.sink_end, t))
                window = (at(regions.window_start, t), at(regions.window_end, t))
                per_block.append([sink, *sorted(chosen), window])
            per_head.append(per_block)
        rows.append(per_head)
    return rows


def padded(rows: list, width: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """The spans of :func:`naive_fill` in the fast fills' format: int32 ``(starts, ends)
    [B, Hkv, T, width]``, each row's spans first, then ``(0, 0)``."""
    batch, kv_heads, tiles = len(rows), len(rows[0]), len(rows[0][0])
    starts = torch.zeros(batch, kv_heads, tiles, width, dtype=torch.int32)
    ends = torch.zeros_like(starts)
    for b, per_head in enumerate(rows):
        for h, per_block in enumerate(per_head):
            for t, spans in enumerate(per_block):
                if len(spans) > width:
                    raise ValueError(f"a row holds {len(spans)} spans, more than width {width}")
                for i, (start, end) in enumerate(spans):
                    starts[b, h, t, i] = start
                    ends[b, h, t, i] = end
    return starts.to(device), ends.to(device)
