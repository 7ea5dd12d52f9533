"""Sparse decode (METHOD.md section 2): selection state extended one token at a time.

During generation each new query is a single token. Instead of re-chunking and re-scoring all
``L`` keys per token, a :class:`DecodeSession` keeps, per layer, the chunk boundaries found so far
and the representation of every closed chunk; the newest chunk (the open *tail*) grows with each
token and closes when the chunker decides. A decode step then costs ``O(Nc)`` to score the chunks
plus ``O(budget)`` to attend, independent of ``L``.

The boundaries come from the incremental chunker (:class:`dhsa.chunking.BoundaryTracker`): the
prompt's by the full-sequence chunker when a state starts, then extended with each token.

The state of a step lives on the keys' device: boundary scores, decisions, chunk sums and counts
are tensors, and what the host knows (the length, the cuts decided, bounds on the chunk count and
lengths) follows from the length alone. A step is then a fixed sequence of device operations
whatever the context length, with no device-to-host synchronization on a static cache (the chunk
count grows its buffers now and then, decided on the host).
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from .chunking import BoundaryTracker, pad_boundaries
from .config import DHSAConfig
from .fill import FillRegions, chunks_taken_bound, greedy_fill, triton_fill_usable
from .intmath import doubled_capacity
from .layout import DecodeSpans, Layout
from .methods.regions import last_query_regions
from .methods.scoring import (
    chunk_representations,
    head_block_means,
    normalize,
    peak_scores,
    probe_token_scores,
    query_block_representations,
)


def _table_norm(norm: str) -> str:
    """The normalization a chunk table stores: ``peak`` scoring reads plain means."""
    return "mean" if norm == "peak" else norm


# The tail slot's end in a chunk table: past any key, so the local window's start always clips it.
_PAST_ANY_KEY = 1 << 62


class ChunkSums:
    """One layer's chunk table following a :class:`BoundaryTracker`, kept on the keys' device.

    ``table [B, Hkv, cap + 1, D]`` (float32) holds the normalized representation (``norm`` as in
    :mod:`dhsa.methods.scoring`) of every closed chunk of each row in slots ``0..count[b] - 1`` and
    zeros after them; its last slot holds the float32 key *sum* of the row's open tail. ``lo, hi
    [B, cap + 1]`` (int64) give each slot's keys: ``lo = hi = 0`` for unused slots, and the tail
    slot runs from the tail's start to a sentinel past any key. ``count [B]`` (int64) is on the
    device too: a step absorbs its key and closes chunks with device operations only.

    Host bounds keep the step's shapes fixed without reading the device: ``shortest`` and
    ``longest`` bound the closed chunks' lengths, ``tail_shortest`` and ``tail_longest`` the open
    tails'. ``storage`` and ``last_key`` recognize keys this state absorbed: the same cache tensor
    (a static cache, checked on the host), or a new tensor whose key ``length - 1`` equals the
    newest absorbed one (a dynamic cache; one synchronization), so a cache that was reordered or
    replaced is noticed instead of silently mis-scored.

    ``norm="peak"`` (the ``peak`` scoring) stores plain means and scores through
    :meth:`peak_scores`; its ``prior [B, Hkv, cap + 1]`` (:meth:`set_prior`, or None) holds each
    slot's best per-token log mass under the prompt's last queries.
    """

    def __init__(
        self,
        table: Tensor,
        lo: Tensor,
        hi: Tensor,
        count: Tensor,
        tracker: BoundaryTracker,
        k: Tensor,
        norm: str,
        shortest: int,
        longest: int,
        tail_shortest: int,
    ) -> None:
        self.table = table
        self.lo = lo
        self.hi = hi
        self.count = count
        self.tracker = tracker
        self.decided = tracker.decided
        self.length = k.shape[2]
        self.norm = norm
        self.shortest = shortest
        self.longest = longest
        self.tail_shortest = tail_shortest
        self.prior: Tensor | None = None
        self._remember(k)

    @property
    def tail_longest(self) -> int:
        """The most keys an open tail holds: a chunk closes at most ``longest`` keys after its
        start, decided ``delay`` tokens later."""
        return self.longest + self.tracker.delay

    @classmethod
    def build(cls, k: Tensor, tracker: BoundaryTracker, norm: str) -> ChunkSums:
        """The chunk table of ``k [B, Hkv, L, D]`` at the tracker's boundaries."""
        length = k.shape[2]
        rows = tracker.closed
        bounds = pad_boundaries(
            [torch.tensor(row + [length], device=k.device) for row in rows], length
        )
        reps = chunk_representations(k, bounds, _table_norm(norm))
        closed = [len(row) - 1 for row in rows]
        cap = max(closed) + 1
        table = torch.zeros(*reps.shape[:2], cap + 1, reps.shape[3], device=k.device)
        lo = torch.zeros(k.shape[0], cap + 1, dtype=torch.int64, device=k.device)
        hi = torch.zeros_like(lo)
        for b, (n, row) in enumerate(zip(closed, rows, strict=True)):
            table[b, :, :n] = reps[b, :, :n]
            table[b, :, -1] = k[b, :, row[-1] :].float().sum(dim=1)
            lo[b, :n] = bounds[b, :n]
            hi[b, :n] = bounds[b, 1 : n + 1]
            lo[b, -1] = row[-1]
        hi[:, -1] = _PAST_ANY_KEY
        lengths = [row[i + 1] - row[i] for row in rows for i in range(len(row) - 1)]
        tails = [length - row[-1] for row in rows]
        # Chunks the tracker closes from now on: at least `shortest_new` keys, at most
        # `max_chunk` (or the longest tail now, which may close at once) or `chunk_size`.
        config = tracker.config
        newest = config.chunk_size if config.chunker == "fixed" else config.max_chunk
        shortest = min(lengths + [tracker.shortest_new])
        longest = max(lengths + tails + [newest])
        tail_shortest = max(min(tails + [tracker.delay]), 1)
        count = torch.tensor(closed, dtype=torch.int64, device=k.device)
        return cls(table, lo, hi, count, tracker, k, norm, shortest, longest, tail_shortest)

    def _remember(self, k: Tensor) -> None:
        # A weak reference: a storage freed (a dynamic cache's last tensor) is never taken for a
        # new one that reuses its memory.
        self.storage = (weakref.ref(k.untyped_storage()), k.storage_offset(), k.stride())
        self.last_key = k[:, :, -1].clone()

    def _same_cache(self, k: Tensor) -> bool:
        storage, offset, stride = self.storage
        return (
            storage() is k.untyped_storage()
            and k.storage_offset() == offset
            and k.stride() == stride
        )

    def follows(self, k: Tensor, tracker: BoundaryTracker | None) -> bool:
        """True when ``k [B, Hkv, L', D]`` extends the keys this state absorbed, at the
        boundaries of ``tracker``: a static cache is recognized on the host, a dynamic one by
        its key ``length - 1`` (one synchronization)."""
        if tracker is not self.tracker or k.shape[0] != self.table.shape[0]:
            return False
        if self.length >= k.shape[2]:
            return False
        return self._same_cache(k) or torch.equal(k[:, :, self.length - 1], self.last_key)

    def advance(self, k: Tensor) -> None:
        """Absorb the new keys of ``k`` and close the chunks the tracker closed since: a fixed
        number of device operations per decided cut, no synchronization."""
        self.table[:, :, -1] += k[:, :, self.length :].float().sum(dim=2)
        self.length = k.shape[2]
        for cut in range(self.decided + 1, self.tracker.decided + 1):
            self._close_at(cut, k)
        self.decided = self.tracker.decided
        self._remember(k)

    def _close_at(self, cut: int, k: Tensor) -> None:
        """In the rows whose tracker closed a chunk at ``cut``: store the chunk (the tail's keys
        before ``cut``) in the next slot and start the tail at ``cut``. The tail's keys after the
        cut are summed afresh; the chunk's sum is the tail's sum less theirs."""
        tracker = self.tracker
        if tracker.most > self.table.shape[2] - 1:
            self._grow(doubled_capacity(tracker.most))
        index = self.count
        following = (index + 1).clamp(max=tracker.bounds.shape[1] - 1)
        close = (index < tracker.count - 1) & (
            tracker.bounds.gather(1, following[:, None])[:, 0] == cut
        )
        tail = k[:, :, cut:].float().sum(dim=2)
        keys = cut - self.lo[:, -1]
        reps = normalize(self.table[:, :, -1] - tail, keys[:, None, None], _table_norm(self.norm))
        # A row that does not close writes what the slot holds: zeros, and lo = hi = 0.
        slot = index[:, None, None, None].expand(-1, self.table.shape[1], 1, self.table.shape[3])
        self.table.scatter_(2, slot, torch.where(close[:, None, None], reps, 0.0)[:, :, None])
        self.lo.scatter_(1, index[:, None], torch.where(close, self.lo[:, -1], 0)[:, None])
        self.hi.scatter_(1, index[:, None], torch.where(close, cut, 0)[:, None])
        if self.prior is not None:  # the closing chunk's keys were the tail's
            tail_prior = torch.where(close[:, None], self.prior[:, :, -1], -torch.inf)
            self.prior.scatter_(2, slot[..., 0], tail_prior[:, :, None])
        self.table[:, :, -1] = torch.where(close[:, None, None], tail, self.table[:, :, -1])
        self.lo[:, -1] = torch.where(close, cut, self.lo[:, -1])
        self.count += close

    def _grow(self, cap: int) -> None:
        old = self.table.shape[2] - 1
        table = self.table.new_zeros(*self.table.shape[:2], cap + 1, self.table.shape[3])
        table[:, :, :old] = self.table[:, :, :old]
        table[:, :, -1] = self.table[:, :, -1]
        lo, hi = (x.new_zeros(x.shape[0], cap + 1) for x in (self.lo, self.hi))
        for new, current in ((lo, self.lo), (hi, self.hi)):
            new[:, :old] = current[:, :old]
            new[:, -1] = current[:, -1]
        self.table, self.lo, self.hi = table, lo, hi
        if self.prior is not None:
            prior = self.prior.new_full((*self.prior.shape[:2], cap + 1), -torch.inf)
            prior[:, :, :old] = self.prior[:, :, :old]
            prior[:, :, -1] = self.prior[:, :, -1]
            self.prior = prior

    def fill(
        self,
        q: Tensor,
        config: DHSAConfig,
        use_triton: bool | None = None,
        *,
        k: Tensor | None = None,
        scale: float | None = None,
    ) -> DecodeSpans:
        """The :class:`~dhsa.layout.DecodeSpans` (int32 ``[B, Hkv, S]``) that the newest query
        ``q [B, Hq, 1, D]`` attends: the prefill's fill (:func:`dhsa.fill.greedy_fill`) for one
        query block of one token, over this table's :meth:`slot_scores`. Each row holds the sink,
        the chosen chunks (the open tail among them) in position order, the local window with the
        query, then empty ``(0, 0)`` spans: disjoint and at most ``budget`` keys.

        No device-to-host synchronization: the regions are host integers of the length, and the
        most chunks the fill can touch follows from the shortest closed chunk, also on the host.
        Scores are not checked for NaN here (a prefill over the same keys was). ``use_triton``
        (default: on CUDA when Triton is there and the table fits the fill's registers) scores
        with :mod:`dhsa.kernels.triton_decode_scores` and fills with the Triton fill: two
        launches.
        """
        regions = last_query_regions(self.length, config.sink, config.local)
        regions = regions.fill_regions(config.budget)
        slots = self.table.shape[2]
        top = min(slots, chunks_taken_bound(regions.remaining, self.shortest))
        if use_triton is None:
            use_triton = triton_fill_usable(self.table.device, slots)
        if use_triton and self.norm != "peak":
            from .kernels.triton_decode_scores import chunk_scores_triton

            scores = chunk_scores_triton(q, self.table, self.lo, length=self.length, norm=self.norm)
        else:
            scores = self.slot_scores(q, regions, k=k, scale=scale)
        starts, ends, _ = greedy_fill(
            scores[:, :, None], self.lo, self.hi, regions, width=top + 2, use_triton=use_triton
        )
        return DecodeSpans(starts[:, :, 0], ends[:, :, 0])

    def set_prior(self, probe: Tensor, k: Tensor, scale: float) -> None:
        """Score every slot by the exact attention of the prompt's last queries ``probe
        [B, Hq, P, D]`` over the absorbed keys ``k`` (:func:`probe_token_scores`, the best key of
        the slot); the ``peak`` scoring then makes the best of them candidates of each step.
        Chunks that close later keep the score their keys had in the tail."""
        best = probe_token_scores(probe, k[:, :, : self.length], scale=scale)  # [B, Hkv, L]
        slots = self.table.shape[2]
        prior = torch.full((*best.shape[:2], slots), -torch.inf, device=best.device)
        positions = torch.arange(self.length, device=best.device)
        for b, closed in enumerate(self.count.tolist()):
            slot = torch.searchsorted(self.hi[b, :closed].contiguous(), positions, right=True)
            slot = torch.where(slot < closed, slot, slots - 1)
            prior[b].scatter_reduce_(-1, slot.expand(best.shape[1], -1), best[b], reduce="amax")
        self.prior = prior

    def slot_scores(
        self,
        q: Tensor,
        regions: FillRegions,
        *,
        k: Tensor | None = None,
        scale: float | None = None,
    ) -> Tensor:
        """Float32 ``[B, Hkv, cap + 1]``: the scores the fill ranks the slots by, the
        :meth:`peak_scores` (which read the keys ``k``) or the table's :meth:`chunk_scores`."""
        if self.norm != "peak":
            return self.chunk_scores(q)
        if k is None:
            raise ValueError("the peak decode scoring needs the keys k")
        return self.peak_scores(q, k, regions, q.shape[-1] ** -0.5 if scale is None else scale)

    def peak_scores(self, q: Tensor, k: Tensor, regions: FillRegions, scale: float) -> Tensor:
        """Float32 ``[B, Hkv, cap + 1]``: the ``peak`` scores (:func:`peak_scores`) of the
        table's slots for the newest query ``q [B, Hq, 1, D]`` with every head on its own,
        rescoring the best candidates by their best key in ``k [B, Hkv, L, D]``."""
        kv_heads = self.table.shape[1]
        means = self.table.clone()
        means[:, :, -1] /= self._tail_count()[:, None, None].float()
        device = self.table.device

        def at(value: int) -> Tensor:
            return torch.full((1,), value, dtype=torch.int64, device=device)

        scores = peak_scores(
            head_block_means(q, kv_heads, 1),
            k,
            means,
            self.lo,
            self.hi.clamp(max=self.length),
            at(0),
            at(self.length),
            at(regions.candidate_start),
            at(regions.candidate_end),
            scale=scale,
            room=max(regions.remaining, 1),
            shortest=min(self.shortest, self.tail_shortest),
            longest=self.tail_longest,
            prior=None if self.prior is None else self.prior[:, :, None],
        )
        return scores[:, :, 0]

    def chunk_scores(self, q: Tensor) -> Tensor:
        """Float32 ``[B, Hkv, cap + 1]``: each slot of the table scored by the newest query
        ``q [B, Hq, 1, D]`` (the query heads of a group averaged), the tail slot's key sum
        normalized by the tail's length like a closed chunk. On CUDA :meth:`fill` computes the
        same in one launch (:func:`dhsa.kernels.triton_decode_scores.chunk_scores_triton`)."""
        query = query_block_representations(q, self.table.shape[1], 1, self.norm)
        scores = (self.table @ query.transpose(-1, -2)).squeeze(-1)
        tail_count = self._tail_count().float()
        scores[:, :, -1] /= (tail_count.sqrt() if self.norm == "sqrt" else tail_count)[:, None]
        return scores

    def _tail_count(self) -> Tensor:
        """Int64 ``[B]``: the keys in each row's open tail (at least 1)."""
        return (self.length - self.lo[:, -1]).clamp(min=1)


