"""The fused sparse decode step for CUDA: the same few Triton launches at every step.

:class:`DecodeStep` continues a layer's decode state (:class:`dhsa.decode.ChunkSums` and its
:class:`dhsa.chunking.BoundaryTracker`, built at the prompt) over a static KV cache. Everything a
step needs lives in fixed-size device buffers, the context length among them (one int64 per batch
row), so a step has no host synchronization, launches the same kernels whatever the length, and
can be captured once in a CUDA graph and replayed. A step, for the new key written at each row's
length and its query:

1. state update (:func:`dhsa.kernels.triton_decode_step.absorb`): the key joins the open tail,
   the ``similarity`` or ``fixed`` chunker decides the cut ``delay`` keys back, a closing chunk
   takes the next slot; the fill regions follow from the new length;
2. scores: ``peak`` in three launches (stage 1 over the chunk means, the candidate choice, stage 2
   over the candidates' keys: :mod:`dhsa.kernels.triton_decode_step`,
   :mod:`dhsa.methods.triton_peak`), the paper's ``sqrt`` rule in one
   (:mod:`dhsa.kernels.triton_decode_scores`);
3. the budgeted fill (:mod:`dhsa.fill.triton_fill`), one launch;
4. attention over the spans and the merge of its pieces
   (:func:`dhsa.kernels.triton_decode.attend_triton_decode_spans`), two launches.

Seven launches per step with the ``peak`` scoring, five with the paper's. Capacities are fixed
up front from the cache's length: the chunk count grows by at most one per ``shortest_new`` keys.
The ``learned`` chunker keeps the step of :class:`dhsa.decode.DecodeSession`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .chunking import BoundaryTracker
from .config import DHSAConfig
from .decode import ChunkSums
from .fill import FillRegions, chunks_taken_bound
from .intmath import ceil_div
from .methods.regions import last_query_regions
from .methods.scoring import CANDIDATE_FACTOR

# Chunk slots per program of stage 1.
STAGE1_BLOCK = 64

CHUNKERS = ("similarity", "fixed")


def _check_chunker(config: DHSAConfig) -> None:
    if config.chunker not in CHUNKERS:
        raise ValueError(
            f"the fused decode step takes the chunkers {CHUNKERS}, not {config.chunker!r}"
        )


class DecodeStep:
    """One layer's fused decode step over a static cache ``k_cache, v_cache [B, Hkv, L_max, D]``.

    Built from the :class:`~dhsa.decode.ChunkSums` of the keys ``[0, length)`` (its tracker just
    started or advanced to the same length). Each :meth:`step` absorbs the key at every row's
    length (written there by the caller), selects and attends, and advances the length by one;
    all rows share one length. The device state:

    - ``lengths [B]`` int64: keys absorbed;
    - ``table [B, Hkv, S, D]`` float32, ``lo, hi [B, S]`` int64, ``count [B]`` int64, ``prior
      [B, Hkv, S]`` float32 or None: the chunk table as :class:`~dhsa.decode.ChunkSums` keeps it
      (closed chunks in slots ``0..count - 1``, the tail's key sum in slot ``S - 1``);
    - ``bounds [B, S + 1]``, ``tracker_count [B]``, ``last [B]`` int64, ``cut_scores [B, L_max]``,
      ``stats [B, 2]`` (sum and sum of squares), float64, ``eligible [B]`` int64: the tracker;
    - ``starts, ends [B, Hkv, 1, W]`` int32: the last step's spans (the fill's layout).
    """

    def __init__(
        self,
        chunks: ChunkSums,
        k_cache: Tensor,
        v_cache: Tensor,
        config: DHSAConfig,
        *,
        scale: float | None = None,
        softcap: float | None = None,
    ) -> None:
        _check_chunker(config)
        tracker = chunks.tracker
        if tracker.length != chunks.length or tracker.decided != chunks.decided:
            raise ValueError("the chunk table must have absorbed every key its tracker has")
        batch, kv_heads, max_length, dim = k_cache.shape
        length = chunks.length
        if v_cache.shape != k_cache.shape or max_length <= length:
            raise ValueError(
                f"a static cache [B, Hkv, L_max, D] with L_max > {length} keys is needed, got k "
                f"{tuple(k_cache.shape)} and v {tuple(v_cache.shape)}"
            )
        if k_cache.stride(0) != kv_heads * k_cache.stride(1) or k_cache.stride(-1) != 1:
            raise ValueError(
                "the key cache's rows (b, h) must share one stride, last dim contiguous"
            )
        device = k_cache.device
        self.config = config
        self.norm = chunks.norm
        self.scale = dim**-0.5 if scale is None else scale
        self.softcap = softcap
        self.delay = tracker.delay
        self.cache = (k_cache.data_ptr(), v_cache.data_ptr(), tuple(k_cache.shape))
        old_slots = chunks.table.shape[2]
        closed = int(chunks.count.max())
        capacity = closed + ceil_div(max_length - length, tracker.shortest_new) + 1
        self.slots = slots = capacity + 1

        self.lengths = torch.full((batch,), length, dtype=torch.int64, device=device)
        self.table = chunks.table.new_zeros(batch, kv_heads, slots, dim)
        self.table[:, :, : old_slots - 1] = chunks.table[:, :, :-1]
        self.table[:, :, -1] = chunks.table[:, :, -1]
        self.lo, self.hi = (chunks.lo.new_zeros(batch, slots) for _ in "lh")
        for new, current in ((self.lo, chunks.lo), (self.hi, chunks.hi)):
            new[:, : old_slots - 1] = current[:, :-1]
            new[:, -1] = current[:, -1]
        self.count = chunks.count.clone()
        self.prior = None
        if chunks.prior is not None:
            self.prior = chunks.prior.new_full((batch, kv_heads, slots), -torch.inf)
            self.prior[:, :, : old_slots - 1] = chunks.prior[:, :, :-1]
            self.prior[:, :, -1] = chunks.prior[:, :, -1]

        self.bounds = torch.zeros(batch, slots + 1, dtype=torch.int64, device=device)
        held = min(tracker.bounds.shape[1], slots + 1)
        self.bounds[:, :held] = tracker.bounds[:, :held]
        self.tracker_count = tracker.count.clone()
        self.last = tracker.last.clone()
        self.cut_scores = torch.zeros(batch, max_length, dtype=torch.float64, device=device)
        self.cut_scores[:, : tracker.scored] = tracker.scores[:, : tracker.scored]
        self.stats = torch.stack([tracker.total, tracker.squares], dim=1).contiguous()
        self.eligible = torch.full((batch,), tracker.eligible, dtype=torch.int64, device=device)
        self.params = torch.tensor([config.boundary_z], dtype=torch.float64, device=device)
        self.regions = torch.zeros(7, dtype=torch.int64, device=device)
        self.fill_regions = FillRegions(*(self.regions[i : i + 1] for i in range(7)))

        # The fill's room shrinks as the window fills, then stays: the first step's bounds all.
        remaining = last_query_regions(length + 1, config.sink, config.local)
        remaining = remaining.fill_regions(config.budget).remaining
        width = min(slots, chunks_taken_bound(remaining, chunks.shortest)) + 2
        self.starts = torch.zeros(batch, kv_heads, 1, width, dtype=torch.int32, device=device)
        self.ends = torch.zeros_like(self.starts)
        self.scores = torch.empty(batch, kv_heads, slots, dtype=torch.float32, device=device)
        if self.norm == "peak":
            room = max(remaining, 1)
            cover = CANDIDATE_FACTOR * room + (room if self.prior is not None else 0)
            self.peak_width = cover + chunks.tail_longest
            self.stage1_block = STAGE1_BLOCK
            tiles = ceil_div(slots, STAGE1_BLOCK)
            self.logits = torch.empty(0, device=device)  # sized by the first query's heads
            self.part_max = torch.empty(batch * kv_heads, 0, tiles, device=device)
            self.peak_offset = torch.zeros(
                batch * kv_heads, slots, dtype=torch.int64, device=device
            )
            self.peak_ends = torch.zeros_like(self.peak_offset)

    @classmethod
    def start(
        cls,
        k_cache: Tensor,
        v_cache: Tensor,
        length: int,
        config: DHSAConfig,
        *,
        probe: Tensor | None = None,
        scale: float | None = None,
        softcap: float | None = None,
    ) -> DecodeStep:
        """The step continuing a prompt of ``length`` keys in ``k_cache``: the prompt chunked by
        the full-sequence chunker (:meth:`BoundaryTracker.start`), its chunk table built, and
        with ``probe [B, Hq, P, D]`` (the prompt's last queries) the ``peak`` scoring's prior."""
        _check_chunker(config)
        keys = k_cache[:, :, :length]
        tracker = BoundaryTracker.start(keys, config, owner=0)
        norm = "peak" if config.scoring == "peak" else "sqrt"
        chunks = ChunkSums.build(keys, tracker, norm)
        dim = k_cache.shape[-1]
        if probe is not None and norm == "peak":
            chunks.set_prior(probe, keys, dim**-0.5 if scale is None else scale)
        return cls(chunks, k_cache, v_cache, config, scale=scale, softcap=softcap)

    def _peak_buffers(self, group: int) -> None:
        """Stage 1's and stage 2's buffers for ``group`` query heads per KV head (first step)."""
        if self.logits.numel():
            return
        batch, kv_heads, slots, _ = self.table.shape
        device = self.table.device
        rows = batch * kv_heads
        tiles = self.part_max.shape[-1]
        self.logits = torch.empty(rows, group, slots, device=device)
        self.part_max = torch.empty(rows, group, tiles, device=device)
        self.part_sum = torch.empty_like(self.part_max)
        self.lse = torch.empty(rows, group, device=device)

    def step(
        self, q: Tensor, k_cache: Tensor, v_cache: Tensor, out: Tensor | None = None
    ) -> Tensor:
        """Absorb the key at the current length, select and attend for the newest query ``q [B,
        Hq, 1, D]`` (at key ``length``), and advance the length: ``[B, Hq, 1, D]`` in ``q``'s
        dtype, written into ``out`` when given. Host checks only; every launch reads the length
        from the device."""
        from .fill.triton_fill import fill_triton
        from .kernels.triton_decode import attend_triton_decode_spans
        from .kernels.triton_decode_step import absorb

        if (k_cache.data_ptr(), v_cache.data_ptr(), tuple(k_cache.shape)) != self.cache:
            raise ValueError("a DecodeStep reads the static cache it was built on")
        batch, kv_heads = self.table.shape[:2]
        if q.shape[0] != batch or q.shape[2] != 1 or q.shape[1] % kv_heads:
            raise ValueError(f"q must be [{batch}, G * {kv_heads}, 1, D], got {tuple(q.shape)}")
        if q.stride(0) != q.shape[1] * q.stride(1) or q.stride(-1) != 1:
            raise ValueError("q's heads must share one stride, last dim contiguous")
        config = self.config
        absorb(self, k_cache, sink=config.sink, local=config.local, budget=config.budget)
        if self.norm == "peak":
            self._peak_scores(q, k_cache)
        else:
            from .kernels.triton_decode_scores import chunk_scores_triton

            chunk_scores_triton(
                q, self.table, self.lo, length=self.lengths, norm=self.norm, out=self.scores
            )
        fill_triton(
            self.scores[:, :, None],
            self.lo,
            self.hi,
            self.fill_regions,
            self.starts,
            self.ends,
            None,
        )
        return attend_triton_decode_spans(
            q,
            k_cache,
            v_cache,
            self.starts[:, :, 0],
            self.ends[:, :, 0],
            scale=self.scale,
            softcap=self.softcap,
            out=out,
        )

    def _peak_scores(self, q: Tensor, k_cache: Tensor) -> None:
        import triton

        from .kernels.triton_decode_step import peak_choose, peak_stage1
        from .methods.triton_peak import _chunk_peak_kernel

        batch, kv_heads, slots, dim = self.table.shape
        group = q.shape[1] // kv_heads
        self._peak_buffers(group)
        peak_stage1(self, q, self.scale)
        peak_choose(self, CANDIDATE_FACTOR)
        block_w = 64
        grid = (triton.cdiv(self.peak_width, block_w), 1, batch * kv_heads)
        _chunk_peak_kernel[grid](
            q,
            self.lse,
            k_cache,
            self.peak_offset,
            self.peak_ends,
            self.peak_ends,  # no column ids: list entry j is slot j
            self.scores,
            1,
            slots,
            slots,
            k_cache.shape[2],
            float(self.scale),
            group * q.stride(1),
            q.stride(1),
            q.stride(2),
            k_cache.stride(1),
            k_cache.stride(2),
            GROUP=group,
            GROUP_PAD=max(16, triton.next_power_of_2(group)),
            DIM=dim,
            BLOCK_W=block_w,
            SEARCH_STEPS=max(1, slots.bit_length()),
            IEEE=k_cache.dtype == torch.float32,
            HAS_IDS=False,
            num_warps=4,
        )

    def spans(self) -> tuple[Tensor, Tensor]:
        """The last step's spans, int32 ``[B, Hkv, W]`` each (sink, chunks in position order,
        window, then empty ``(0, 0)`` spans)."""
        return self.starts[:, :, 0], self.ends[:, :, 0]
