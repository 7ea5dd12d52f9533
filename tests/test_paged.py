"""Decode attention over a paged KV cache equals it over the same keys laid out contiguously.

Pools are ``[num_pages, page_size, Hkv, D]`` with pages in random order, the pages no sequence owns
filled with NaN (a read of them would poison the output). Triton runs under its interpreter
without a GPU (``TRITON_INTERPRET=1``, set before triton is imported).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import dhsa  # noqa: E402
from conftest import make_qkv  # noqa: E402
from dhsa.decode import DecodeSession  # noqa: E402
from dhsa.kernels import attend_decode  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def paginate(k, v, lengths, page_size, generator, table_dtype=torch.int32):
    """``k, v [B, Hkv, L, D]`` as NHD pools with their pages in random order, and the page table;
    pool pages and table entries past each sequence's ``lengths[b]`` keys are poison (NaN, and
    a NaN page)."""
    batch, kv_heads, _, dim = k.shape
    owned = [-(-n // page_size) for n in lengths]
    total = sum(owned) + 2
    order = torch.randperm(total, generator=generator).tolist()
    table = torch.full((batch, max(owned) + 1), order[-1], dtype=table_dtype)
    pools = []
    for x in (k, v):
        pool = torch.full((total, page_size, kv_heads, dim), float("nan"), dtype=x.dtype)
        used = 0
        for b, n in enumerate(lengths):
            for i in range(owned[b]):
                table[b, i] = order[used]
                pool[order[used], : min(page_size, n - i * page_size)] = x[
                    b, :, i * page_size : min((i + 1) * page_size, n)
                ].transpose(0, 1)
                used += 1
        pools.append(pool.to(DEVICE))
    return *pools, table.to(DEVICE)


def random_spans(lengths, kv_heads, width, generator):
    """Disjoint spans ``[B, Hkv, width]`` within each sequence, in random order, some empty."""
    rows = []
    for n in lengths:
        cuts = torch.randint(0, n + 1, (kv_heads, 2 * width), generator=generator).sort().values
        starts, ends = cuts[:, 0::2], cuts[:, 1::2]
        ends = torch.where(torch.rand(starts.shape, generator=generator) < 0.3, starts, ends)
        shuffle = torch.argsort(torch.rand(starts.shape, generator=generator), dim=1)
        rows.append((starts.gather(1, shuffle), ends.gather(1, shuffle)))
    starts, ends = (torch.stack(x).to(DEVICE) for x in zip(*rows, strict=True))
    return starts, ends


def backends():
    names = ["torch"]
    try:
        import triton  # noqa: F401
    except ImportError:
        return names
    return names + ["triton"]


def run(backend, q, k, v, starts, ends, **kwargs):
    if backend == "triton":
        from dhsa.kernels.triton_decode import attend_triton_decode_spans

        return attend_triton_decode_spans(q, k, v, starts, ends, scale=0.125, **kwargs)
    return attend_decode(q, k, v, starts, ends, scale=0.125, backend=backend, **kwargs)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize(
    "lengths, heads, page_size, dtype",
    [
        ((301, 77), (4, 2), 16, torch.float32),
        ((129,), (3, 1), 32, torch.float16),
        ((45, 200, 1), (8, 2), 7, torch.float32),
    ],
)
def test_paged_decode_equals_contiguous(rng, backend, lengths, heads, page_size, dtype):
    if backend == "torch" and dtype == torch.float16 and DEVICE.type == "cpu":
        dtype = torch.float32  # the torch path computes in float32 on the CPU either way
    q_heads, kv_heads = heads
    q, k, v = make_qkv(len(lengths), q_heads, kv_heads, 1, max(lengths), 64, rng, dtype=dtype)
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    starts, ends = random_spans(lengths, kv_heads, 9, rng)
    contiguous = run(backend, q, k, v, starts, ends)
    for table_dtype in (torch.int32, torch.int64):
        k_pool, v_pool, table = paginate(k.cpu(), v.cpu(), lengths, page_size, rng, table_dtype)
        paged = run(backend, q, k_pool, v_pool, starts, ends, page_table=table)
        assert torch.isfinite(paged).all(), "a poisoned page or slot was read"
        torch.testing.assert_close(paged, contiguous, rtol=1e-6, atol=1e-6)


def test_paged_decode_of_a_session_selection_equals_contiguous(rng):
    config = dhsa.DHSAConfig(sink=8, local=16, query_block=16, min_chunk=2, max_chunk=16, budget=64)
    q, k, v = make_qkv(2, 4, 2, 1, 300, 32, rng)
    starts, ends = DecodeSession().select_spans(q, k, config, layer=0)
    contiguous = attend_decode(q, k, v, starts, ends, backend="torch")
    k_pool, v_pool, table = paginate(k, v, (300, 300), 16, rng)
    paged = attend_decode(
        q.to(DEVICE), k_pool, v_pool, starts.to(DEVICE), ends.to(DEVICE), page_table=table
    )
    if DEVICE.type == "cpu":  # the same keys gathered in the same order: the same arithmetic
        assert torch.equal(paged, contiguous)
    torch.testing.assert_close(paged.cpu(), contiguous, rtol=1e-5, atol=1e-5)


def test_paged_arguments_are_checked(rng):
    q, k, v = make_qkv(2, 4, 2, 1, 40, 16, rng)
    starts = ends = torch.zeros(2, 2, 3, dtype=torch.int32)
    pool = torch.zeros(5, 8, 2, 16)
    with pytest.raises(ValueError, match="page_table must be"):
        attend_decode(q, pool, pool, starts, ends, page_table=torch.zeros(3, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="int32 or int64"):
        attend_decode(q, pool, pool, starts, ends, page_table=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="pools"):
        attend_decode(q, k, v, starts, ends, page_table=torch.zeros(2, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="contiguous cache"):
        table = torch.zeros(2, 4, dtype=torch.int32)
        attend_decode(q, pool, pool, starts, ends, page_table=table, backend="reference")
