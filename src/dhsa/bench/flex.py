"""FlexAttention as a peer baseline: the same selection, run as a block-sparse ``BlockMask``.

A layout's spans are token-exact; FlexAttention skips work per block. Each layout row keeps every
key block of ``block`` tokens that one of its spans touches (a superset of the selection), and the
mask is built from those block indices directly (``BlockMask.from_kv_blocks``), never from a
per-token ``mask_mod`` evaluated over ``L x L``, which does not fit in memory at 128K. Blocks that
end at or before the first query of a query block are *full*; the rest (the diagonal) get the causal
``mask_mod``. The check layout returned with it spans exactly the blocks FlexAttention attends, so
the correctness gate compares FlexAttention with exact attention over its own keys.

``flex_random`` is the kernel anchor: FlexAttention on a *random* causal block mask with as many
key blocks per row as dhsa's selection touches (the diagonal block and random earlier ones), so
its time is what a block-sparse kernel takes at that density on this device, with no selection.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..attention import select
from ..config import DHSAConfig
from ..layout import Layout, query_block_bounds
from .contenders import Contender, Prepared, register_contender


def touched_blocks(layout: Layout, block: int) -> Tensor:
    """Bool ``[rows, ceil(k_len / block)]``: the key blocks each layout row's spans touch."""
    num_blocks = -(-layout.k_len // block)
    rows = layout.row_ids()
    first = layout.starts.long() // block
    last = (layout.ends.long() - 1) // block
    counts = last - first + 1
    total = int(counts.sum())
    span_of = torch.repeat_interleave(
        torch.arange(layout.nnz, device=layout.device), counts, output_size=total
    )
    step = torch.arange(total, device=layout.device) - (counts.cumsum(0) - counts)[span_of]
    touched = torch.zeros(layout.num_rows, num_blocks, dtype=torch.bool, device=layout.device)
    touched[rows[span_of], first[span_of] + step] = True
    return touched


def blocks_layout(touched: Tensor, like: Layout, block: int) -> Layout:
    """The layout whose row spans are exactly the ``touched`` key blocks (clipped to ``k_len``)."""
    rows, blocks = touched.nonzero(as_tuple=True)
    offsets = torch.zeros(like.num_rows + 1, dtype=torch.int64, device=touched.device)
    offsets[1:] = touched.sum(dim=1).cumsum(0)
    starts = (blocks * block).to(torch.int32)
    ends = torch.clamp((blocks + 1) * block, max=like.k_len).to(torch.int32)
    return Layout(
        offsets=offsets,
        starts=starts,
        ends=ends,
        batch=like.batch,
        kv_heads=like.kv_heads,
        q_len=like.q_len,
        k_len=like.k_len,
        query_block=like.query_block,
    )


def _indices(selected: Tensor) -> tuple[Tensor, Tensor]:
    """``(num_blocks [..., nqb], indices [..., nqb, nkb])`` int32, selected blocks first."""
    count = selected.sum(dim=-1, dtype=torch.int32)
    order = torch.argsort(selected.to(torch.int8), dim=-1, descending=True, stable=True)
    return count, order.to(torch.int32)


def block_mask_from_layout(layout: Layout, q_heads: int):
    """``(BlockMask, check Layout)`` for FlexAttention at block size ``layout.query_block``."""
    from torch.nn.attention.flex_attention import BlockMask

    if layout.sliding_window is not None or layout.span_bias is not None:
        raise ValueError("the FlexAttention peer takes plain causal layouts only")
    block = layout.query_block
    touched = touched_blocks(layout, block)
    q_starts, _ = query_block_bounds(layout.q_len, layout.k_len, block, layout.device)
    block_ends = (torch.arange(touched.shape[1], device=layout.device) + 1) * block
    full_ok = block_ends[None, :] <= q_starts.repeat(layout.batch * layout.kv_heads)[:, None] + 1
    shape = (layout.batch, layout.kv_heads, layout.num_q_blocks, touched.shape[1])
    group = q_heads // layout.kv_heads
    full = (touched & full_ok).view(shape).repeat_interleave(group, dim=1)
    partial = (touched & ~full_ok).view(shape).repeat_interleave(group, dim=1)
    kv_num, kv_idx = _indices(partial)
    full_num, full_idx = _indices(full)
    q_offset = layout.q_offset

    def causal(b, h, q_idx, kv_idx):
        return q_idx + q_offset >= kv_idx

    mask = BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=block,
        mask_mod=causal,
        seq_lengths=(layout.q_len, layout.k_len),
    )
    return mask, blocks_layout(touched, layout, block)


def random_blocks(touched: Tensor, like: Layout, block: int, generator: torch.Generator) -> Tensor:
    """Bool like ``touched``: per row as many key blocks as ``touched`` holds, the diagonal block
    and random causal blocks before it (rows with fewer causal blocks keep them all)."""
    num_blocks = touched.shape[1]
    q_starts, _ = query_block_bounds(like.q_len, like.k_len, block, like.device)
    diagonal = (q_starts + block - 1).clamp(max=like.k_len - 1) // block
    diagonal = diagonal.repeat(like.batch * like.kv_heads)[:, None]  # [rows, 1]
    blocks = torch.arange(num_blocks, device=touched.device)[None, :]
    noise = torch.rand(touched.shape, generator=generator, device="cpu").to(touched.device)
    rank = torch.where(blocks < diagonal, noise, -1.0).masked_fill(blocks == diagonal, 2.0)
    order = rank.argsort(dim=1, descending=True)
    keep = torch.arange(num_blocks, device=touched.device)[None, :] < touched.sum(1, keepdim=True)
    chosen = torch.zeros_like(touched).scatter(1, order, keep)
    return chosen & (blocks <= diagonal)


_COMPILED = {}


def _flex():
    if "flex" not in _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED["flex"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED["flex"]


def _flex_preparer(method: str, randomized: bool = False):
    def prepare(q: Tensor, k: Tensor, v: Tensor, config: DHSAConfig, backend: str) -> Prepared:
        if q.device.type != "cuda":
            raise ValueError("the FlexAttention contender needs CUDA tensors")
        flex = _flex()
        gqa = q.shape[1] != k.shape[1]

        def build():
            layout = select(q, k, config, method=method)
            if randomized:
                block = layout.query_block
                touched = touched_blocks(layout, block)
                chosen = random_blocks(touched, layout, block, torch.Generator().manual_seed(0))
                layout = blocks_layout(chosen, layout, block)
            return block_mask_from_layout(layout, q.shape[1])

        mask, check_layout = build()

        # FlexAttention's kernel tiles must divide the mask's blocks (64 by default here).
        tiles = {"BLOCK_M": config.query_block, "BLOCK_N": config.query_block}

        def attend_with(block_mask) -> Tensor:
            return flex(q, k, v, block_mask=block_mask, enable_gqa=gqa, kernel_options=tiles)

        return Prepared(
            run=lambda: attend_with(build()[0]),
            layout=check_layout,
            select_only=build,
            attend_only=lambda: attend_with(mask),
        )

    return prepare


register_contender(Contender(name="flex_dhsa", dense=False, prepare=_flex_preparer("dhsa")))
register_contender(
    Contender(name="flex_block_sparse", dense=False, prepare=_flex_preparer("block_sparse"))
)
register_contender(
    Contender(name="flex_random", dense=False, prepare=_flex_preparer("dhsa", randomized=True))
)
