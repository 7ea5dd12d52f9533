"""The one span layout every selection method emits and every backend consumes.

For each row ``(batch, kv_head, query_block)`` the layout holds a sorted list of disjoint key spans
``[start, end)`` in CSR form: row ``r`` owns spans ``offsets[r]:offsets[r + 1]``. Rows are ordered
``b * kv_heads * num_q_blocks + h * num_q_blocks + qb``.

Queries are the last ``q_len`` positions of a ``k_len``-long sequence: query ``i`` sits at key
position ``q_offset + i`` with ``q_offset = k_len - q_len``, and query block ``qb`` holds queries
``[qb * query_block, min((qb + 1) * query_block, q_len))``. A query attends key ``j`` when ``j``
lies
in one of its block's spans, ``j <= position`` (causal) and, with a sliding window ``W``,
``position - j < W``. A query with no such key outputs zeros.

``span_bias`` (optional, float32 ``[nnz]``) is added to the logits of every key of a span.

The sizes and rules above (batch, KV heads, query and key lengths, query block, sliding window)
are the layout's :class:`Geometry`: a selector computes it once (:meth:`Geometry.of`) and every
constructor takes it whole.

A decode step (one query, the newest key) selects :class:`DecodeSpans` instead: a fixed number of
padded spans per ``(batch, kv_head)``, the form the decode attention reads without compacting;
:meth:`Layout.from_decode_spans` gives their layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .intmath import ceil_div


def query_block_bounds(q_len: int, k_len: int, query_block: int, device: torch.device | str):
    """Absolute key positions ``[starts, ends)`` of the query blocks, int64 ``[num_q_blocks]``."""
    num_blocks = ceil_div(q_len, query_block)
    q_offset = k_len - q_len
    starts = q_offset + torch.arange(num_blocks, device=device, dtype=torch.int64) * query_block
    ends = torch.clamp(starts + query_block, max=k_len)
    return starts, ends


@dataclass(frozen=True)
class Geometry:
    """What the rows of a layout are (see the module docstring): ``batch * kv_heads`` sequences
    of ``num_q_blocks`` blocks of ``query_block`` queries, the last ``q_len`` of ``k_len`` key
    positions, each seeing at most ``sliding_window`` keys back (None: no window)."""

    batch: int
    kv_heads: int
    q_len: int
    k_len: int
    query_block: int
    sliding_window: int | None = None

    @classmethod
    def of(
        cls, q: Tensor, k: Tensor, query_block: int, sliding_window: int | None = None
    ) -> Geometry:
        """The geometry of queries ``q [B, Hq, Lq, D]`` over keys ``k [B, Hkv, Lk, D]``."""
        batch, kv_heads, k_len = k.shape[:3]
        return cls(batch, kv_heads, q.shape[2], k_len, query_block, sliding_window)

    @property
    def num_q_blocks(self) -> int:
        return ceil_div(self.q_len, self.query_block)

    @property
    def num_rows(self) -> int:
        return self.batch * self.kv_heads * self.num_q_blocks

    @property
    def q_offset(self) -> int:
        return self.k_len - self.q_len

    def block_bounds(self, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """:func:`query_block_bounds` of this geometry's query blocks."""
        return query_block_bounds(self.q_len, self.k_len, self.query_block, device)


class DecodeSpans(NamedTuple):
    """The keys one decode query attends, per ``(batch, kv_head)``: the selection of a step of
    :class:`dhsa.decode.DecodeSession` and the input of :func:`dhsa.kernels.attend_decode`.

    ``starts, ends`` are int32 ``[B, Hkv, S]``: row ``(b, h)`` attends the keys ``[start, end)``
    of its spans. The query is the newest key, at position ``k_len - 1``: every span lies in
    ``[0, k_len)``, the keys up to the query's own. A span with ``end <= start`` is empty
    (padding, ``(0, 0)``); the others are sorted and disjoint, though neighbours may touch. ``S``
    is fixed by the host (it never depends on the data), so nothing waits for the device to read
    them.

    As a tuple the spans unpack as ``starts, ends``. Their layout,
    ``Layout.from_decode_spans(*spans, k_len)``, has ``q_len = query_block = 1``, one row per
    ``(b, h)`` in that order, and keeps each row's non-empty spans with touching ones merged.
    """

    starts: Tensor
    ends: Tensor


