"""The tiled torch backend: runs on CPU and any GPU, memory bounded by a tile budget.

Per tile of layout rows (``(batch, kv_head, query_block)``), the keys of each row's spans are
gathered into a padded ``[rows, width, D]`` block, and the row's ``G * query_block`` queries (all
query heads of the KV group: one gather serves the group, K/V are never repeated) attend to them
with an exact masked softmax. No tensor is ever ``L x L``: the largest is the tile's
``[rows, G * query_block, width]`` logits, kept under ``tile_elements``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..intmath import ceil_div
from ..layout import Layout


def _rows_of_queries(q: Tensor, kv_heads: int, query_block: int) -> Tensor:
    """``[B, Hq, Lq, D]`` -> ``[rows, G * query_block, D]`` in layout row order (zero padded)."""
    batch, q_heads, q_len, dim = q.shape
    group = q_heads // kv_heads
    num_blocks = ceil_div(q_len, query_block)
    grouped = q.view(batch, kv_heads, group, q_len, dim)
    grouped = F.pad(grouped, (0, 0, 0, num_blocks * query_block - q_len))
    grouped = grouped.view(batch, kv_heads, group, num_blocks, query_block, dim)
    return grouped.permute(0, 1, 3, 2, 4, 5).reshape(-1, group * query_block, dim)


def _queries_of_rows(rows: Tensor, batch: int, q_heads: int, q_len: int, kv_heads: int) -> Tensor:
    """Inverse of :func:`_rows_of_queries`."""
    group = q_heads // kv_heads
    dim = rows.shape[-1]
    query_block = rows.shape[1] // group
    num_blocks = rows.shape[0] // (batch * kv_heads)
    out = rows.view(batch, kv_heads, num_blocks, group, query_block, dim).permute(0, 1, 3, 2, 4, 5)
    out = out.reshape(batch, q_heads, num_blocks * query_block, dim)
    return out[:, :, :q_len]


def flat_rows(x: Tensor) -> tuple[Tensor, int]:
    """``(rows, stride)``: ``x[b, h, t] == rows[(b * H + h) * stride + t]`` for ``x [B, H, L, D]``.

    A cache cut to its first ``L`` positions (or a padded row cut to its last ones) is read in
    place: reshaping such a view would copy the whole cache on every decode step.
    """
    batch, heads, length, dim = x.shape
    if heads > 1:
        stride, outer = x.stride(1), x.stride(0) if batch > 1 else heads * x.stride(1)
    else:
        stride = x.stride(0) if batch > 1 else length * dim
        outer = stride
    if x.stride(3) != 1 or x.stride(2) != dim or stride % dim or outer != heads * stride:
        return x.reshape(batch * heads * length, dim), length
    count = (batch * heads - 1) * (stride // dim) + length
    return x.as_strided((count, dim), (dim, 1)), stride // dim


def _gather_positions(layout: Layout, r0: int, r1: int, keys_per_row: Tensor):
    """Key columns of rows ``r0:r1``, arranged so causal masking touches few columns.

    Returns ``(positions, spans, diagonal)``: int64 ``[rows, width]`` key positions (-1 = padding)
    and the span of each key, and ``diagonal``, the number of leading columns that hold keys at or
    after the row's query block start (the only ones a causal mask can hide from some query of the
    block). The remaining columns hold the row's earlier keys, visible to every query of the block.
    """
    lo, hi = int(layout.offsets[r0]), int(layout.offsets[r1])
    device = layout.device
    starts = layout.starts[lo:hi].long()
    ends = layout.ends[lo:hi].long()
    lengths = ends - starts
    rows = r1 - r0
    span_rows = torch.repeat_interleave(
        torch.arange(rows, device=device), layout.offsets[r0 + 1 : r1 + 1] - layout.offsets[r0:r1]
    )
    block_start = (
        layout.q_offset
        + ((torch.arange(r0, r1, device=device)) % layout.num_q_blocks) * layout.query_block
    )
    past_per_span = torch.clamp(torch.minimum(ends, block_start[span_rows]) - starts, min=0)
    past = torch.zeros(rows, dtype=torch.int64, device=device).index_add_(
        0, span_rows, past_per_span
    )
    counts = keys_per_row[r0:r1]
    diagonal = int((counts - past).max()) if rows else 0
    width = max(diagonal + (int(past.max()) if rows else 0), 1)
    total = int(lengths.sum())
    span_of_key = torch.repeat_interleave(
        torch.arange(hi - lo, device=device), lengths, output_size=total
    )
    first_key_of_span = torch.cumsum(lengths, 0) - lengths
    flat = torch.arange(total, device=device)
    positions = starts[span_of_key] + (flat - first_key_of_span[span_of_key])
    row_of_key = span_rows[span_of_key]
    index_in_row = flat - (torch.cumsum(counts, 0) - counts)[row_of_key]
    in_diagonal = index_in_row >= past[row_of_key]
    column = torch.where(in_diagonal, index_in_row - past[row_of_key], diagonal + index_in_row)
    grid = torch.full((rows, width), -1, dtype=torch.int64, device=device)
    grid[row_of_key, column] = positions
    spans = torch.full((rows, width), -1, dtype=torch.int64, device=device)
    spans[row_of_key, column] = span_of_key + lo
    return grid, spans, diagonal


def attend_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Layout,
    *,
    scale: float,
    softcap: float | None = None,
    tile_elements: int = 1 << 20,
) -> Tensor:
    """Exact attention of ``q [B, Hq, Lq, D]`` over ``k, v [B, Hkv, Lk, D]`` within ``layout``.

    Same semantics as :func:`dhsa.kernels.reference.attend_reference`. Logits and softmax are
    float32; matrix products run in float32 on CPU and in the input dtype on GPU. Peak extra
    memory is about ``tile_elements`` float32 logits plus the gathered K/V of one tile.
    """
    batch, q_heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    bq = layout.query_block
    num_blocks = layout.num_q_blocks
    compute = torch.float32 if q.device.type == "cpu" else q.dtype
    q_rows = _rows_of_queries(q, kv_heads, bq)
    out_rows = torch.empty(q_rows.shape[0], group * bq, v.shape[-1], dtype=q.dtype, device=q.device)
    # One row per (batch, kv_head, position): keys are gathered by flat row index.
    k_rows, k_stride = flat_rows(k)
    v_rows, v_stride = flat_rows(v)
    lengths = (layout.ends - layout.starts).long()
    keys_per_row = torch.zeros(layout.num_rows, dtype=torch.int64, device=q.device)
    keys_per_row.index_add_(0, layout.row_ids(), lengths)
    widest = max(int(keys_per_row.max()), 1) if layout.num_rows else 1
    tile = max(1, tile_elements // (group * bq * widest))
    q_in_block = torch.arange(group * bq, device=q.device) % bq
    for r0 in range(0, layout.num_rows, tile):
        r1 = min(r0 + tile, layout.num_rows)
        rows = torch.arange(r0, r1, device=q.device)
        positions, span_of_key, diagonal = _gather_positions(layout, r0, r1, keys_per_row)
        present = positions >= 0
        safe = positions.clamp(min=0)
        head = (rows // num_blocks)[:, None]
        # index_select on flat rows: much faster on the CPU than advanced indexing [head, safe].
        keys = k_rows.index_select(0, (head * k_stride + safe).view(-1))
        values = v_rows.index_select(0, (head * v_stride + safe).view(-1))
        keys = keys.view(*safe.shape, dim).to(compute)
        values = values.view(*safe.shape, v.shape[-1]).to(compute)
        column_bias = torch.zeros(present.shape, dtype=torch.float32, device=q.device)
        column_bias.masked_fill_(~present, -torch.inf)
        if layout.span_bias is not None:
            column_bias += layout.span_bias[span_of_key.clamp(min=0)].masked_fill(~present, 0.0)
        queries = q_rows[r0:r1].to(compute)
        if softcap is None:
            logits = torch.baddbmm(
                column_bias[:, None, :].to(compute), queries, keys.transpose(1, 2), alpha=scale
            ).float()
        else:
            logits = torch.bmm(queries, keys.transpose(1, 2)).float() * scale
            logits = softcap * torch.tanh(logits / softcap) + column_bias[:, None, :]
        q_pos = layout.q_offset + (rows % num_blocks)[:, None] * bq + q_in_block[None, :]
        if layout.sliding_window is None:
            near = logits[:, :, :diagonal]
            hidden = positions[:, None, :diagonal] > q_pos[:, :, None]
            near.masked_fill_(hidden, -torch.inf)
            has_past = present[:, diagonal:].any(dim=1, keepdim=True)
            first_near = positions[:, :1] if diagonal else torch.full_like(positions[:, :1], k_len)
            first_near = torch.where(present[:, :1], first_near, k_len)
            any_key = has_past | (first_near <= q_pos)
        else:
            allowed = present[:, None, :] & layout.token_rule(
                q_pos[:, :, None], positions[:, None, :]
            )
            logits.masked_fill_(~allowed, -torch.inf)
            any_key = allowed.any(dim=-1)
        probs = torch.softmax(logits, dim=-1)
        if not bool(any_key.all()):
            probs.masked_fill_(~any_key[:, :, None], 0.0)
        out_rows[r0:r1] = torch.bmm(probs.to(compute), values).to(q.dtype)
    return _queries_of_rows(out_rows, batch, q_heads, q_len, kv_heads)
