"""Chunk and query-block representations and their scores.

A chunk of ``n`` keys is represented by ``sqrt(n) * mean`` (``norm="sqrt"``, DHSA: neither long nor
short chunks are favoured by their length) or by the plain ``mean`` (``norm="mean"``, block-sparse).
Query blocks use the same rule over the block's tokens, with the query heads of a KV group averaged.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch
from torch import Tensor

from ..chunking import chunk_ids
from ..intmath import ceil_div

NORMS = ("sqrt", "mean")


def normalize(sums: Tensor, counts: Tensor, norm: str) -> Tensor:
    """Key or query ``sums`` over ``counts`` items (broadcastable; a count below 1 counts as 1) as
    the representation ``norm`` names: ``sqrt`` divides by ``sqrt(count)``, ``mean`` by
    ``count``."""
    counts = torch.clamp(counts, min=1).to(sums.dtype)
    if norm == "sqrt":
        return sums / counts.sqrt()
    if norm == "mean":
        return sums / counts
    raise ValueError(f"unknown normalization {norm!r}: allowed {NORMS}")


def chunk_representations(
    k: Tensor, bounds: Tensor, norm: str, token_tile: int = 1 << 14, use_triton: bool | None = None
):
    """Float32 ``[B, Hkv, N, D]`` chunk keys for ``k [B, Hkv, L, D]`` and ``bounds [B, N + 1]``.

    Padding chunks (zero length) get zero vectors. Keys are summed in float32: by tensor
    operations ``token_tile`` positions at a time, so no float32 copy of all of ``k`` is made, or
    with ``use_triton`` (None: on CUDA with triton importable) in one launch
    (:func:`dhsa.methods.triton_chunk_sums.chunk_sums`).
    """
    if use_triton is None:
        use_triton = k.device.type == "cuda" and importlib.util.find_spec("triton") is not None
    counts = (bounds[:, 1:] - bounds[:, :-1])[:, None, :, None]
    if use_triton:
        from .triton_chunk_sums import chunk_sums

        return normalize(chunk_sums(k, bounds), counts, norm)
    batch, kv_heads, length, dim = k.shape
    num_chunks = bounds.shape[1] - 1
    ids = chunk_ids(bounds, length)
    sums = torch.zeros(batch, kv_heads, num_chunks, dim, dtype=torch.float32, device=k.device)
    for b in range(batch):
        for t0 in range(0, length, token_tile):
            t1 = min(t0 + token_tile, length)
            sums[b].index_add_(1, ids[b, t0:t1], k[b, :, t0:t1].float())
    return normalize(sums, counts, norm)


def query_block_representations(q: Tensor, kv_heads: int, query_block: int, norm: str) -> Tensor:
    """Float32 ``[B, Hkv, num_q_blocks, D]``: one vector per query block and KV group.

    ``q`` is ``[B, Hq, Lq, D]`` with ``Hq = G * Hkv``; the ``G`` heads of a group are averaged.
    """
    sums, counts = _head_block_sums(q, kv_heads, query_block)
    return normalize(sums.mean(dim=2), counts[:, None], norm)


def _head_block_sums(q: Tensor, kv_heads: int, query_block: int) -> tuple[Tensor, Tensor]:
    """Float32 per-head query sums ``[B, Hkv, G, NQB, D]`` over each query block, and the
    blocks' sizes ``[NQB]`` (the last block may be short)."""
    batch, q_heads, q_len, dim = q.shape
    group = q_heads // kv_heads
    num_blocks = ceil_div(q_len, query_block)
    padded = num_blocks * query_block
    x = q.view(batch, kv_heads, group, q_len, dim)
    if padded != q_len:
        x = torch.nn.functional.pad(x, (0, 0, 0, padded - q_len))
    # Accumulated in float32 without a float32 copy of q (2 GB at 128K queries of 32 heads).
    sums = x.view(batch, kv_heads, group, num_blocks, query_block, dim).sum(4, dtype=torch.float32)
    # Each block's size, the last one possibly short; arithmetic on a range, so a decode step
    # writes no host value into a device tensor.
    starts = torch.arange(num_blocks, device=q.device, dtype=torch.float32) * query_block
    return sums, (q_len - starts).clamp(max=query_block)


# Stage 1 of the ``peak`` scoring keeps, per query block, the best chunks covering this many times
# the keys the budget has room for; stage 2 rescores only those (benchmarks/selection_study).
CANDIDATE_FACTOR = 3