@dataclass(frozen=True)
class Layout:
    """Key spans per ``(batch, kv_head, query_block)``; see the module docstring.

    Fields: ``offsets`` int64 ``[rows + 1]``, ``starts`` / ``ends`` int32 ``[nnz]`` (key positions,
    ``end`` exclusive), the :class:`Geometry` and ``span_bias`` float32 ``[nnz]`` or None. The
    geometry's sizes read as the layout's own attributes too (``layout.batch``,
    ``layout.num_rows``, ...).
    """

    offsets: Tensor
    starts: Tensor
    ends: Tensor
    geometry: Geometry
    span_bias: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.starts.device

    @property
    def nnz(self) -> int:
        return int(self.starts.numel())

    def row_ids(self) -> Tensor:
        """The row of every span, int64 ``[nnz]``."""
        counts = self.offsets[1:] - self.offsets[:-1]
        rows = torch.arange(self.num_rows, device=self.device)
        return torch.repeat_interleave(rows, counts, output_size=self.nnz)

    def spans(self, b: int, h: int, qb: int) -> list[tuple[int, int]]:
        """The spans of one row as Python tuples (for tests and inspection)."""
        r = (b * self.kv_heads + h) * self.num_q_blocks + qb
        lo, hi = int(self.offsets[r]), int(self.offsets[r + 1])
        return list(zip(self.starts[lo:hi].tolist(), self.ends[lo:hi].tolist(), strict=False))

    def validate(self) -> None:
        """Raise ValueError unless the CSR arrays are consistent, in range, sorted and disjoint."""
        if self.offsets.numel() != self.num_rows + 1:
            raise ValueError(
                f"layout offsets has {self.offsets.numel()} entries, expected rows + 1 = "
                f"{self.num_rows + 1}"
            )
        if int(self.offsets[0]) != 0 or int(self.offsets[-1]) != self.nnz:
            raise ValueError("layout offsets must start at 0 and end at nnz")
        if bool((self.offsets[1:] < self.offsets[:-1]).any()):
            raise ValueError("layout offsets must be non-decreasing")
        if self.ends.numel() != self.nnz:
            raise ValueError("layout starts and ends differ in length")
        if self.span_bias is not None and self.span_bias.numel() != self.nnz:
            raise ValueError("layout span_bias must have one value per span")
        if self.nnz == 0:
            return
        if bool((self.starts < 0).any()) or bool((self.ends > self.k_len).any()):
            raise ValueError(f"layout spans must lie in [0, k_len={self.k_len})")
        if bool((self.ends <= self.starts).any()):
            raise ValueError("layout spans must be non-empty (end > start)")
        rows = self.row_ids()
        same_row = rows[1:] == rows[:-1]
        if bool((same_row & (self.starts[1:] < self.ends[:-1])).any()):
            raise ValueError("layout spans of a row must be sorted and disjoint")

    def key_membership(self) -> Tensor:
        """Bool ``[rows, k_len]``: which keys each row's spans cover (ignores causality)."""
        delta = torch.zeros(self.num_rows, self.k_len + 1, dtype=torch.int32, device=self.device)
        rows = self.row_ids()
        ones = torch.ones(self.nnz, dtype=torch.int32, device=self.device)
        delta.index_put_((rows, self.starts.long()), ones, accumulate=True)
        delta.index_put_((rows, self.ends.long()), -ones, accumulate=True)
        return delta.cumsum(dim=1)[:, : self.k_len] > 0

    def key_bias(self) -> Tensor:
        """Float32 ``[rows, k_len]``: the additive logit bias of each key (0 outside spans)."""
        out = torch.zeros(self.num_rows, self.k_len + 1, dtype=torch.float32, device=self.device)
        if self.span_bias is None:
            return out[:, : self.k_len]
        rows = self.row_ids()
        bias = self.span_bias.float()
        out.index_put_((rows, self.starts.long()), bias, accumulate=True)
        out.index_put_((rows, self.ends.long()), -bias, accumulate=True)
        return out.cumsum(dim=1)[:, : self.k_len]

    def token_rule(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Causal (and sliding-window) rule for broadcastable absolute positions."""
        allowed = k_pos <= q_pos
        if self.sliding_window is not None:
            allowed = allowed & (q_pos - k_pos < self.sliding_window)
        return allowed

    def to_dense_mask(self) -> Tensor:
        """Bool ``[B, Hkv, q_len, k_len]``: exactly which keys each query attends (small sizes)."""
        member = self.key_membership()
        nqb, bq = self.num_q_blocks, self.query_block
        q_pos = self.q_offset + torch.arange(nqb * bq, device=self.device)
        k_pos = torch.arange(self.k_len, device=self.device)
        rule = self.token_rule(q_pos[:, None], k_pos[None, :])
        mask = member.view(self.batch, self.kv_heads, nqb, 1, self.k_len) & rule.view(
            1, 1, nqb, bq, self.k_len
        )
        return mask.reshape(self.batch, self.kv_heads, nqb * bq, self.k_len)[:, :, : self.q_len]

    def num_selected(self) -> Tensor:
        """Int64 ``[B, Hkv, q_len]``: how many keys each query attends."""
        nqb, bq = self.num_q_blocks, self.query_block
        rows = self.row_ids()
        block_start = self.q_offset + (rows % nqb) * bq
        q_pos = block_start[:, None] + torch.arange(bq, device=self.device)[None, :]
        lo = self.starts.long()[:, None].expand(-1, bq)
        if self.sliding_window is not None:
            lo = torch.maximum(lo, q_pos - self.sliding_window + 1)
        hi = torch.minimum(self.ends.long()[:, None], q_pos + 1)
        per_span = torch.clamp(hi - lo, min=0)
        counts = torch.zeros(self.num_rows, bq, dtype=torch.int64, device=self.device)
        counts.index_add_(0, rows, per_span)
        counts = counts.view(self.batch, self.kv_heads, nqb * bq)
        return counts[:, :, : self.q_len]

    def causal_counts(self) -> Tensor:
        """Int64 ``[q_len]``: keys each query could attend with dense causal attention."""
        q_pos = self.q_offset + torch.arange(self.q_len, device=self.device)
        counts = q_pos + 1
        if self.sliding_window is not None:
            counts = torch.clamp(counts, max=self.sliding_window)
        return counts

    def density(self) -> float:
        """Fraction of the causal (windowed) query-key region the layout keeps."""
        kept = self.num_selected().sum().item()
        total = self.causal_counts().sum().item() * self.batch * self.kv_heads
        return kept / total

    def stats(self) -> dict:
        """Summary numbers for logs and benchmark records."""
        selected = self.num_selected().float()
        return {
            "density": self.density(),
            "mean_keys_per_query": selected.mean().item(),
            "max_keys_per_query": selected.max().item(),
            "spans": self.nnz,
            "spans_per_row": self.nnz / max(self.num_rows, 1),
        }

    @classmethod
    def from_decode_spans(cls, starts: Tensor, ends: Tensor, k_len: int) -> Layout:
        """The layout of one query per ``(batch, kv_head)`` keeping the padded spans ``starts,
        ends [B, Hkv, S]`` (empty where ``end <= start``): the fields of :class:`DecodeSpans`, as
        a decode step selects them. Touching spans of a row merge into one."""
        batch, kv_heads, width = starts.shape
        return cls.from_padded(
            starts.reshape(-1, width),
            ends.reshape(-1, width),
            Geometry(batch, kv_heads, q_len=1, k_len=k_len, query_block=1),
        )

    @classmethod
    def from_padded(
        cls, starts: Tensor, ends: Tensor, geometry: Geometry, *, bias: Tensor | None = None
    ) -> Layout:
        """Build a layout from padded candidate spans ``[rows, M]`` (see :func:`merge_padded`)."""
        counts, new_starts, new_ends, span_bias = merge_padded(starts, ends, geometry.k_len, bias)
        return cls.from_counts(counts, new_starts, new_ends, geometry, bias=span_bias)

    @classmethod
    def from_counts(
        cls,
        counts: Tensor,
        starts: Tensor,
        ends: Tensor,
        geometry: Geometry,
        *,
        bias: Tensor | None = None,
    ) -> Layout:
        """Build a layout from spans already in row-major order, ``counts [rows]`` per row."""
        num_rows = geometry.num_rows
        if counts.numel() != num_rows:
            raise ValueError(f"counts has {counts.numel()} rows, the geometry {num_rows}")
        offsets = torch.zeros(num_rows + 1, dtype=torch.int64, device=starts.device)
        torch.cumsum(counts, 0, out=offsets[1:])
        return cls(
            offsets=offsets,
            starts=starts.to(torch.int32),
            ends=ends.to(torch.int32),
            geometry=geometry,
            span_bias=None if bias is None else bias.float(),
        )

    @classmethod
    def from_key_mask(cls, mask: Tensor, geometry: Geometry) -> Layout:
        """Build a layout from bool ``[rows, k_len]``: each run of kept keys becomes a span."""
        edges = torch.nn.functional.pad(mask.to(torch.int8), (1, 1))
        step = edges[:, 1:] - edges[:, :-1]
        rows, starts = (step == 1).nonzero(as_tuple=True)
        ends = (step == -1).nonzero(as_tuple=True)[1]
        return cls.from_row_spans(rows, starts, ends, geometry)

    @classmethod
    def from_row_spans(
        cls,
        rows: Tensor,
        starts: Tensor,
        ends: Tensor,
        geometry: Geometry,
        *,
        bias: Tensor | None = None,
    ) -> Layout:
        """Build a layout from spans tagged with their row, in any row order.

        Spans of one row must already be sorted and disjoint; they keep their relative order.
        """
        device = starts.device
        num_rows = geometry.num_rows
        rows = rows.long()
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= num_rows):
            raise ValueError(f"span rows must lie in [0, {num_rows})")
        order = torch.sort(rows, stable=True).indices
        counts = torch.bincount(rows, minlength=num_rows)
        offsets = torch.zeros(num_rows + 1, dtype=torch.int64, device=device)
        offsets[1:] = counts.cumsum(0)
        return cls(
            offsets=offsets,
            starts=starts[order].to(torch.int32),
            ends=ends[order].to(torch.int32),
            geometry=geometry,
            span_bias=None if bias is None else bias[order].float(),
        )


def _geometry_reader(name: str) -> property:
    return property(lambda layout: getattr(layout.geometry, name), doc=f"``geometry.{name}``")


# The geometry's sizes and rules read as the layout's own attributes, as they did before the
# geometry was a value of its own.
for _name in (
    "batch",
    "kv_heads",
    "q_len",
    "k_len",
    "query_block",
    "sliding_window",
    "num_q_blocks",
    "num_rows",
    "q_offset",
):
    setattr(Layout, _name, _geometry_reader(_name))
del _name


def _sorted_spans(starts: Tensor, ends: Tensor, k_len: int) -> tuple[Tensor, Tensor, Tensor]:
    """Spans ``[rows, M]`` clipped to ``[0, k_len)`` and sorted by start within each row, empty
    ones last as ``(k_len + 1, k_len + 1)``; with the sorting permutation."""
    starts = starts.long().clamp(0, k_len)
    ends = ends.long().clamp(0, k_len)
    valid = ends > starts
    sentinel = k_len + 1
    s_sorted, order = torch.sort(torch.where(valid, starts, sentinel), dim=1, stable=True)
    return s_sorted, torch.where(valid, ends, sentinel).gather(1, order), order


def merge_padded_rows(starts: Tensor, ends: Tensor, k_len: int) -> tuple[Tensor, Tensor]:
    """Merge the padded candidate spans ``[rows, M]`` of each row in place of a compaction.

    Spans (empty where ``end <= start``) are clipped to ``[0, k_len)``, sorted, and overlapping or
    touching ones merged. Returns int64 ``(starts, ends) [rows, M]``: each row's merged spans
    first, in order, then padding ``(k_len + 1, k_len + 1)``. Shapes never depend on the data, so
    nothing waits for the device.
    """
    rows, width = starts.shape
    device = starts.device
    sentinel = k_len + 1
    s_sorted, e_sorted, _ = _sorted_spans(starts, ends, k_len)
    valid_sorted = s_sorted < sentinel
    run_end = e_sorted.cummax(dim=1).values
    before = torch.full((rows, 1), -1, dtype=torch.int64, device=device)
    prev_end = torch.cat([before, run_end[:, :-1]], dim=1)
    first = valid_sorted & (s_sorted > prev_end)
    closes = torch.ones((rows, 1), dtype=torch.bool, device=device)
    next_first = torch.cat([first[:, 1:] | ~valid_sorted[:, 1:], closes], dim=1)
    last = valid_sorted & next_first
    # The k-th first span of a merged run pairs with the k-th last: scatter both to slot k; the
    # spans that are neither go to a spare column, dropped afterwards.
    out_starts = torch.full((rows, width + 1), sentinel, dtype=torch.int64, device=device)
    out_ends = torch.full_like(out_starts, sentinel)
    out_starts.scatter_(1, torch.where(first, first.cumsum(1) - 1, width), s_sorted)
    out_ends.scatter_(1, torch.where(last, last.cumsum(1) - 1, width), run_end)
    return out_starts[:, :width], out_ends[:, :width]


def merge_padded(
    starts: Tensor, ends: Tensor, k_len: int, bias: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Compact padded candidate spans ``[rows, M]`` (empty where ``end <= start``).

    Spans are clipped to ``[0, k_len)`` and sorted; overlapping or touching spans of a row are
    merged (:func:`merge_padded_rows`). With ``bias`` (float ``[rows, M]``) spans are kept as given
    (no merging): they must not overlap. Returns ``(counts [rows], starts [n], ends [n], bias [n]
    or None)`` in row-major order.
    """
    if bias is None:
        merged_starts, merged_ends = merge_padded_rows(starts, ends, k_len)
        keep = merged_ends > merged_starts
        return keep.sum(dim=1), merged_starts[keep], merged_ends[keep], None
    s_sorted, e_sorted, order = _sorted_spans(starts, ends, k_len)
    valid_sorted = s_sorted <= k_len
    span_bias = bias.float().gather(1, order)[valid_sorted]
    return valid_sorted.sum(dim=1), s_sorted[valid_sorted], e_sorted[valid_sorted], span_bias
