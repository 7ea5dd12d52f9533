"""The ``peak`` scoring (:func:`dhsa.methods.scoring.peak_scores`) in Triton launches.

- :func:`chunk_mass` (stage 1): a tile of rows against the chunk means, the logits kept in
  registers; writes each row's lse and the group's summed per-token mass of every chunk.
- :func:`peak_scores`: stage 1, then one program per row that takes the candidates by bisection
  over the masses' order (as the fill takes chunks, :mod:`dhsa.fill.triton_fill`), lists them
  and writes the row's final scores in place, then stage 2 raising the listed chunks to their
  best key: three launches, no ``[T, N]`` pass outside them.
- :func:`chunk_peaks` (stage 2): a row lists its chunks with their keys laid end to end in the
  row's slots ``[0, ends[-1])``: chunk ``j`` takes slots ``[ends[j] - size[j], ends[j])``, and
  slot ``w`` of chunk ``j`` is key ``offset[j] + w`` (``offset = start - (ends - size)``). One
  program takes ``BLOCK_W`` slots of one row: it finds each slot's chunk by binary search in
  ``ends``, loads the keys straight from ``k``, multiplies them with the group's queries on the
  tensor cores, and folds ``max_g (scale * q_g . k - lse_g)`` into its chunk's score with an
  atomic maximum. Only the lists and the scores cross memory: no copy of the keys, no per-slot
  tensor.
- :func:`probe_token_scores`: the prompt-end probe's exact attention in two launches.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..fill.triton_fill import order_key


@triton.jit
def _segment_max(chunk_a, best_a, chunk_b, best_b):
    """Combine of a running maximum that restarts where the chunk changes (slots are sorted by
    chunk, so this is associative)."""
    return chunk_b, tl.where(chunk_a == chunk_b, tl.maximum(best_a, best_b), best_b)


@triton.jit(do_not_specialize=["rows", "chunks", "length"])
def _chunk_peak_kernel(
    q_ptr,
    lse_ptr,
    k_ptr,
    offset_ptr,
    ends_ptr,
    ids_ptr,
    out_ptr,
    rows,
    chunks,
    out_cols,
    length,
    scale,
    stride_qb,
    stride_qg,
    stride_qt,
    stride_kb,
    stride_kl,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_W: tl.constexpr,
    SEARCH_STEPS: tl.constexpr,
    IEEE: tl.constexpr,
    HAS_IDS: tl.constexpr,
):
    tile = tl.program_id(0)
    row = tl.program_id(1)  # t of the tile
    head = tl.program_id(2)  # b * Hkv + h
    base = (head * rows + row).to(tl.int64) * chunks
    out_base = (head * rows + row).to(tl.int64) * out_cols
    total = tl.load(ends_ptr + base + chunks - 1)
    w = tile * BLOCK_W + tl.arange(0, BLOCK_W)
    live = w < total
    # The slot's chunk: the number of ends at or before it (a right-sided search).
    lo = tl.zeros([BLOCK_W], dtype=tl.int32)
    hi = tl.zeros([BLOCK_W], dtype=tl.int32) + chunks
    for _ in range(SEARCH_STEPS):
        active = lo < hi
        mid = (lo + hi) // 2
        end = tl.load(ends_ptr + base + mid, mask=live & active, other=0)
        right = end <= w
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & ~right, mid, hi)
    which = tl.minimum(lo, chunks - 1)
    chunk_end = tl.load(ends_ptr + base + which, mask=live, other=0)
    pos = tl.load(offset_ptr + base + which, mask=live, other=0) + w
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, DIM)
    q = tl.load(
        q_ptr + head * stride_qb + g[:, None] * stride_qg + row * stride_qt + d[None, :],
        mask=g[:, None] < GROUP,
        other=0.0,
    )
    lse = tl.load(lse_ptr + (head * GROUP + g) * rows + row, mask=g < GROUP, other=float("inf"))
    pos = tl.minimum(tl.maximum(pos, 0), length - 1).to(tl.int64)
    keys = tl.load(
        k_ptr + head.to(tl.int64) * stride_kb + pos[:, None] * stride_kl + d[None, :],
        mask=live[:, None],
        other=0.0,
    )
    if IEEE:
        logits = tl.dot(q, tl.trans(keys), input_precision="ieee")
    else:
        logits = tl.dot(q, tl.trans(keys))
    best = tl.max(logits * scale - lse[:, None], axis=0)  # padded heads are -inf
    # Each chunk's maximum over this tile's slots, then one atomic per chunk: at its last slot
    # here (its own last slot, or the tile's or the row's last).
    _, best = tl.associative_scan((which, best), 0, _segment_max)
    last = (w == chunk_end - 1) | (w == tile * BLOCK_W + BLOCK_W - 1) | (w == total - 1)
    if HAS_IDS:
        column = tl.load(ids_ptr + base + which, mask=live & last, other=0)
    else:
        column = which
    tl.atomic_max(out_ptr + out_base + column, best, mask=live & last)


def chunk_peaks(
    head_q: Tensor,
    lse: Tensor,
    k: Tensor,
    offset: Tensor,
    ends: Tensor,
    *,
    width: int,
    scale: float,
) -> Tensor:
    """Float32 ``[B, Hkv, T, K]``: each listed chunk's ``max`` over its keys and the group's heads
    of ``scale * head_q[b, h, g, t] . k[b, h, p] - lse[b, h, g, t]``; ``-inf`` for empty chunks.

    ``head_q [B, Hkv, G, T, D]`` in ``k``'s dtype, ``lse`` float32 ``[B, Hkv, G, T]``, ``k [B,
    Hkv, L, D]``; ``offset`` and ``ends`` integer ``[B, Hkv, T, K]``: the row's chunks laid end
    to end end at ``ends`` (non-decreasing), slot ``w`` of chunk ``j`` being key ``offset[j] + w``
    (clamped into the keys); ``width`` (a host integer, so nothing waits for the device) bounds
    ``ends``. The head size must be a power of two of at least 16.
    """
    batch, kv_heads, group, rows, dim = head_q.shape
    chunks = ends.shape[-1]
    if dim < 16 or dim & (dim - 1):
        raise ValueError(f"the Triton peak kernel needs a power-of-two head size >= 16, got {dim}")
    out = torch.full((batch, kv_heads, rows, chunks), -torch.inf, device=k.device)
    _launch_peaks(head_q, lse, k, offset, ends, None, out, width=width, scale=scale)
    return out


def _launch_peaks(head_q, lse, k, offset, ends, ids, out, *, width: int, scale: float) -> None:
    """Fold each listed chunk's best key (see :func:`chunk_peaks`) into ``out [B, Hkv, T, C]``
    by an atomic maximum: at column ``ids[j]`` (int32 ``[B, Hkv, T, K]``), or ``j`` when
    ``ids`` is None."""
    batch, kv_heads, group, rows, dim = head_q.shape
    chunks = ends.shape[-1]
    if out.numel() == 0 or chunks == 0 or width <= 0:
        return
    queries = head_q.reshape(batch * kv_heads, group, rows, dim)
    if queries.stride(-1) != 1:
        queries = queries.contiguous()
    keys = k.flatten(0, 1)  # a view when (b, h) share one stride, as caches' slices do
    if keys.stride(-1) != 1:
        keys = keys.contiguous()
    block_w = 64
    grid = (triton.cdiv(width, block_w), rows, batch * kv_heads)
    _chunk_peak_kernel[grid](
        queries,
        lse.reshape(batch * kv_heads, group, rows).contiguous(),
        keys,
        offset.to(torch.int64).contiguous(),
        ends.to(torch.int64).contiguous(),
        ends if ids is None else ids,
        out,
        rows,
        chunks,
        out.shape[-1],
        k.shape[2],
        float(scale),
        queries.stride(0),
        queries.stride(1),
        queries.stride(2),
        keys.stride(0),
        keys.stride(1),
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        DIM=dim,
        BLOCK_W=block_w,
        SEARCH_STEPS=max(1, chunks.bit_length()),
        IEEE=k.dtype == torch.float32,
        HAS_IDS=ids is not None,
        num_warps=4,
    )


@triton.jit(do_not_specialize=["rows", "num_chunks"])
def _chunk_mass_kernel(
    q_ptr,
    means_ptr,
    lo_ptr,
    hi_ptr,
    start_ptr,
    end_ptr,
    span_ptr,
    mass_ptr,
    lse_ptr,
    rows,
    num_chunks,
    num_tiles,
    scale,
    stride_qb,
    stride_qg,
    stride_qt,
    stride_mb,
    stride_mc,
    kv_heads,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    ROWS: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    head = tl.program_id(1)  # b * Hkv + h
    batch = head // kv_heads
    m = tl.arange(0, ROWS * GROUP_PAD)  # one query row per (row of the tile, head of the group)
    g = m % GROUP_PAD
    t = tile * ROWS + m // GROUP_PAD
    live = (g < GROUP) & (t < rows)
    d = tl.arange(0, DIM)
    q = tl.load(
        q_ptr + head * stride_qb + g[:, None] * stride_qg + t[:, None] * stride_qt + d[None, :],
        mask=live[:, None],
        other=0.0,
    )
    first = tl.load(start_ptr + t, mask=t < rows, other=0)
    last = tl.load(end_ptr + t, mask=t < rows, other=0)
    base_c = tl.arange(0, BLOCK_C)
    # Only the chunks some row of the tile sees: [c_begin, c_end).
    c_begin = tl.load(span_ptr + (batch * num_tiles + tile) * 2)
    c_end = tl.load(span_ptr + (batch * num_tiles + tile) * 2 + 1)
    # Pass 1: lse = logsumexp_c(s_c + log n_c) over the visible chunks, online.
    top = tl.full([ROWS * GROUP_PAD], float("-inf"), tl.float32)
    total = tl.zeros([ROWS * GROUP_PAD], tl.float32)
    for c0 in range(c_begin, c_end, BLOCK_C):
        c = c0 + base_c
        lo = tl.load(lo_ptr + batch * num_chunks + c, mask=c < num_chunks, other=0)
        hi = tl.load(hi_ptr + batch * num_chunks + c, mask=c < num_chunks, other=0)
        means = tl.load(
            means_ptr + head * stride_mb + c[:, None] * stride_mc + d[None, :],
            mask=c[:, None] < num_chunks,
            other=0.0,
        )
        s = tl.dot(q, tl.trans(means), input_precision=PRECISION) * scale
        seen = (lo[None, :] < last[:, None]) & (hi[None, :] > first[:, None]) & (hi > lo)[None, :]
        seen = seen & live[:, None]
        weighted = tl.where(seen, s + tl.log(tl.maximum(hi - lo, 1).to(tl.float32))[None, :], -1e30)
        new_top = tl.maximum(top, tl.max(weighted, axis=1))
        total = total * tl.exp(top - new_top) + tl.sum(
            tl.where(seen, tl.exp(weighted - new_top[:, None]), 0.0), axis=1
        )
        top = new_top
    lse = tl.where(total > 0, top + tl.log(total), float("-inf"))
    tl.store(lse_ptr + (head * GROUP + g) * rows + t, lse, mask=live)
    # Pass 2: each chunk's per-token mass exp(s_c - lse), summed over the group's heads.
    for c0 in range(c_begin, c_end, BLOCK_C):
        c = c0 + base_c
        lo = tl.load(lo_ptr + batch * num_chunks + c, mask=c < num_chunks, other=0)
        hi = tl.load(hi_ptr + batch * num_chunks + c, mask=c < num_chunks, other=0)
        means = tl.load(
            means_ptr + head * stride_mb + c[:, None] * stride_mc + d[None, :],
            mask=c[:, None] < num_chunks,
            other=0.0,
        )
        s = tl.dot(q, tl.trans(means), input_precision=PRECISION) * scale
        seen = (lo[None, :] < last[:, None]) & (hi[None, :] > first[:, None]) & (hi > lo)[None, :]
        seen = seen & live[:, None] & (total > 0)[:, None]
        mass = tl.where(seen, tl.exp(s - lse[:, None]), 0.0)  # [ROWS * GROUP_PAD, BLOCK_C]
        mass = tl.sum(tl.reshape(mass, [ROWS, GROUP_PAD, BLOCK_C]), axis=1)
        row = tile * ROWS + tl.arange(0, ROWS)
        tl.store(
            mass_ptr + (head * rows + row)[:, None].to(tl.int64) * num_chunks + c[None, :],
            mass,
            mask=(row[:, None] < rows) & (c[None, :] < num_chunks),
        )


def chunk_mass(
    head_q: Tensor,
    chunk_means: Tensor,
    chunk_lo: Tensor,
    chunk_hi: Tensor,
    visible_start: Tensor,
    visible_end: Tensor,
    *,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """Stage 1 of the ``peak`` scoring in one launch: float32 ``(mass [B, Hkv, T, N], lse [B,
    Hkv, G, T])``, ``lse = logsumexp_c(scale * q_g . mean_c + log n_c)`` over the chunks visible
    to the row and ``mass = sum_g exp(scale * q_g . mean_c - lse_g)`` (0 for the others).

    ``head_q [B, Hkv, G, T, D]`` and ``chunk_means [B, Hkv, N, D]`` float32, ``chunk_lo,
    chunk_hi`` int64 ``[B, N]``, ``visible_start, visible_end`` integer ``[T]``. Rows with no
    visible chunk get ``lse = -inf`` and no mass. The ``[G, T, N]`` logits stay in registers.
    """
    batch, kv_heads, group, rows, dim = head_q.shape
    num_chunks = chunk_means.shape[2]
    if dim < 16 or dim & (dim - 1):
        raise ValueError(f"the Triton peak kernel needs a power-of-two head size >= 16, got {dim}")
    mass = torch.zeros(batch, kv_heads, rows, num_chunks, device=head_q.device)
    lse = torch.full((batch, kv_heads, group, rows), -torch.inf, device=head_q.device)
    if mass.numel() == 0:
        return mass, lse
    queries = head_q.float().reshape(batch * kv_heads, group, rows, dim)
    if queries.stride(-1) != 1:
        queries = queries.contiguous()
    means = chunk_means.float().reshape(batch * kv_heads, num_chunks, dim).contiguous()
    group_pad = triton.next_power_of_2(group)
    # A tile holds 64 query vectors and 32 chunk means up to head size 128; larger heads halve
    # both (the float32 operands, their TF32 halves and the pipelined chunk loads of head size
    # 256 at the full tile ask 256 KB of shared memory, past the H200's 227 KB).
    wide = dim > 128
    tile_rows = max(1, (32 if wide else 64) // group_pad)
    num_tiles = triton.cdiv(rows, tile_rows)
    # Per tile of rows, the index range of the chunks any of its rows sees (chunks need not be
    # in position order: a decode table's unused slots sit between its chunks and its tail).
    pad = num_tiles * tile_rows - rows
    low = torch.nn.functional.pad(visible_start.to(torch.int64), (0, pad), value=1 << 62)
    high = torch.nn.functional.pad(visible_end.to(torch.int64), (0, pad), value=-1)
    low, high = low.view(num_tiles, -1).amin(-1), high.view(num_tiles, -1).amax(-1)
    seen = (chunk_lo[:, None] < high[None, :, None]) & (chunk_hi[:, None] > low[None, :, None])
    seen &= (chunk_hi > chunk_lo)[:, None]  # [B, tiles, N]
    index = torch.arange(num_chunks, device=head_q.device)
    c_begin = torch.where(seen, index, num_chunks).amin(-1)
    c_end = torch.where(seen, index + 1, 0).amax(-1)
    span = torch.stack([c_begin, c_end], dim=-1).contiguous()
    grid = (num_tiles, batch * kv_heads)
    _chunk_mass_kernel[grid](
        queries,
        means,
        chunk_lo.to(torch.int64).contiguous(),
        chunk_hi.to(torch.int64).contiguous(),
        visible_start.to(torch.int64).contiguous(),
        visible_end.to(torch.int64).contiguous(),
        span,
        mass,
        lse,
        rows,
        num_chunks,
        num_tiles,
        float(scale),
        queries.stride(0),
        queries.stride(1),
        queries.stride(2),
        means.stride(0),
        means.stride(1),
        kv_heads,
        GROUP=group,
        GROUP_PAD=group_pad,
        ROWS=tile_rows,
        DIM=dim,
        BLOCK_C=16 if wide else 32,
        # Three TF32 products keep float32's accuracy on the tensor cores; the interpreter and
        # other devices take the exact product.
        PRECISION="tf32x3" if head_q.is_cuda else "ieee",
        num_warps=4,
        num_stages=2 if wide else 3,
    )
    return mass, lse


@triton.jit
def _top_cover(key, size, cover):
    """Bool mask of the chunks ranked first by ``key`` (descending, ties in position order)
    while the sizes ranked before them sum to less than ``cover``; chunks of size 0 are never
    taken. The cut key is found by bisection over the int32 keys (32 rounds)."""
    total = tl.sum(size, axis=0)
    if total >= cover:
        # The largest key k with size(key >= k) >= cover: every chunk above it is taken, none
        # below it, and the chunks at it in position order while the cover is not reached.
        low = tl.full([], -(2**31), dtype=tl.int64)
        high = tl.full([], 2**31 - 1, dtype=tl.int64)
        for _ in range(32):
            mid = low + (high - low + 1) // 2
            above = tl.sum(tl.where(key >= mid.to(tl.int32), size, 0), axis=0)
            low = tl.where(above >= cover, mid, low)
            high = tl.where(above >= cover, high, mid - 1)
        cut = low.to(tl.int32)
        strict = tl.sum(tl.where(key > cut, size, 0), axis=0)
        tied = tl.where(key == cut, size, 0)
        before = tl.cumsum(tied, axis=0) - tied
        taken = (key > cut) | ((key == cut) & (strict + before < cover))
    else:
        taken = key == key
    return taken & (size > 0)


@triton.jit(do_not_specialize=["rows", "num_chunks", "listed", "room"])
def _choose_kernel(
    scores_ptr,
    lo_ptr,
    hi_ptr,
    cand_start_ptr,
    cand_end_ptr,
    prior_ptr,
    offset_ptr,
    ends_ptr,
    ids_ptr,
    rows,
    num_chunks,
    listed,
    kv_heads,
    room,
    COVER_FACTOR: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_PRIOR: tl.constexpr,
    EXACT_PRIOR: tl.constexpr,
):
    pid = tl.program_id(0)  # (b * Hkv + h) * T + t
    t = pid % rows
    b = (pid // rows // kv_heads).to(tl.int64)
    row = pid.to(tl.int64) * num_chunks
    c = tl.arange(0, BLOCK_N)
    ok = c < num_chunks
    mass = tl.load(scores_ptr + row + c, mask=ok, other=0.0)
    chunk_lo = tl.load(lo_ptr + b * num_chunks + c, mask=ok, other=0)
    chunk_hi = tl.load(hi_ptr + b * num_chunks + c, mask=ok, other=0)
    start = tl.maximum(chunk_lo, tl.load(cand_start_ptr + t))
    size = tl.maximum(tl.minimum(chunk_hi, tl.load(cand_end_ptr + t)) - start, 0)
    size = tl.where(ok, size, 0).to(tl.int32)  # half the registers of int64 in the bisection
    seen = size > 0
    cover = COVER_FACTOR * room
    rank = mass
    if HAS_PRIOR:
        prior = tl.load(prior_ptr + row + c, mask=ok, other=float("-inf"))
        known = prior > float("-inf")
        lead = _top_cover(order_key(prior), tl.where(known, size, 0), room)
        rank = tl.where(lead, tl.maximum(mass, 0.0) + 1e6, mass)
        cover += room * tl.max(known.to(tl.int32), axis=0)
    taken = _top_cover(order_key(rank), size, cover)
    low = tl.log(tl.maximum(mass, 1.1754943508222875e-38)) - 1e4
    final = tl.where(seen, low, float("-inf"))
    if EXACT_PRIOR:
        final = tl.where(taken, prior, final)  # stage 2 raises it to the best key
    else:
        final = tl.where(taken, float("-inf"), final)
    tl.debug_barrier()  # every thread has read the row's masses before any overwrites them
    tl.store(scores_ptr + row + c, final, mask=ok)
    # The taken chunks in position order, their candidate keys laid end to end; the list's
    # unused entries end where the last taken chunk does.
    size = tl.where(taken, size, 0)
    ends = tl.cumsum(size, axis=0)
    slot = tl.cumsum(taken.to(tl.int32), axis=0) - 1
    count = tl.sum(taken.to(tl.int32), axis=0)
    out = pid.to(tl.int64) * listed
    keep = taken & (slot < listed)
    tl.store(offset_ptr + out + slot, start - (ends - size), mask=keep)
    tl.store(ends_ptr + out + slot, ends, mask=keep)
    tl.store(ids_ptr + out + slot, c, mask=keep)
    spare = (c >= count) & (c < listed)
    tl.store(offset_ptr + out + c, 0, mask=spare)
    tl.store(ends_ptr + out + c, tl.sum(size, axis=0), mask=spare)
    tl.store(ids_ptr + out + c, -1, mask=spare)


def peak_scores(
    head_q: Tensor,
    k: Tensor,
    chunk_means: Tensor,
    chunk_lo: Tensor,
    chunk_hi: Tensor,
    visible_start: Tensor,
    visible_end: Tensor,
    candidate_lo: Tensor,
    candidate_hi: Tensor,
    *,
    scale: float,
    room: int,
    cover_factor: int,
    listed: int,
    width: int,
    prior: Tensor | None = None,
    exact_prior: bool = False,
) -> tuple[Tensor, Tensor]:
    """The scores of :func:`dhsa.methods.scoring.peak_scores` (same arguments; ``cover_factor``
    its ``CANDIDATE_FACTOR``) in three launches, float32 ``[B, Hkv, T, N]``, and the chunks
    stage 2 rescored, int32 ``[B, Hkv, T, listed]`` in position order (``-1`` after them):

    1. :func:`chunk_mass` writes stage 1's masses into the scores tensor;
    2. one program per row takes the candidates (the prior's lead chunks, then stage 1's best,
       covering ``cover_factor * room`` keys, ``room`` more in a row that carries a prior) by
       bisection over the masses' order, lists them in position order (at most ``listed``, a
       host bound) and overwrites the row with its final scores: ``log(mass) - 1e4`` for the
       other candidates, ``-inf`` outside the candidate region, and ``-inf`` (with
       ``exact_prior`` the prior) for the taken chunks;
    3. :func:`chunk_peaks`' kernel raises each taken chunk's score to its best key, reading
       ``width`` (a host bound on the listed keys) slots per row.

    Ranking ties are broken by position (the lower chunk index first). Nothing waits for the
    device.
    """
    batch, kv_heads, group, rows, dim = head_q.shape
    num_chunks = chunk_means.shape[2]
    scores, lse = chunk_mass(
        head_q, chunk_means, chunk_lo, chunk_hi, visible_start, visible_end, scale=scale
    )
    shape = (batch, kv_heads, rows, listed)
    offset = torch.empty(shape, dtype=torch.int64, device=k.device)
    ends = torch.empty_like(offset)
    ids = torch.empty(shape, dtype=torch.int32, device=k.device)
    if scores.numel() == 0 or listed == 0:
        return scores.fill_(-torch.inf), ids.fill_(-1)
    block_n = max(16, triton.next_power_of_2(num_chunks))
    _choose_kernel[(batch * kv_heads * rows,)](
        scores,
        chunk_lo.to(torch.int64).contiguous(),
        chunk_hi.to(torch.int64).contiguous(),
        candidate_lo.to(torch.int64).contiguous(),
        candidate_hi.to(torch.int64).contiguous(),
        scores if prior is None else prior.float().contiguous(),
        offset,
        ends,
        ids,
        rows,
        num_chunks,
        listed,
        kv_heads,
        room,
        COVER_FACTOR=cover_factor,
        BLOCK_N=block_n,
        HAS_PRIOR=prior is not None,
        EXACT_PRIOR=prior is not None and exact_prior,
        num_warps=max(4, min(16, block_n // 1024)),
    )
    queries = head_q.to(k.dtype)
    _launch_peaks(queries, lse, k, offset, ends, ids, scores, width=width, scale=scale)
    return scores, ids


@triton.jit(do_not_specialize=["length", "probes", "split"])
def _probe_lse_kernel(
    q_ptr,
    k_ptr,
    part_ptr,
    length,
    probes,
    split,
    scale,
    stride_qb,
    stride_qm,
    stride_kb,
    stride_kl,
    GROUP: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    block = tl.program_id(0)
    part = tl.program_id(1)
    head = tl.program_id(2).to(tl.int64)  # b * Hkv + h
    m = block * BLOCK_M + tl.arange(0, BLOCK_M)  # (head of the group, probe query)
    live = m < GROUP * probes
    at = length - probes + m % probes  # the query's position: it sees keys up to it
    d = tl.arange(0, DIM)
    q = tl.load(
        q_ptr + head * stride_qb + m[:, None] * stride_qm + d[None, :], mask=live[:, None], other=0
    )
    top = tl.full([BLOCK_M], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_M], tl.float32)
    for l0 in range(part * split, tl.minimum(part * split + split, length), BLOCK_N):
        n = l0 + tl.arange(0, BLOCK_N)
        keys = tl.load(
            k_ptr + head * stride_kb + n[:, None].to(tl.int64) * stride_kl + d[None, :],
            mask=n[:, None] < length,
            other=0,
        )
        s = tl.dot(q, tl.trans(keys), input_precision=PRECISION) * scale
        s = tl.where((n[None, :] <= at[:, None]) & live[:, None], s, float("-inf"))
        new_top = tl.maximum(top, tl.max(s, axis=1))
        safe = tl.where(new_top > float("-inf"), new_top, 0.0)
        total = total * tl.exp(top - safe) + tl.sum(tl.exp(s - safe[:, None]), axis=1)
        top = new_top
    out = part_ptr + (head * tl.num_programs(1) + part) * 2 * GROUP * probes
    tl.store(out + m, top, mask=live)
    tl.store(out + GROUP * probes + m, total, mask=live)


@triton.jit(do_not_specialize=["length", "probes"])
def _probe_best_kernel(
    q_ptr,
    k_ptr,
    lse_ptr,
    out_ptr,
    length,
    probes,
    scale,
    stride_qb,
    stride_qm,
    stride_kb,
    stride_kl,
    GROUP: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    block = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)  # b * Hkv + h
    n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, DIM)
    keys = tl.load(
        k_ptr + head * stride_kb + n[:, None].to(tl.int64) * stride_kl + d[None, :],
        mask=n[:, None] < length,
        other=0,
    )
    best = tl.full([BLOCK_N], float("-inf"), tl.float32)
    for m0 in range(0, GROUP * probes, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        live = m < GROUP * probes
        q = tl.load(
            q_ptr + head * stride_qb + m[:, None] * stride_qm + d[None, :],
            mask=live[:, None],
            other=0,
        )
        lse = tl.load(lse_ptr + head * GROUP * probes + m, mask=live, other=float("inf"))
        at = length - probes + m % probes
        s = tl.dot(q, tl.trans(keys), input_precision=PRECISION) * scale - lse[:, None]
        s = tl.where((n[None, :] <= at[:, None]) & live[:, None], s, float("-inf"))
        best = tl.maximum(best, tl.max(s, axis=0))
    tl.store(out_ptr + head * length + n, best, mask=n < length)


def probe_token_scores(q_probe: Tensor, k: Tensor, *, scale: float, split: int = 4096) -> Tensor:
    """:func:`dhsa.methods.scoring.probe_token_scores` in two launches: float32 ``[B, Hkv, L]``,
    each key's ``max`` over the probe queries and the group's heads of its log attention mass
    ``scale * q . k - lse`` (causal: probe ``p`` of ``P`` is the query at key ``L - P + p``).

    ``q_probe [B, Hq, P, D]``, ``k [B, Hkv, L, D]`` of one dtype. The first launch gives each
    query's ``lse`` over ranges of ``split`` keys (combined here), the second each key's best
    mass. Half-
    precision inputs multiply exactly on the tensor cores (float32 sums); float32 inputs take
    three TF32 products on CUDA and the exact product elsewhere.
    """
    batch, q_heads, probes, dim = q_probe.shape
    kv_heads, length = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    if dim < 16 or dim & (dim - 1):
        raise ValueError(f"the Triton probe kernel needs a power-of-two head size >= 16, got {dim}")
    best = torch.empty(batch, kv_heads, length, dtype=torch.float32, device=k.device)
    if best.numel() == 0 or probes == 0:
        return best.fill_(-torch.inf)
    # [B * Hkv, G * P, D]: row g * P + p is head g's probe p (a view of q_probe).
    queries = q_probe.reshape(batch * kv_heads, group * probes, dim)
    if queries.stride(-1) != 1 or queries.dtype != k.dtype:
        queries = queries.to(k.dtype).contiguous()
    keys = k.flatten(0, 1)
    if keys.stride(-1) != 1:
        keys = keys.contiguous()
    rows = group * probes
    block_m, block_n = 64, 64
    split = triton.cdiv(split, block_n) * block_n
    parts = triton.cdiv(length, split)
    precision = "ieee" if not k.is_cuda else ("tf32x3" if k.dtype == torch.float32 else "tf32")
    strides = (queries.stride(0), queries.stride(1), keys.stride(0), keys.stride(1))
    part = torch.empty(batch * kv_heads, parts, 2, rows, device=k.device)
    _probe_lse_kernel[(triton.cdiv(rows, block_m), parts, batch * kv_heads)](
        queries,
        keys,
        part,
        length,
        probes,
        split,
        float(scale),
        *strides,
        GROUP=group,
        DIM=dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PRECISION=precision,
        num_warps=4,
    )
    top, total = part[:, :, 0], part[:, :, 1]
    peak = top.amax(dim=1, keepdim=True)
    lse = peak[:, 0] + (total * (top - peak).exp()).sum(dim=1).log()  # [B * Hkv, G * P]
    _probe_best_kernel[(triton.cdiv(length, block_n), batch * kv_heads)](
        queries,
        keys,
        lse.contiguous(),
        best,
        length,
        probes,
        float(scale),
        *strides,
        GROUP=group,
        DIM=dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PRECISION=precision,
        num_warps=4,
    )
    return best
