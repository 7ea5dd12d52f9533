"""Triton kernels of the fused decode step (:class:`dhsa.decode_step.DecodeStep`).

A step reads the context length from a device tensor, so the same launches serve every step and
the step can be captured once in a CUDA graph:

- :func:`absorb` (one program per batch row): the new key joins the open tail's float32 sum; the
  ``similarity`` chunker scores the cut ``window`` keys back (float64 running statistics, as
  :class:`dhsa.chunking.BoundaryTracker` keeps them) and decides the cut ``delay`` keys back; a
  row that closes stores the chunk in the next slot of its table. Program 0 also writes the step's
  fill regions (sink, window, candidates, room), and every row's length advances by one;
- :func:`peak_stage1` (one program per ``(row, tile of slots)``): each query head's logits
  against the chunk means and the tile's part of ``logsumexp_c(s_c + log n_c)``;
- :func:`peak_choose` (one program per row): the candidates of the ``peak`` scoring: the prior's
  best chunks covering ``room`` keys, then the best stage-1 masses covering the candidate cover,
  found by bisection over order-preserving integer keys (ties go to the lower slot); the other
  slots get their final ``log(mass) - 1e4`` score, the candidates ``-inf`` and the end-to-end
  layout that stage 2 (:func:`dhsa.methods.triton_peak.chunk_peaks`' kernel) folds their best key
  into.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..fill.triton_fill import order_key


@triton.jit
def _cosine_shift(
    row_k,
    stride_kh,
    stride_kl,
    cut,
    KV_HEADS: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    WINDOW: tl.constexpr,
    WIN_BLOCK: tl.constexpr,
):
    """``1 - cos`` between the mean key (summed over KV heads) of the ``WINDOW`` keys before
    ``cut`` and of the ``WINDOW`` keys from it on: :func:`dhsa.chunking.similarity.shift_scores`
    of one cut (positions before 0 count as zeros)."""
    d = tl.arange(0, BLOCK_D)
    w = tl.arange(0, WIN_BLOCK)
    left_pos = cut - WINDOW + w
    left_ok = (w < WINDOW) & (left_pos >= 0)
    right_ok = w < WINDOW
    d_ok = d < DIM
    left = tl.zeros([BLOCK_D], dtype=tl.float32)
    right = tl.zeros([BLOCK_D], dtype=tl.float32)
    for h in range(KV_HEADS):
        base = row_k + h * stride_kh + d[None, :]
        left += tl.sum(
            tl.load(
                base + left_pos[:, None] * stride_kl,
                mask=left_ok[:, None] & d_ok[None, :],
                other=0.0,
            ).to(tl.float32),
            axis=0,
        )
        right += tl.sum(
            tl.load(
                base + (cut + w)[:, None] * stride_kl,
                mask=right_ok[:, None] & d_ok[None, :],
                other=0.0,
            ).to(tl.float32),
            axis=0,
        )
    left = left / WINDOW
    right = right / WINDOW
    left_norm = tl.maximum(tl.sqrt_rn(tl.sum(left * left, axis=0)), 1e-12)
    right_norm = tl.maximum(tl.sqrt_rn(tl.sum(right * right, axis=0)), 1e-12)
    return 1.0 - tl.sum((left / left_norm) * (right / right_norm), axis=0)


@triton.jit
def _absorb_kernel(
    K,
    stride_kb,
    stride_kh,
    stride_kl,
    lengths,
    table,
    lo,
    hi,
    count,
    prior,
    bounds,
    tracker_count,
    last,
    cut_scores,
    stats,
    eligible,
    boundary_z,
    regions,
    slots,
    bound_cap,
    score_cap,
    sink,
    local,
    budget,
    KV_HEADS: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    WINDOW: tl.constexpr,
    WIN_BLOCK: tl.constexpr,
    MIN_CHUNK: tl.constexpr,
    MAX_CHUNK: tl.constexpr,
    DELAY: tl.constexpr,
    DELAY_BLOCK: tl.constexpr,
    NMS_BLOCK: tl.constexpr,
    SIMILARITY: tl.constexpr,
    SQRT_NORM: tl.constexpr,
    HAS_PRIOR: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    old = tl.load(lengths + b)
    n = old + 1
    row_k = K + b * stride_kb
    tail = slots - 1

    # Boundary score of the cut whose right window the new key completes.
    if SIMILARITY:
        cut = n - WINDOW
        scored = cut >= 1
        value = _cosine_shift(
            row_k, stride_kh, stride_kl, cut, KV_HEADS, DIM, BLOCK_D, WINDOW, WIN_BLOCK
        ).to(tl.float64)
        tl.store(cut_scores + b * score_cap + cut - 1, value, mask=scored)
        counted = scored & (cut >= MIN_CHUNK)
        total = tl.load(stats + 2 * b) + tl.where(counted, value, 0.0)
        squares = tl.load(stats + 2 * b + 1) + tl.where(counted, value * value, 0.0)
        seen = tl.load(eligible + b) + counted.to(tl.int64)
        tl.store(stats + 2 * b, total)
        tl.store(stats + 2 * b + 1, squares)
        tl.store(eligible + b, seen)

    # The decision on the cut `delay` keys back (BoundaryTracker._decide).
    decided = n - DELAY
    deciding = decided >= 1
    start = tl.load(last + b)
    since = decided - start
    close = since >= MAX_CHUNK
    if SIMILARITY:
        radius = MIN_CHUNK - 1
        score = tl.load(cut_scores + b * score_cap + decided - 1, mask=deciding, other=0.0)
        first = tl.maximum(decided - radius, MIN_CHUNK)
        j = tl.arange(0, NMS_BLOCK)
        around = tl.load(
            cut_scores + b * score_cap + first - 1 + j,
            mask=deciding & (first - 1 + j < decided + radius),
            other=float("-inf"),
        )
        mean = total / seen.to(tl.float64)
        spread = tl.maximum(squares / seen.to(tl.float64) - mean * mean, 0.0)
        threshold = mean + tl.load(boundary_z) * tl.sqrt(spread)
        threshold = tl.where(seen == 0, float("inf"), threshold)
        peak = (score >= tl.max(around, axis=0)) & (score > threshold)
        close = close | ((decided >= MIN_CHUNK) & (since >= MIN_CHUNK) & peak)
    close = close & deciding
    tracked = tl.load(tracker_count + b)
    # A row that does not close writes past its boundaries, where nothing reads.
    tl.store(bounds + b * bound_cap + tracked, decided, mask=deciding)
    tl.store(tracker_count + b, tracked + close.to(tl.int64))
    tl.store(last + b, tl.where(close, decided, start))

    # The chunk table: absorb the new key; a closing row moves the tail's keys before the cut
    # into slot `index` and keeps the keys after it (summed afresh) in the tail.
    index = tl.load(count + b)
    tail_lo = tl.load(lo + b * slots + tail)
    keys = tl.maximum(decided - tail_lo, 1).to(tl.float32)
    if SQRT_NORM:
        keys = tl.sqrt_rn(keys)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < DIM
    p = decided + tl.arange(0, DELAY_BLOCK)
    p_ok = (p < n) & close
    for h in range(KV_HEADS):
        head_k = row_k + h * stride_kh
        row = (b * KV_HEADS + h) * slots
        key = tl.load(head_k + old * stride_kl + d, mask=d_ok, other=0.0).to(tl.float32)
        total_sum = tl.load(table + (row + tail) * DIM + d, mask=d_ok, other=0.0) + key
        after = tl.sum(
            tl.load(
                head_k + p[:, None] * stride_kl + d[None, :],
                mask=p_ok[:, None] & d_ok[None, :],
                other=0.0,
            ).to(tl.float32),
            axis=0,
        )
        chunk = tl.div_rn(total_sum - after, keys + tl.zeros([BLOCK_D], dtype=tl.float32))
        tl.store(table + (row + index) * DIM + d, chunk, mask=d_ok & close)
        tl.store(table + (row + tail) * DIM + d, tl.where(close, after, total_sum), mask=d_ok)
        if HAS_PRIOR:
            tail_prior = tl.load(prior + row + tail)
            tl.store(prior + row + index, tail_prior, mask=close)
    tl.store(lo + b * slots + index, tail_lo, mask=close)
    tl.store(hi + b * slots + index, decided, mask=close)
    tl.store(lo + b * slots + tail, tl.where(close, decided, tail_lo))
    tl.store(count + b, index + close.to(tl.int64))

    # The fill regions of the query at key n - 1 (dhsa.methods.regions.last_query_regions).
    if b == 0:
        window_start = tl.maximum(n - 1 - local, 0)
        sink_end = tl.minimum(window_start, sink)
        tl.store(regions + 0, n * 0)
        tl.store(regions + 1, sink_end)
        tl.store(regions + 2, window_start)
        tl.store(regions + 3, n)
        tl.store(regions + 4, sink_end)
        tl.store(regions + 5, window_start)
        tl.store(regions + 6, tl.maximum(budget - sink_end - (n - window_start), 0))
    tl.store(lengths + b, n)


def absorb(state, keys, *, sink: int, local: int, budget: int) -> None:
    """Launch the state update of one step on ``state`` (a :class:`dhsa.decode_step.DecodeStep`)
    with the static key cache ``keys [B, Hkv, L_max, D]``: the key at each row's length is
    absorbed and the length advances."""
    config = state.config
    similarity = config.chunker == "similarity"
    window = config.boundary_window if similarity else 1
    min_chunk = config.min_chunk if similarity else 1
    batch, kv_heads, _, dim = keys.shape
    _absorb_kernel[(batch,)](
        keys,
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        state.lengths,
        state.table,
        state.lo,
        state.hi,
        state.count,
        state.table if state.prior is None else state.prior,
        state.bounds,
        state.tracker_count,
        state.last,
        state.cut_scores,
        state.stats,
        state.eligible,
        state.params,
        state.regions,
        state.slots,
        state.bounds.shape[1],
        state.cut_scores.shape[1],
        sink,
        local,
        budget,
        KV_HEADS=kv_heads,
        DIM=dim,
        BLOCK_D=triton.next_power_of_2(dim),
        WINDOW=window,
        WIN_BLOCK=triton.next_power_of_2(window),
        MIN_CHUNK=min_chunk,
        MAX_CHUNK=config.max_chunk if similarity else config.chunk_size,
        DELAY=state.delay,
        DELAY_BLOCK=triton.next_power_of_2(state.delay),
        NMS_BLOCK=triton.next_power_of_2(2 * min_chunk - 1),
        SIMILARITY=similarity,
        SQRT_NORM=state.norm == "sqrt",
        HAS_PRIOR=state.prior is not None,
        num_warps=4,
    )


@triton.jit
def _stage1_kernel(
    Q,
    stride_qb,
    stride_qh,
    lengths,
    table,
    lo,
    hi,
    count,
    logits,
    part_max,
    part_sum,
    slots,
    tiles,
    scale,
    KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b * Hkv + h
    tile = tl.program_id(1)
    b = row // KV_HEADS
    h = row % KV_HEADS
    n = tl.load(lengths + b)
    closed = tl.load(count + b)
    c = tile * BLOCK_C + tl.arange(0, BLOCK_C)
    used = ((c < closed) | (c == slots - 1)) & (c < slots)
    chunk_lo = tl.load(lo + b * slots + c, mask=used, other=0)
    chunk_hi = tl.minimum(tl.load(hi + b * slots + c, mask=used, other=0), n)
    seen = used & (chunk_hi > chunk_lo) & (chunk_lo < n) & (chunk_hi > 0)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, DIM)
    q = tl.load(
        Q + b * stride_qb + (h * GROUP + g)[:, None] * stride_qh + d[None, :],
        mask=(g < GROUP)[:, None],
        other=0.0,
    ).to(tl.float32)
    means = tl.load(
        table + (row * slots + c)[:, None] * DIM + d[None, :], mask=used[:, None], other=0.0
    )
    # The tail slot holds a key sum: its mean over the tail's keys so far.
    tail_keys = tl.maximum(n - chunk_lo, 1).to(tl.float32)
    means = tl.where((c == slots - 1)[:, None], means / tail_keys[:, None], means)
    s = tl.dot(q, tl.trans(means), input_precision=PRECISION) * scale  # [GROUP_PAD, BLOCK_C]
    s = tl.where(seen[None, :], s, float("-inf"))
    tl.store(
        logits + (row * GROUP + g)[:, None] * slots + c[None, :],
        s,
        mask=(g < GROUP)[:, None] & (c < slots)[None, :],
    )
    weighted = s + tl.log(tl.maximum(chunk_hi - chunk_lo, 1).to(tl.float32))[None, :]
    top = tl.max(weighted, axis=1)
    safe = tl.where(top == float("-inf"), 0.0, top)
    total = tl.sum(tl.where(seen[None, :], tl.exp(weighted - safe[:, None]), 0.0), axis=1)
    tl.store(part_max + (row * GROUP + g) * tiles + tile, top, mask=g < GROUP)
    tl.store(part_sum + (row * GROUP + g) * tiles + tile, total, mask=g < GROUP)


def peak_stage1(state, q, scale: float) -> None:
    """Launch stage 1 of the ``peak`` scoring for the newest query ``q [B, Hq, 1, D]``: every
    head's logits against the table's means (``state.logits``) and each tile's part of the
    head's ``lse`` (``state.part_max``, ``state.part_sum``)."""
    batch, kv_heads, slots, dim = state.table.shape
    group = q.shape[1] // kv_heads
    tiles = state.part_max.shape[-1]
    _stage1_kernel[(batch * kv_heads, tiles)](
        q,
        q.stride(0),
        q.stride(1),
        state.lengths,
        state.table,
        state.lo,
        state.hi,
        state.count,
        state.logits,
        state.part_max,
        state.part_sum,
        slots,
        tiles,
        float(scale),
        KV_HEADS=kv_heads,
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        DIM=dim,
        BLOCK_C=state.stage1_block,
        PRECISION="tf32x3" if q.is_cuda else "ieee",
        num_warps=4,
    )