# The Triton form's stage 1 gives each program a tile of rows and walks the chunks in sequence:
# worth it for a prefill's many rows, while a decode step's single row runs faster as tensor
# operations (stage 2 still the kernel).
STAGE1_KERNEL_ROWS = 16


def head_block_means(q: Tensor, kv_heads: int, query_block: int) -> Tensor:
    """Float32 ``[B, Hkv, G, NQB, D]``: every query head's mean query over each query block.

    Unlike :func:`query_block_representations` the ``G`` heads of a KV group stay apart: a key
    that one head looks for is not averaged away by the others.
    """
    sums, counts = _head_block_sums(q, kv_heads, query_block)
    return sums / counts[:, None]


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
    shortest: int,
    longest: int,
    prior: Tensor | None = None,
    exact_prior: bool = False,
    use_triton: bool | None = None,
    candidates: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Float32 chunk scores ``[B, Hkv, T, N]`` of ``T`` query rows by the ``peak`` rule; with
    ``candidates`` also the chunks stage 2 rescored, int32 ``[B, Hkv, T, K]`` in position order
    (``-1`` after them): every other chunk scores below them.

    ``head_q [B, Hkv, G, T, D]`` holds each query head's (mean) query of each row; ``k [B, Hkv,
    L, D]`` the keys; ``chunk_means [B, Hkv, N, D]`` (float32) the mean key of every chunk, whose
    keys are ``[chunk_lo, chunk_hi)`` (int64 ``[B, N]``). Row ``t`` sees the keys in
    ``[visible_start, visible_end)`` and may add the candidate keys ``[candidate_lo,
    candidate_hi)`` (all ``[T]``). ``room`` is the most keys a row adds; ``shortest`` and
    ``longest`` bound the chunk lengths (host integers, so nothing here waits for the device).

    Stage 1 (chunk level, length-normalized): each head's logits against the chunk means give a
    per-token attention mass ``exp(s_c - lse)``, with ``lse = logsumexp_c(s_c + log n_c)`` over
    the visible chunks; summed over the group's heads they rank the candidate chunks. Stage 2
    (token level): the best candidates, as many as cover ``CANDIDATE_FACTOR * room`` keys, are
    scored by their best key, ``max_{t in c, g} (scale q_g . k_t - lse_g)``: the largest
    per-token mass estimate any head of the group gives them. The other candidates keep their
    stage-1 score far below (``log mass - 1e4``), so a fill still reaches them in that order.
    A row's scores depend on that row alone; nothing of size ``L x L`` is formed (stage 2 reads
    ``T x (CANDIDATE_FACTOR * room + longest)`` keys).

    ``prior [B, Hkv, T, N]`` (a per-token log mass per chunk, ``-inf`` for none; see
    :func:`probe_chunk_scores`): in a row that carries one (any finite value) the prior's best
    chunks covering ``room`` keys come first among the candidates, which then cover
    ``(CANDIDATE_FACTOR + 1) * room`` keys; a row whose prior is all ``-inf`` scores exactly as
    without a prior.
    With ``exact_prior`` (the prior is the exact attention of the row's own queries) a chunk's
    final score is also at least its prior.

    ``use_triton`` (None: where :func:`triton_peak_usable`): with at least
    ``STAGE1_KERNEL_ROWS`` rows the scores come from three launches
    (:func:`dhsa.methods.triton_peak.peak_scores`, ranking ties broken by position); fewer rows
    (a decode step) run stage 1 as tensor operations and stage 2 as the kernel.
    """
    batch, kv_heads, group, rows, dim = head_q.shape
    num_chunks = chunk_means.shape[2]
    cover = CANDIDATE_FACTOR * room
    most = cover + (0 if prior is None else room)  # the largest cover of any row
    # Every chunk but the two cut by the candidate region's edges has at least `shortest` keys.
    ranked = min(num_chunks, ceil_div(most, max(shortest, 1)) + 3)
    width = most + longest
    if use_triton is None:
        use_triton = triton_peak_usable(k.device, dim)
    if use_triton and rows >= STAGE1_KERNEL_ROWS:  # three launches, no [T, N] tensor passes
        from . import triton_peak

        scores, listed = triton_peak.peak_scores(
            head_q,
            k,
            chunk_means,
            chunk_lo,
            chunk_hi,
            visible_start,
            visible_end,
            candidate_lo,
            candidate_hi,
            scale=scale,
            room=room,
            cover_factor=CANDIDATE_FACTOR,
            listed=ranked,
            width=width,
            prior=prior,
            exact_prior=exact_prior,
        )
        return (scores, listed) if candidates else scores
    lo = chunk_lo[:, None, None, :]
    hi = chunk_hi[:, None, None, :]
    lengths = (chunk_hi - chunk_lo).clamp(min=1).float()[:, None, None, None, :]
    visible = (lo < visible_end[None, None, :, None]) & (hi > visible_start[None, None, :, None])
    visible &= hi > lo
    coarse = scale * (head_q @ chunk_means[:, :, None].transpose(-1, -2))  # [B, Hkv, G, T, N]
    coarse = coarse.masked_fill(~visible[:, :, None], -torch.inf)
    lse = torch.logsumexp(coarse + lengths.log(), dim=-1, keepdim=True)  # [B, Hkv, G, T, 1]
    stage1 = (coarse - lse).exp().sum(dim=2)  # [B, Hkv, T, N]
    # Each chunk's part of the candidate region is the same for every head: [B, 1, T, N] tensors
    # (int32: half the bytes), expanded (not copied) where a gather needs the heads.
    cand_lo = torch.maximum(lo, candidate_lo[None, None, :, None]).int()
    cost = (torch.minimum(hi, candidate_hi[None, None, :, None]).int() - cand_lo).clamp(min=0)
    unseen = cost == 0
    cand_lo = cand_lo.expand(-1, kv_heads, -1, -1)
    cost = cost.expand(-1, kv_heads, -1, -1)
    stage1 = stage1.masked_fill(unseen, -torch.inf)
    rank = stage1
    if prior is not None:
        # The prior's best chunks covering `room` keys come first, on top of stage 1's cover, in
        # the rows that carry a prior (any finite value); the other rows rank as without one.
        p_best, p_order = prior.masked_fill(unseen, -torch.inf).sort(
            dim=-1, descending=True, stable=True
        )
        p_size = cost.gather(-1, p_order)
        p_first = ((p_size.cumsum(-1) - p_size) < room) & (p_best > -torch.inf)
        lead = torch.zeros_like(p_first).scatter(-1, p_order, p_first)
        rank = torch.where(lead, stage1.clamp(min=0) + 1e6, stage1)
        carries = (prior > -torch.inf).any(dim=-1, keepdim=True)  # [B, Hkv, T, 1]
        cover = cover + room * carries.int()
    best, order = rank.topk(ranked, dim=-1)  # [B, Hkv, T, K]
    size = cost.gather(-1, order)
    before = size.cumsum(-1) - size
    chosen = (before < cover) & (best > -torch.inf)
    size = size * chosen
    ends = size.cumsum(-1)
    offset = cand_lo.gather(-1, order) - (ends - size)
    queries = head_q.to(k.dtype)
    peak = chunk_peaks(queries, lse[..., 0], k, offset, ends, width, scale, use_triton)
    if prior is not None and exact_prior:
        peak = torch.maximum(peak, prior.gather(-1, order))
    low = stage1.clamp(min=torch.finfo(torch.float32).tiny).log() - 1e4
    low = low.masked_fill(unseen, -torch.inf)
    scores = low.scatter(-1, order, torch.where(chosen, peak, low.gather(-1, order)))
    if not candidates:
        return scores
    listed = torch.where(chosen, order, num_chunks).sort(dim=-1).values
    return scores, torch.where(listed < num_chunks, listed, -1).int()


def triton_peak_usable(device: torch.device, dim: int) -> bool:
    """True when stage 2 of the ``peak`` scoring can run as the Triton kernel
    (:mod:`dhsa.methods.triton_peak`): CUDA, triton importable, a power-of-two head size >= 16."""
    if device.type != "cuda" or dim < 16 or dim & (dim - 1):
        return False
    try:
        importlib.import_module("dhsa.methods.triton_peak")
    except ImportError:
        return False
    return True


def chunk_peaks(
    head_q: Tensor,
    lse: Tensor,
    k: Tensor,
    offset: Tensor,
    ends: Tensor,
    width: int,
    scale: float,
    use_triton: bool | None = None,
) -> Tensor:
    """Float32 ``[B, Hkv, T, K]``: each listed chunk's best key, ``max`` over its keys ``p`` and
    the group's heads ``g`` of ``scale * head_q[b, h, g, t] . k[b, h, p] - lse[b, h, g, t]``;
    ``-inf`` for empty chunks.

    ``head_q [B, Hkv, G, T, D]`` in ``k``'s dtype, ``lse`` float32 ``[B, Hkv, G, T]``. Row ``(b,
    h, t)`` lays its ``K`` chunks end to end in slots ``[0, ends[-1])`` (``ends`` non-decreasing,
    at most ``width``): chunk ``j`` takes slots up to ``ends[j]``, and its slot ``w`` is key
    ``offset[j] + w`` (clamped into the keys). The Triton kernel
    (:mod:`dhsa.methods.triton_peak`) reads the keys in place; the tensor operations gather them
    first (``T x width x D`` elements). ``use_triton`` None: the kernel where
    :func:`triton_peak_usable`.
    """
    if use_triton is None:
        use_triton = triton_peak_usable(k.device, k.shape[-1])
    if use_triton:
        from .triton_peak import chunk_peaks as kernel

        return kernel(head_q, lse, k, offset, ends, width=width, scale=scale)
    batch, kv_heads, group, rows, dim = head_q.shape
    chunks = ends.shape[-1]
    slots = torch.arange(width, device=k.device).expand(batch, kv_heads, rows, -1).contiguous()
    which = torch.searchsorted(ends.contiguous(), slots, right=True)  # [B, Hkv, T, W]
    filled = which < chunks
    which = which.clamp(max=chunks - 1)
    positions = (offset.gather(-1, which) + slots).clamp(min=0, max=k.shape[2] - 1)
    heads = torch.arange(batch * kv_heads, device=k.device)[:, None]
    keys = k.reshape(batch * kv_heads, k.shape[2], dim)[
        heads, positions.reshape(batch * kv_heads, -1)
    ]
    keys = keys.view(batch, kv_heads, rows, width, dim)
    fine = keys @ head_q.permute(0, 1, 3, 4, 2)  # [B, Hkv, T, W, G]
    fine = (scale * fine.float() - lse.permute(0, 1, 3, 2)[:, :, :, None]).amax(dim=-1)
    fine = fine.masked_fill(~filled, -torch.inf)
    out = torch.full((batch, kv_heads, rows, chunks), -torch.inf, device=k.device)
    return out.scatter_reduce(-1, which, fine, reduce="amax")


def probe_token_scores(
    q_probe: Tensor,
    k: Tensor,
    *,
    scale: float,
    head_tile: int = 4,
    use_triton: bool | None = None,
) -> Tensor:
    """Float32 ``[B, Hkv, L]``: each key's largest per-token log attention mass under the exact
    attention of the probe queries ``q_probe [B, Hq, P, D]``, the last ``P`` queries up to key
    ``L - 1`` of ``k [B, Hkv, L, D]`` (causal), maximized over the probe queries and the group's
    heads: ``O(P * L)`` work. The tensor operations hold one ``[B, head_tile, G, P, L]`` block
    of float32 logits at a time; ``use_triton`` (None: where :func:`triton_peak_usable`) runs
    two launches instead (:func:`dhsa.methods.triton_peak.probe_token_scores`), no logits kept.
    """
    if use_triton is None:
        use_triton = triton_peak_usable(k.device, k.shape[-1])
    if use_triton:
        from . import triton_peak

        return triton_peak.probe_token_scores(q_probe, k, scale=scale)
    batch, q_heads, probes, dim = q_probe.shape
    kv_heads, length = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    positions = torch.arange(length, device=k.device)
    query_at = length - probes + torch.arange(probes, device=k.device)
    hidden = positions[None, :] > query_at[:, None]
    best = torch.empty(batch, kv_heads, length, dtype=torch.float32, device=k.device)
    queries = q_probe.view(batch, kv_heads, group, probes, dim)
    for h0 in range(0, kv_heads, head_tile):
        h1 = min(h0 + head_tile, kv_heads)
        logits = scale * torch.einsum(
            "bhgpd,bhld->bhgpl", queries[:, h0:h1].float(), k[:, h0:h1].float()
        )
        logits = logits.masked_fill(hidden, -torch.inf).log_softmax(dim=-1)
        best[:, h0:h1] = logits.amax(dim=(2, 3))
    return best


def probe_chunk_scores(q_probe: Tensor, k: Tensor, bounds: Tensor, *, scale: float) -> Tensor:
    """Float32 ``[B, Hkv, N]``: the best :func:`probe_token_scores` of each chunk of ``bounds
    [B, N + 1]``."""
    best = probe_token_scores(q_probe, k, scale=scale)
    ids = chunk_ids(bounds, k.shape[2])[:, None].expand(-1, k.shape[1], -1)
    out = torch.full((*best.shape[:2], bounds.shape[1] - 1), -torch.inf, device=k.device)
    return out.scatter_reduce(-1, ids, best, reduce="amax")
