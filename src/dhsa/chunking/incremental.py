"""Incremental chunking (METHOD.md section 2): the boundaries of a key sequence that grows one
token at a time, as a decode step needs them.

:class:`BoundaryTracker` extends the boundaries of the full-sequence chunkers
(:func:`dhsa.chunking.compute_boundaries`) without re-chunking all ``L`` keys per token:
  - ``similarity``: a cut at position ``c`` has a final shift score once the ``boundary_window``
    keys after it exist, and is decided once the scores within the non-maximum-suppression radius
    ``min_chunk - 1`` are final: a delay of ``boundary_window + min_chunk - 1`` tokens. It becomes a
    boundary when it is a local maximum above ``mean + boundary_z * std`` of the scores so far and
    at least ``min_chunk`` after the previous boundary; a chunk reaching ``max_chunk`` closes where
    it stands. On strongly structured keys this reproduces the full-sequence chunker; they differ in
    that the threshold statistics grow with the sequence, long runs close at ``max_chunk`` instead
    of being split evenly, and ``max_chunks`` caps only the prompt's chunks.
  - ``learned``: the same with the boundary predictor's logit as the score (read from the
    predictor's ``window`` keys each side of a cut) and its fixed ``predictor_threshold``.
  - ``fixed``: a boundary every ``chunk_size`` tokens, exactly as the full-sequence chunker.

The prompt itself is chunked by the full-sequence chunker when a tracker starts; its boundaries in
the last ``delay`` tokens are left undecided and found again incrementally.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import DHSAConfig
from ..intmath import doubled_capacity
from .boundaries import pad_boundaries
from .dispatch import compute_boundaries
from .learned import cut_logits, load_predictor
from .similarity import shift_scores


def _grown(x: Tensor, dim: int, size: int, fill) -> Tensor:
    """``x`` extended along ``dim`` to ``size`` entries, the new ones ``fill``."""
    if x.shape[dim] >= size:
        return x
    shape = list(x.shape)
    shape[dim] = size - x.shape[dim]
    return torch.cat([x, x.new_full(shape, fill)], dim=dim)


class BoundaryTracker:
    """Chunk boundaries of a growing key sequence, per batch row, kept on the keys' device.

    Row ``b``'s decided boundaries ``0 = b_0 < ... < b_n`` are ``bounds[b, :count[b]]``; the open
    tail chunk is ``[b_n, length)`` (``last[b] = b_n``). ``owner`` is the layer whose keys drive
    the tracker. The cut positions scored and decided are the same for every row and known on the
    host (they follow the length); only the decisions are device data, so :meth:`advance` never
    waits for the device. ``most`` bounds ``count`` from above on the host. :attr:`closed` reads
    the boundaries back (a synchronization, for inspection and for building chunk tables).

    Boundary scores (``scores[:, c - 1]`` scores a cut before position ``c``) and the running
    count, sum and sum of squares of the eligible ones are float64, added one cut at a time: the
    threshold ``mean + boundary_z * std`` is the one a host computation in Python floats gives.
    """

    def __init__(self, config: DHSAConfig, batch: int, owner: int, device) -> None:
        self.config = config
        self.owner = owner
        self.length = 0
        self.decided = 0
        self.bounds = torch.zeros(batch, doubled_capacity(1), dtype=torch.int64, device=device)
        self.count = torch.ones(batch, dtype=torch.int64, device=device)
        self.last = torch.zeros(batch, dtype=torch.int64, device=device)
        self.most = self.first_most = 1
        self.first_decided = 0
        self.scores = torch.zeros(batch, 0, dtype=torch.float64, device=device)
        self.scored = 0
        self.eligible = 0
        self.total = torch.zeros(batch, dtype=torch.float64, device=device)
        self.squares = torch.zeros_like(self.total)

    @property
    def batch(self) -> int:
        return self.bounds.shape[0]

    @property
    def window(self) -> int:
        """Keys on each side of a cut that its score reads."""
        if self.config.chunker == "learned":
            return load_predictor(self.config.predictor).window
        return self.config.boundary_window

    @property
    def delay(self) -> int:
        """Tokens after a cut that must exist before the cut is decided."""
        if self.config.chunker == "fixed":
            return 1
        return self.window + self.config.min_chunk - 1

    @property
    def closed(self) -> list[list[int]]:
        """The decided boundaries of every row as host lists (reads the device)."""
        counts = self.count.tolist()
        return [row[:n] for row, n in zip(self.bounds.tolist(), counts, strict=True)]

    def cut_scores(self, k: Tensor) -> Tensor:
        """Float ``[B, L - 1]`` boundary scores of the cuts of ``k [B, Hkv, L, D]``: the similarity
        chunker's shift, or the learned predictor's logit."""
        if self.config.chunker == "learned":
            return cut_logits(k, load_predictor(self.config.predictor))
        return shift_scores(k, self.config.boundary_window)

    @classmethod
    def start(cls, k: Tensor, config: DHSAConfig, owner: int) -> BoundaryTracker:
        """A tracker for the keys ``k [B, Hkv, L, D]``, chunked by the full-sequence chunker."""
        tracker = cls(config, k.shape[0], owner, k.device)
        length = k.shape[2]
        tracker.length = length
        tracker.decided = max(length - tracker.delay, 0)
        rows = []
        for row_bounds in compute_boundaries(k, config).tolist():
            row = [0]
            row.extend(b for b in row_bounds if 0 < b <= tracker.decided and b > row[-1])
            rows.append(row)
        tracker.most = max(len(row) for row in rows)
        bounds = [row + [0] * (doubled_capacity(tracker.most) - len(row)) for row in rows]
        tracker.bounds = torch.tensor(bounds, dtype=torch.int64, device=k.device)
        tracker.count = torch.tensor([len(row) for row in rows], device=k.device)
        tracker.last = torch.tensor([row[-1] for row in rows], device=k.device)
        tracker.first_most, tracker.first_decided = tracker.most, tracker.decided
        if config.chunker != "fixed" and length > 1:
            final = max(length - tracker.window, 0)
            values = tracker.cut_scores(k)[:, :final].to(torch.float64)
            tracker._store_scores(values)
            # The prompt's statistics in Python floats: the same sums as one cut at a time.
            skip = max(config.min_chunk - 1, 0)
            totals, squares = [], []
            for row in values[:, skip:].tolist():
                total = square = 0.0
                for value in row:
                    total += value
                    square += value * value
                totals.append(total)
                squares.append(square)
            tracker.eligible = max(final - skip, 0)
            tracker.total = torch.tensor(totals, dtype=torch.float64, device=k.device)
            tracker.squares = torch.tensor(squares, dtype=torch.float64, device=k.device)
        return tracker

    def advance(self, k: Tensor) -> None:
        """Absorb the keys ``k [B, Hkv, L', D]`` beyond ``self.length`` (``L' >= length``)."""
        new_length = k.shape[2]
        if new_length < self.length or k.shape[0] != self.batch:
            raise ValueError(
                f"keys of shape {tuple(k.shape)} do not continue a tracker at length "
                f"{self.length} with batch {self.batch}"
            )
        if self.config.chunker != "fixed":
            self._score(k, new_length)
        self.length = new_length
        for cut in range(self.decided + 1, max(new_length - self.delay, 0) + 1):
            self._decide(cut)
        self.decided = max(self.decided, new_length - self.delay)

    def _score(self, k: Tensor, new_length: int) -> None:
        window = self.window
        first = max(self.length - window, 0) + 1
        last = new_length - window
        if last < first:
            return
        lo = max(first - window, 0)
        scores = self.cut_scores(k[:, :, lo : last + window])
        self._add_scores(scores[:, first - lo - 1 : last - lo], first)

    def _store_scores(self, values: Tensor) -> None:
        """Append float64 ``values [B, n]``, the scores of the next ``n`` cuts."""
        end = self.scored + values.shape[1]
        if end > self.scores.shape[1]:
            self.scores = _grown(self.scores, 1, doubled_capacity(end), 0.0)
        self.scores[:, self.scored : end] = values
        self.scored = end

    def _add_scores(self, values: Tensor, first_cut: int) -> None:
        """Append the scores ``values [B, n]`` of the cuts ``first_cut ..`` and count the eligible
        ones (cuts from ``min_chunk`` on), one cut at a time in float64."""
        values = values.to(torch.float64)
        self._store_scores(values)
        if self.config.chunker == "learned":  # its threshold is fixed
            return
        skip = max(self.config.min_chunk - first_cut, 0)
        for i in range(skip, values.shape[1]):
            value = values[:, i]
            self.eligible += 1
            self.total += value
            self.squares += value * value

    def _threshold(self) -> Tensor | float:
        if self.config.chunker == "learned":
            return self.config.predictor_threshold
        if self.eligible == 0:
            return math.inf
        mean = self.total / self.eligible
        var = (self.squares / self.eligible - mean * mean).clamp(min=0.0)
        return mean + self.config.boundary_z * var.sqrt()

    def _decide(self, cut: int) -> None:
        """Close each row's tail at ``cut`` when the chunker says so: device operations only."""
        config = self.config
        since = cut - self.last
        if config.chunker == "fixed":
            close = since >= config.chunk_size
        else:
            close = since >= config.max_chunk
            min_chunk = config.min_chunk
            if cut >= min_chunk:
                radius = min_chunk - 1
                score = self.scores[:, cut - 1]
                lo = max(cut - radius, min_chunk)
                peak = score >= self.scores[:, lo - 1 : cut + radius].amax(dim=1)
                peak &= score > self._threshold()
                close |= (since >= min_chunk) & peak
        if self.most + 1 > self.bounds.shape[1]:
            self.bounds = _grown(self.bounds, 1, doubled_capacity(self.most + 1), 0)
        # A row that does not close writes past its boundaries, where nothing reads.
        self.bounds.scatter_(1, self.count[:, None], torch.full_like(self.last[:, None], cut))
        self.count += close
        self.last = torch.where(close, cut, self.last)
        # A row closes again at least `shortest_new` cuts after it closed.
        self.most = self.first_most + (cut - self.first_decided) // self.shortest_new + 1

    @property
    def shortest_new(self) -> int:
        """The fewest keys of a chunk that :meth:`advance` closes."""
        if self.config.chunker == "fixed":
            return self.config.chunk_size
        return min(self.config.min_chunk, self.config.max_chunk)

    def boundaries(self, device: torch.device | str = "cpu") -> Tensor:
        """Int64 ``[B, N + 1]``: the closed boundaries and the current length (padded with it)."""
        rows = [
            torch.tensor(row + [self.length], dtype=torch.int64, device=device)
            for row in self.closed
        ]
        return pad_boundaries(rows, self.length)
