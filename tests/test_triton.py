"""The Triton backend against the float32 reference backend, on fresh random inputs.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set here before
triton is imported) on small shapes. The interpreter's bfloat16 matrix product is wrong (its inputs
are not converted), so bfloat16 is checked on the GPU only.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

import dhsa  # noqa: E402
from conftest import make_qkv, rel_error  # noqa: E402
from dhsa.decode import DecodeSession  # noqa: E402
from dhsa.kernels.reference import attend_reference  # noqa: E402
from dhsa.kernels.triton_decode import (  # noqa: E402
    attend_triton_decode,
    attend_triton_decode_spans,
)
from dhsa.kernels.triton_prefill import attend_triton, launch_prefill  # noqa: E402
from dhsa.layout import Geometry, Layout  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
SMALL = dict(sink=8, local=16, query_block=16, min_chunk=2, max_chunk=16, budget=64)


def eager_same_dtype(q, k, v, layout, scale, softcap):
    """Masked dense attention computed in the inputs' dtype: the dtype's own rounding noise."""
    group = q.shape[1] // k.shape[1]
    mask = layout.to_dense_mask().repeat_interleave(group, dim=1)
    logits = (q @ k.repeat_interleave(group, dim=1).transpose(-1, -2)) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if layout.span_bias is not None:
        bias = layout.key_bias().view(layout.batch, layout.kv_heads, layout.num_q_blocks, 1, -1)
        bias = bias.expand(-1, -1, -1, layout.query_block, -1).flatten(2, 3)[:, :, : layout.q_len]
        logits = logits + bias.repeat_interleave(group, dim=1).to(logits.dtype)
    logits = logits.masked_fill(~mask, -torch.inf)
    probs = torch.softmax(logits.float(), dim=-1).nan_to_num(0.0).to(q.dtype)
    return probs @ v.repeat_interleave(group, dim=1)


def assert_close_to_reference(out, q, k, v, layout, *, scale, softcap=None):
    """Error vs float32 within about twice what an eager same-dtype run makes."""
    assert torch.isfinite(out).all(), "unwritten or non-finite outputs"
    cpu = [x.cpu().float() for x in (q, k, v)]
    layout_cpu = move_layout(layout, torch.device("cpu"))
    ref = attend_reference(*cpu, layout_cpu, scale=scale, softcap=softcap)
    eager = eager_same_dtype(*[x.cpu() for x in (q, k, v)], layout_cpu, scale, softcap)
    noise = rel_error(eager.float(), ref)
    error = rel_error(out.cpu().float(), ref)
    assert error <= 2 * noise + 1e-5, f"error {error:.3g} vs same-dtype eager noise {noise:.3g}"


def move_layout(layout: Layout, device: torch.device) -> Layout:
    fields = {f: getattr(layout, f) for f in ("offsets", "starts", "ends", "span_bias")}
    moved = {f: None if t is None else t.to(device) for f, t in fields.items()}
    return Layout(
        **moved,
        geometry=layout.geometry,
    )


def poisoned(q):
    return torch.full_like(q, float("nan"))


def to_device(*tensors, dtype):
    return [t.to(device=DEVICE, dtype=dtype) for t in tensors]


def random_spans_layout(
    generator, *, batch, kv_heads, q_len, k_len, query_block, bias, empty, window=None
):
    """Disjoint random spans per row (some rows left empty), with optional span bias."""
    rows = batch * kv_heads * (-(-q_len // query_block))
    cuts = torch.sort(torch.randint(0, k_len + 1, (rows, 12), generator=generator), dim=1).values
    starts, ends = cuts[:, 0::2], cuts[:, 1::2]
    keep = torch.rand(rows, generator=generator) >= empty
    ends = torch.where(keep[:, None], ends, starts)
    span_bias = torch.randn(starts.shape, generator=generator) if bias else None
    return Layout.from_padded(
        starts,
        ends,
        Geometry(batch, kv_heads, q_len, k_len, query_block, window),
        bias=span_bias,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, window, softcap",
    [
        ((1, 4, 2, 131, 131, 64), None, None),
        ((2, 6, 2, 77, 150, 64), 40, None),
        ((1, 2, 1, 61, 97, 128), None, 5.0),
    ],
)
def test_prefill_matches_reference(rng, dtype, shape, window, softcap):
    batch, q_heads, kv_heads, q_len, k_len, dim = shape
    q, k, v = to_device(*make_qkv(batch, q_heads, kv_heads, q_len, k_len, dim, rng), dtype=dtype)
    layout = dhsa.select(q, k, dhsa.DHSAConfig(**SMALL), sliding_window=window)
    scale = dim**-0.5
    out = launch_prefill(q, k, v, layout, scale=scale, softcap=softcap, out=poisoned(q))
    assert_close_to_reference(out, q, k, v, layout, scale=scale, softcap=softcap)


def test_prefill_head_dim_256_with_span_bias_and_empty_rows(rng):
    q, k, v = to_device(*make_qkv(1, 3, 1, 45, 70, 256, rng), dtype=torch.float16)
    layout = random_spans_layout(
        rng, batch=1, kv_heads=1, q_len=45, k_len=70, query_block=16, bias=True, empty=0.3
    )
    layout = move_layout(layout, DEVICE)
    out = launch_prefill(q, k, v, layout, scale=0.07, softcap=None, out=poisoned(q))
    assert_close_to_reference(out, q, k, v, layout, scale=0.07)


def test_query_blocks_without_keys_output_zero(rng):
    q, k, v = to_device(*make_qkv(1, 2, 1, 40, 40, 64, rng), dtype=torch.float32)
    # Row 0 has no span; row 1's only span lies after all its queries (causally invisible).
    layout = Layout.from_row_spans(
        torch.tensor([1, 2]),
        torch.tensor([35, 0]),
        torch.tensor([40, 40]),
        Geometry(1, 1, 40, 40, 16),
    )
    layout = move_layout(layout, DEVICE)
    out = launch_prefill(q, k, v, layout, scale=0.125, softcap=None, out=poisoned(q))
    assert (out[:, :, :32] == 0).all()
    assert_close_to_reference(out, q, k, v, layout, scale=0.125)


@pytest.mark.parametrize("method", ["dense", "block_sparse", "streaming", "oracle_topk"])
def test_every_method_layout_runs(rng, method):
    q, k, v = to_device(*make_qkv(1, 4, 2, 93, 93, 64, rng), dtype=torch.float16)
    config = dhsa.DHSAConfig(**dict(SMALL, chunk_size=8))
    layout = dhsa.select(q, k, config, method=method)
    out = attend_triton(q, k, v, layout, scale=0.125)
    assert_close_to_reference(out, q, k, v, layout, scale=0.125)


@pytest.mark.parametrize("window, softcap, bias", [(None, None, False), (50, 3.0, True)])
def test_decode_matches_reference(rng, window, softcap, bias):
    batch, k_len = 3, 301
    q, k, v = to_device(*make_qkv(batch, 4, 2, 1, k_len, 64, rng), dtype=torch.float16)
    if bias:
        layout = random_spans_layout(
            rng,
            batch=batch,
            kv_heads=2,
            q_len=1,
            k_len=k_len,
            query_block=16,
            bias=True,
            empty=0.2,
            window=window,
        )
        layout = move_layout(layout, DEVICE)
    else:
        layout = dhsa.select(q, k, dhsa.DHSAConfig(**SMALL), sliding_window=window)
    for splits in (1, 3):
        out = attend_triton_decode(
            q, k, v, layout, scale=0.125, softcap=softcap, splits=splits, out=poisoned(q)
        )
        assert_close_to_reference(out, q, k, v, layout, scale=0.125, softcap=softcap)


@pytest.mark.parametrize("dim, softcap", [(64, None), (128, 4.0), (256, None)])
def test_decode_spans_match_reference(rng, dim, softcap):
    batch, kv_heads, k_len, width = 2, 2, 257, 9
    q, k, v = to_device(*make_qkv(batch, 6, kv_heads, 1, k_len, dim, rng), dtype=torch.float16)
    # Disjoint spans in random order, a third of them empty, as a decode fill leaves them.
    cuts = torch.sort(torch.randint(0, k_len + 1, (batch * kv_heads, 2 * width), generator=rng))
    starts, ends = cuts.values[:, 0::2], cuts.values[:, 1::2]
    ends = torch.where(torch.rand(starts.shape, generator=rng) < 0.33, starts, ends)
    shuffle = torch.argsort(torch.rand(starts.shape, generator=rng), dim=1)
    starts, ends = starts.gather(1, shuffle), ends.gather(1, shuffle)
    layout = Layout.from_padded(starts, ends, Geometry(batch, kv_heads, 1, k_len, 1))
    spans = [x.view(batch, kv_heads, width).to(DEVICE) for x in (starts, ends)]
    for splits in (1, 4):
        out = attend_triton_decode_spans(
            q, k, v, *spans, scale=0.1, softcap=softcap, splits=splits, out=poisoned(q)
        )
        assert_close_to_reference(out, q, k, v, layout, scale=0.1, softcap=softcap)


def test_decode_spans_of_a_session_match_its_layout(rng):
    config = dhsa.DHSAConfig(**SMALL)
    q, k, v = to_device(*make_qkv(2, 4, 2, 1, 300, 64, rng), dtype=torch.float32)
    session = DecodeSession()
    starts, ends = session.select_spans(q, k, config, layer=0)
    out = attend_triton_decode_spans(q, k, v, starts, ends, scale=0.125, out=poisoned(q))
    layout = DecodeSession().select(q, k, config, layer=0)
    assert_close_to_reference(out, q, k, v, layout, scale=0.125)


def spans_mask(starts, ends, k_len):
    return Layout.from_decode_spans(starts.cpu(), ends.cpu(), k_len).to_dense_mask()


@pytest.mark.parametrize("norm, budget", [("sqrt", 96), ("mean", 96), ("sqrt", 4096)])
def test_decode_fill_kernel_matches_the_torch_fill(rng, norm, budget):
    config = dhsa.DHSAConfig(**dict(SMALL, budget=budget, query_block=8))
    batch, length = 2, 400
    q = torch.randn(batch, 6, length, 32, generator=rng).to(DEVICE)
    k = torch.randn(batch, 2, length, 32, generator=rng).to(DEVICE)
    session = DecodeSession()
    for now in range(331, length + 1, 23):
        query = q[:, :, now - 1 : now]
        session.select_spans(query, k[:, :, :now], config, layer=0, norm=norm)
        chunks = session._chunks[(0, None)]
        want = chunks.fill(query, config, use_triton=False)
        got = chunks.fill(query, config, use_triton=True)
        assert got[0].dtype == torch.int32 and got[0].shape == want[0].shape
        assert torch.equal(spans_mask(*got, now), spans_mask(*want, now))
        assert int((got[1] - got[0]).clamp(min=0).sum(-1).min()) == min(budget, now)


@pytest.mark.parametrize("norm", ["sqrt", "mean"])
def test_decode_chunk_scores_kernel_matches_the_torch_scores(rng, norm):
    from dhsa.kernels.triton_decode_scores import chunk_scores_triton

    config = dhsa.DHSAConfig(**dict(SMALL, query_block=8))
    q = torch.randn(2, 6, 1, 32, generator=rng).to(DEVICE)
    k = torch.randn(2, 2, 257, 32, generator=rng).to(DEVICE)
    session = DecodeSession()
    session.select_spans(q, k, config, layer=0, norm=norm)
    chunks = session._chunks[(0, None)]
    want = chunks.chunk_scores(q)
    got = chunk_scores_triton(q, chunks.table, chunks.lo, length=257, norm=norm)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def greedy_both_ways(
    q, k, config, *, norm="sqrt", window=None, tile_elements=1 << 24, scale=1.0, ways=(False, True)
):
    """The prefill fill of ``dhsa`` chunks by the torch tensor steps and by the Triton kernel."""
    from dhsa.chunking import compute_boundaries, fixed_boundaries
    from dhsa.methods.greedy import greedy_layout
    from dhsa.methods.regions import block_regions
    from dhsa.methods.scoring import chunk_representations, query_block_representations

    k_len = k.shape[2]
    if norm == "sqrt":
        bounds = compute_boundaries(k, config)
    else:
        bounds = fixed_boundaries(k.shape[0], k_len, config.chunk_size, k.device)
    geometry = Geometry.of(q, k, config.query_block, window)
    regions = block_regions(geometry, config.sink, config.local, k.device)
    q_rep = query_block_representations(q, k.shape[1], config.query_block, norm) * scale
    k_rep = chunk_representations(k, bounds, norm) * scale
    return [
        greedy_layout(
            q_rep,
            k_rep,
            bounds,
            regions,
            budget=config.budget,
            geometry=geometry,
            tile_elements=tile_elements,
            use_triton=use_triton,
        )
        for use_triton in ways
    ]


@pytest.mark.parametrize(
    "norm, budget, window, q_len, tile",
    [
        ("sqrt", 64, None, 333, 1 << 24),
        ("sqrt", 160, None, 333, 700),  # several tiles of query blocks
        ("mean", 96, None, 150, 1 << 24),  # queries after a cached prefix
        ("sqrt", 96, 120, 333, 1 << 24),  # sliding window
        ("sqrt", 4096, None, 333, 1 << 24),  # the budget covers every key
    ],
)
def test_prefill_fill_kernel_keeps_the_keys_of_the_torch_fill(
    rng, norm, budget, window, q_len, tile
):
    config = dhsa.DHSAConfig(**dict(SMALL, budget=budget, chunk_size=16))
    q = torch.randn(2, 6, q_len, 32, generator=rng).to(DEVICE)
    k = torch.randn(2, 2, 333, 32, generator=rng).to(DEVICE)
    want, got = greedy_both_ways(q, k, config, norm=norm, window=window, tile_elements=tile)
    got.validate()
    assert got.starts.dtype == torch.int32 and got.num_rows == want.num_rows
    assert torch.equal(got.key_membership(), want.key_membership())
    for name in ("offsets", "starts", "ends"):  # the two fills give the very same spans
        assert torch.equal(getattr(got, name).cpu(), getattr(want, name).cpu())
    kept = got.num_selected()
    assert int(kept.max()) <= budget, "no block keeps more than its budget"


def test_prefill_fill_kernel_refuses_overflowing_scores(rng):
    config = dhsa.DHSAConfig(**SMALL)
    q = torch.randn(1, 2, 200, 32, generator=rng).to(DEVICE)
    k = torch.randn(1, 1, 200, 32, generator=rng).to(DEVICE)
    from dhsa.methods.greedy import NonFiniteInputError

    with pytest.raises(NonFiniteInputError, match="not finite"):
        greedy_both_ways(q, k, config, scale=1e30, ways=(True,))


def test_decode_is_chosen_for_single_query_layouts(rng):
    q, k, v = to_device(*make_qkv(2, 2, 2, 1, 130, 64, rng), dtype=torch.float32)
    layout = dhsa.select(q, k, dhsa.DHSAConfig(**SMALL))
    out = attend_triton(q, k, v, layout, scale=0.125)
    assert_close_to_reference(out, q, k, v, layout, scale=0.125)


def test_budget_covering_everything_equals_dense_sdpa(rng):
    q, k, v = to_device(*make_qkv(1, 4, 2, 111, 111, 64, rng), dtype=torch.float16)
    layout = dhsa.select(q, k, dhsa.DHSAConfig(**dict(SMALL, budget=4096)))
    out = attend_triton(q, k, v, layout, scale=0.125)
    dense = F.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), is_causal=True, scale=0.125, enable_gqa=True
    )
    assert rel_error(out.float(), dense) < 2e-3


def test_rejects_unsupported_inputs(rng):
    q, k, v = make_qkv(1, 2, 1, 20, 20, 64, rng, dtype=torch.float64)
    layout = dhsa.select(q.float(), k.float(), dhsa.DHSAConfig(**SMALL))
    with pytest.raises(TypeError, match="float64"):
        attend_triton(q, k, v, layout, scale=0.125)
    q, k, v = to_device(*make_qkv(1, 2, 1, 20, 20, 512, rng), dtype=torch.float16)
    with pytest.raises(ValueError, match="head dims"):
        attend_triton(q, k, v, move_layout(layout, DEVICE), scale=0.125)