class DecodeSession:
    """Decode selection state of one model, for single-token queries.

    State is keyed by ``(layer, row)``: ``row`` is None for a whole unpadded batch, or a batch index
    when rows are decoded one by one (padded batches). With ``shared`` boundaries one tracker per
    ``row`` serves every layer (driven by the first layer to decode each token); otherwise each
    layer tracks its own.
    """

    def __init__(self) -> None:
        self._chunks: dict[tuple, ChunkSums] = {}
        self._trackers: dict[tuple, BoundaryTracker] = {}
        self._probes: dict[tuple, Tensor] = {}

    def remember_probe(self, layer: int, row: int | None, q: Tensor) -> None:
        """Keep the prompt's last queries ``q [B, Hq, P, D]`` of ``layer``: the ``peak`` decode
        scoring makes the chunks they attend most candidates of every step (the answer to a
        question at the prompt's end lies where the question looked)."""
        self._probes[(layer, row)] = q.detach().clone()

    def forget(self, layer: int, row: int | None = None) -> None:
        """Drop ``layer``'s state (its keys are being replaced, e.g. by a new prompt); the
        prompt queries kept for ``row`` (:meth:`remember_probe`) go too, other rows' stay."""
        for key in [key for key in self._chunks if key[0] == layer]:
            del self._chunks[key]
        self._probes.pop((layer, row), None)
        for key in [key for key, t in self._trackers.items() if t.owner == layer]:
            del self._trackers[key]

    def clear(self) -> None:
        self._chunks.clear()
        self._trackers.clear()
        self._probes.clear()

    def boundaries(self, layer: int, row: int | None = None, shared: bool = True) -> Tensor:
        """The boundaries (closed ones and the current length) the last step of ``layer`` used."""
        return self._trackers[self._tracker_key(layer, row, shared)].boundaries()

    def chunks(self, layer: int, row: int | None = None) -> ChunkSums:
        """The chunk table the last step of ``layer`` used (KeyError before any step)."""
        return self._chunks[(layer, row)]

    def fused_step(
        self,
        k_cache: Tensor,
        v_cache: Tensor,
        config: DHSAConfig,
        *,
        layer: int,
        row: int | None = None,
        scale: float | None = None,
        softcap: float | None = None,
    ):
        """A :class:`dhsa.decode_step.DecodeStep` continuing ``layer``'s state over the static
        cache ``k_cache, v_cache [B, Hkv, L_max, D]`` (whose first keys the last step of
        :meth:`select_spans` read): on CUDA with the ``similarity`` or ``fixed`` chunker, the
        fixed launches of one step, capturable in a CUDA graph. The step keeps its own copy of
        the state; this session's stays where it is."""
        from .decode_step import DecodeStep

        return DecodeStep(
            self.chunks(layer, row), k_cache, v_cache, config, scale=scale, softcap=softcap
        )

    @staticmethod
    def _tracker_key(layer: int, row: int | None, shared: bool) -> tuple:
        return ("shared", row) if shared else (layer, row)

    def select_spans(
        self,
        q: Tensor,
        k: Tensor,
        config: DHSAConfig,
        *,
        layer: int,
        row: int | None = None,
        norm: str | None = None,
        scale: float | None = None,
    ) -> DecodeSpans:
        """The :class:`~dhsa.layout.DecodeSpans` (``starts, ends`` int32 ``[B, Hkv, S]``, what
        :func:`dhsa.kernels.attend_decode` takes) of the newest query ``q [B, Hq, 1, D]`` over
        ``k [B, Hkv, L, D]`` (see :meth:`ChunkSums.fill`): the first ``sink`` keys, the ``local``
        keys before the query and the query itself, then whole chunks (the open tail included) in
        descending ``q . k_c`` score until ``budget`` keys.

        The chunk state lives on the keys' device and a step touches it with device operations
        only: no synchronization with the host when ``k`` is the cache tensor of the previous step
        (a static cache) and the selection runs on CUDA (the Triton scoring and fill); a new
        tensor (a dynamic cache) is checked to continue the absorbed keys with one.
        """
        if q.shape[2] != 1:
            raise ValueError(f"decode selection takes one query token, got {q.shape[2]}")
        if norm is None:
            norm = "peak" if config.scoring == "peak" else "sqrt"
        length = k.shape[2]
        key = (layer, row)
        tracker_key = self._tracker_key(layer, row, config.share_boundaries)
        chunks = self._chunks.get(key)
        tracker = self._trackers.get(tracker_key)
        continues = chunks is not None and chunks.follows(k, tracker)
        stale = (
            tracker is None
            or tracker.length > length
            or tracker.batch != k.shape[0]
            or (not continues and tracker.owner == layer)
        )
        if stale:
            tracker = BoundaryTracker.start(k, config, owner=layer)
            self._trackers[tracker_key] = tracker
        elif tracker.length < length:
            tracker.owner = layer
            tracker.advance(k)
        if continues and chunks.tracker is tracker:
            chunks.advance(k)
        else:
            chunks = ChunkSums.build(k, tracker, norm)
            probe = self._probes.get(key)
            if norm == "peak" and probe is not None and probe.shape[0] == k.shape[0]:
                chunks.set_prior(probe, k, q.shape[-1] ** -0.5 if scale is None else scale)
            self._chunks[key] = chunks
        return chunks.fill(q, config, k=k, scale=scale)

    def select(
        self,
        q: Tensor,
        k: Tensor,
        config: DHSAConfig,
        *,
        layer: int,
        row: int | None = None,
        norm: str | None = None,
    ) -> Layout:
        """The spans of :meth:`select_spans` as a layout (``q_len = 1``, one row per
        ``(batch, kv_head)``)."""
        spans = self.select_spans(q, k, config, layer=layer, row=row, norm=norm)
        return Layout.from_decode_spans(*spans, k.shape[2])
