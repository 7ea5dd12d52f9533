"""The torch decode step: one query per sequence over padded key spans, without a layout.

The tiled prefill backend (:mod:`dhsa.kernels.torch_tiled`) handles query blocks, causal
diagonals and windows; a decode query needs none of that, and building a layout per token (sort,
merge, CSR) costs more than the attention itself on a CPU. Here the spans are expanded straight
into key positions, gathered once from the cache (read in place) and attended.

The cache is contiguous, ``k, v [B, Hkv, Lk, D]``, or paged (see :func:`check_paged`): pools
``[num_pages, page_size, Hkv, D]`` (the "NHD" page layout of vLLM and FlashInfer: one page holds
``page_size`` consecutive positions of every KV head) and an int32 page table ``[B, max_pages]``
whose entry ``[b, i]`` is the pool page holding positions ``[i * page_size, (i + 1) * page_size)``
of sequence ``b``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .torch_tiled import flat_rows


def check_paged(q: Tensor, k: Tensor, v: Tensor, page_table: Tensor) -> None:
    """ValueError / TypeError unless ``k, v [num_pages, page_size, Hkv, D]`` and the integer
    ``page_table [B, max_pages]`` form a paged cache for the queries ``q [B, Hq, 1, D]``."""
    if page_table.dim() != 2 or page_table.shape[0] != q.shape[0]:
        raise ValueError(
            f"page_table must be [B, max_pages] with B = {q.shape[0]}, got "
            f"{tuple(page_table.shape)}"
        )
    if page_table.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"page_table must be int32 or int64, got {page_table.dtype}")
    if k.dim() != 4 or k.shape[:3] != v.shape[:3] or q.shape[1] % k.shape[2]:
        raise ValueError(
            f"paged k, v must be [num_pages, page_size, Hkv, D] pools with Hq a multiple of Hkv; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if page_table.device != k.device:
        raise ValueError(f"page_table is on {page_table.device}, the pools on {k.device}")


def attend_decode_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    starts: Tensor,
    ends: Tensor,
    *,
    scale: float,
    softcap: float | None = None,
    page_table: Tensor | None = None,
    max_keys: int | None = None,
) -> Tensor:
    """Attention of ``q [B, Hq, 1, D]`` over the keys ``[start, end)`` of each ``(batch, kv_head)``.

    ``k, v [B, Hkv, Lk, D]``, or with ``page_table [B, max_pages]`` the paged pools
    ``[num_pages, page_size, Hkv, D]`` (see the module docstring; spans must lie within the
    table's pages); ``starts, ends`` integer ``[B, Hkv, S]``, disjoint spans, empty where
    ``end <= start``. ``max_keys`` bounds the keys of a row (e.g. the selection's budget): with
    it nothing waits for the device; without it the widest row is read back. Logits and softmax
    in float32 (products in float32 on CPU, in the input dtype on GPU). Returns
    ``[B, Hq, 1, D]`` in ``q.dtype``; a row with no key gives zeros.
    """
    batch, q_heads, _, dim = q.shape
    kv_heads = k.shape[2] if page_table is not None else k.shape[1]
    rows = batch * kv_heads
    compute = torch.float32 if q.device.type == "cpu" else q.dtype
    starts = starts.reshape(rows, -1).long()
    lengths = (ends.reshape(rows, -1).long() - starts).clamp(min=0)
    through = lengths.cumsum(dim=1)
    counts = through[:, -1]
    width = max(int(counts.max()) if max_keys is None else max_keys, 1)
    column = torch.arange(width, device=q.device).expand(rows, -1).contiguous()
    span = torch.searchsorted(through, column, right=True).clamp(max=lengths.shape[1] - 1)
    before = through.gather(1, span) - lengths.gather(1, span)
    present = column < counts[:, None]
    positions = torch.where(present, starts.gather(1, span) + column - before, 0)
    row = torch.arange(rows, device=q.device)[:, None]
    if page_table is None:
        k_rows, k_stride = flat_rows(k)
        v_rows, v_stride = flat_rows(v)
        k_index, v_index = row * k_stride + positions, row * v_stride + positions
    else:
        page_size = k.shape[1]
        pages = page_table.long()[row // kv_heads, positions // page_size]
        k_index = v_index = (pages * page_size + positions % page_size) * kv_heads + row % kv_heads
        k_rows, v_rows = k.reshape(-1, dim), v.reshape(-1, v.shape[-1])
    keys = k_rows.index_select(0, k_index.view(-1))
    values = v_rows.index_select(0, v_index.view(-1))
    keys = keys.view(rows, width, dim).to(compute)
    values = values.view(rows, width, v.shape[-1]).to(compute)
    queries = q.reshape(rows, q_heads // kv_heads, dim).to(compute)
    logits = torch.bmm(queries, keys.transpose(1, 2)).float() * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logits.masked_fill_(~present[:, None, :], -torch.inf)
    probs = torch.softmax(logits, dim=-1).nan_to_num_(0.0)
    out = torch.bmm(probs.to(compute), values).to(q.dtype)
    return out.view(batch, q_heads, 1, v.shape[-1])