@triton.jit
def _covering(key, size, cover, ROUNDS: tl.constexpr):
    """True where a slot is among the best ``key`` (int64, distinct order; ties to the lower
    slot) whose better slots hold fewer than ``cover`` keys (``size`` int64): a prefix of the
    ranking, found by bisection for the lowest key ``t`` with less than ``cover`` keys above."""
    low = tl.min(key, axis=0) - 1
    high = tl.max(key, axis=0)
    for _ in range(ROUNDS):
        mid = low + (high - low) // 2
        above = tl.sum(tl.where(key > mid, size, 0), axis=0)
        wide = high - low > 1
        low = tl.where(wide & (above >= cover), mid, low)
        high = tl.where(wide & (above < cover), mid, high)
    tied = key == high
    tied_size = tl.where(tied, size, 0)
    before = tl.sum(tl.where(key > high, size, 0), axis=0) + tl.cumsum(tied_size, axis=0)
    return (key > high) | (tied & (before - tied_size < cover))


@triton.jit
def _choose_kernel(
    lengths,
    lo,
    hi,
    count,
    prior,
    logits,
    part_max,
    part_sum,
    regions,
    lse,
    scores,
    offset,
    ends,
    slots,
    tiles,
    KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    FACTOR: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_T: tl.constexpr,
    HAS_PRIOR: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // KV_HEADS
    n = tl.load(lengths + b)
    closed = tl.load(count + b)
    c = tl.arange(0, BLOCK_N)
    used = ((c < closed) | (c == slots - 1)) & (c < slots)
    chunk_lo = tl.load(lo + b * slots + c, mask=used, other=0)
    chunk_hi = tl.minimum(tl.load(hi + b * slots + c, mask=used, other=0), n)
    first = tl.load(regions + 4)
    room = tl.maximum(tl.load(regions + 6), 1)
    cand_lo = tl.maximum(chunk_lo, first)
    cost = tl.maximum(tl.minimum(chunk_hi, tl.load(regions + 5)) - cand_lo, 0)
    cost = tl.where(used, cost, 0)
    seen = cost > 0

    # Stage 1: each head's lse from the tiles' parts, then the mass summed over the group.
    t = tl.arange(0, BLOCK_T)
    mass = tl.zeros([BLOCK_N], dtype=tl.float32)
    for g in range(GROUP):
        head = row * GROUP + g
        tops = tl.load(part_max + head * tiles + t, mask=t < tiles, other=float("-inf"))
        sums = tl.load(part_sum + head * tiles + t, mask=t < tiles, other=0.0)
        top = tl.max(tops, axis=0)
        safe = tl.where(top == float("-inf"), 0.0, top)
        total = tl.sum(sums * tl.exp(tops - safe), axis=0)
        head_lse = tl.where(total > 0, safe + tl.log(total), float("-inf"))
        tl.store(lse + head, head_lse)
        s = tl.load(logits + head * slots + c, mask=used, other=float("-inf"))
        mass += tl.where(s > float("-inf"), tl.exp(s - head_lse), 0.0)
    stage1 = tl.where(seen, mass, float("-inf"))

    cover = FACTOR * room
    lead = tl.zeros([BLOCK_N], dtype=tl.int1)
    if HAS_PRIOR:
        p = tl.load(prior + row * slots + c, mask=used, other=float("-inf"))
        ranked = seen & (p > float("-inf"))
        p_key = tl.where(ranked, order_key(p).to(tl.int64), -(2**31) - 1)
        lead = _covering(p_key, tl.where(ranked, cost, 0).to(tl.int64), room, 36) & ranked
        cover = cover + room
    # An int64 order: the lead flag (2**32) above the float32's order key.
    key = order_key(stage1).to(tl.int64) + tl.where(lead, 4294967296, 0)
    key = tl.where(seen, key, -(2**31) - 1)
    chosen = _covering(key, cost.to(tl.int64), cover, 36) & seen

    low = tl.log(tl.maximum(stage1, 1.1754943508222875e-38)) - 1e4
    low = tl.where(seen, low, float("-inf"))
    tl.store(scores + row * slots + c, tl.where(chosen, float("-inf"), low), mask=c < slots)
    taken = tl.where(chosen, cost, 0).to(tl.int64)
    end = tl.cumsum(taken, axis=0)
    tl.store(ends + row * slots + c, end, mask=c < slots)
    tl.store(offset + row * slots + c, cand_lo - (end - taken), mask=c < slots)


def peak_choose(state, factor: int) -> None:
    """Launch the candidate choice of the ``peak`` scoring (see the module docstring):
    ``state.scores`` gets the final score of every slot but the candidates (``-inf``, raised by
    stage 2), ``state.peak_offset, state.peak_ends`` the candidates' keys end to end,
    ``state.lse`` each head's stage-1 ``lse``."""
    batch, kv_heads, slots, _ = state.table.shape
    tiles = state.part_max.shape[-1]
    block_n = triton.next_power_of_2(slots)
    _choose_kernel[(batch * kv_heads,)](
        state.lengths,
        state.lo,
        state.hi,
        state.count,
        state.logits if state.prior is None else state.prior,
        state.logits,
        state.part_max,
        state.part_sum,
        state.regions,
        state.lse,
        state.scores,
        state.peak_offset,
        state.peak_ends,
        slots,
        tiles,
        KV_HEADS=kv_heads,
        GROUP=state.lse.shape[-1],
        FACTOR=factor,
        BLOCK_N=block_n,
        BLOCK_T=triton.next_power_of_2(tiles),
        HAS_PRIOR=state.prior is not None,
        num_warps=max(4, min(16, block_n // 1024)),
    )
