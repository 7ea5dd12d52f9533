"""sparse_attention and select against independent float64 references."""

import pytest
import torch
import torch.nn.functional as F

import dhsa
from conftest import make_qkv, naive_attention, rel_error
from dhsa import DHSAConfig
from dhsa.methods.fixed_windows import streaming_local

SCORED = ["dhsa", "block_sparse", "oracle_topk"]
METHODS = ["dense", "dhsa", "block_sparse", "streaming", "oracle_topk"]


def covering(length, **changes):
    """A config whose budget covers every key: sparse must equal dense."""
    return DHSAConfig(budget=max(length, 256), min_length=0, **changes)


@pytest.mark.parametrize("length", [1, 63, 1000, 3001])
@pytest.mark.parametrize("method", ["dhsa", "block_sparse"])
def test_covering_budget_reproduces_sdpa(rng, length, method):
    q, k, v = make_qkv(2, 4, 1, length, length, 64, rng)
    out = dhsa.sparse_attention(q, k, v, covering(length), method=method, backend="torch")
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert (out - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("q_heads,kv_heads", [(4, 4), (8, 2), (8, 1)])
@pytest.mark.parametrize("dim", [64, 128])
def test_covering_budget_gqa_and_head_dims(rng, q_heads, kv_heads, dim):
    q, k, v = make_qkv(3, q_heads, kv_heads, 257, 257, dim, rng)
    out = dhsa.sparse_attention(q, k, v, covering(257), backend="torch")
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert (out - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_covering_budget_with_window_and_softcap(rng, backend):
    q, k, v = make_qkv(2, 6, 2, 301, 301, 64, rng)
    kwargs = dict(sliding_window=77, softcap=20.0, scale=0.2)
    out = dhsa.sparse_attention(q, k, v, covering(301), backend=backend, **kwargs)
    ref = naive_attention(q, k, v, window=77, softcap=20.0, scale=0.2)
    assert rel_error(out, ref) < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_fewer_queries_than_keys_matches_reference(rng, method):
    q, k, v = make_qkv(2, 4, 2, 70, 333, 32, rng)
    config = DHSAConfig(budget=160, sink=16, local=32, query_block=16, min_length=0)
    layout = dhsa.select(q, k, config, method=method)
    layout.validate()
    torch_out = dhsa.attend(q, k, v, layout, backend="torch")
    ref = naive_attention(q, k, v, mask=layout.to_dense_mask())
    assert rel_error(torch_out, ref) < 1e-6


def test_streaming_equals_sink_plus_window_attention(rng):
    length = 517
    config = DHSAConfig(budget=200, sink=24, local=48, query_block=32, min_length=0)
    q, k, v = make_qkv(2, 4, 2, length, length, 32, rng)
    out = dhsa.sparse_attention(q, k, v, config, method="streaming", backend="torch")
    q_pos = torch.arange(length)[:, None]
    k_pos = torch.arange(length)[None, :]
    block_start = (q_pos // config.query_block) * config.query_block
    block_len = torch.clamp(length - block_start, max=config.query_block)
    keep = (k_pos < config.sink) | (k_pos >= block_start - streaming_local(config, block_len))
    mask = keep.expand(2, 2, length, length)
    assert rel_error(out, naive_attention(q, k, v, mask=mask)) < 1e-6


@pytest.mark.parametrize("q_len", [1, 37, 100])
def test_streaming_keeps_the_budget_for_partial_query_blocks(rng, q_len):
    q, k, _ = make_qkv(1, 1, 1, q_len, 100, 16, rng)
    config = DHSAConfig(budget=100, sink=4, local=16, query_block=64)
    dense = dhsa.select(q, k, config, method="dense").num_selected()
    for method in ("streaming", "dhsa", "block_sparse"):
        kept = dhsa.select(q, k, config, method=method).num_selected()
        assert torch.equal(kept, dense), (method, kept, dense)
    small = config.replace(budget=90)
    kept = dhsa.select(q[:, :, -1:], k, small, method="streaming").num_selected()
    assert int(kept.min()) == 90


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("window", [None, 300])
def test_layouts_are_causal_keep_sink_and_window_and_respect_budget(rng, method, window):
    length, config = 1111, DHSAConfig(budget=384, sink=32, local=64, query_block=64, min_length=0)
    q, k, v = make_qkv(2, 4, 2, length, length, 32, rng)
    layout = dhsa.select(q, k, config, method=method, sliding_window=window)
    layout.validate()
    mask = layout.to_dense_mask()
    q_pos = torch.arange(length)[:, None]
    k_pos = torch.arange(length)[None, :]
    causal = k_pos <= q_pos
    if window is not None:
        causal &= q_pos - k_pos < window
    assert not (mask & ~causal).any(), "a key after its query (or outside the window) is kept"
    block_start = (q_pos // config.query_block) * config.query_block
    block_len = torch.clamp(length - block_start, max=config.query_block)
    local = streaming_local(config, block_len) if method == "streaming" else config.local
    required = ((k_pos < config.sink) | (k_pos >= block_start - local)) & causal
    assert (mask | ~required).all(), "sink or local window missing"
    if method != "dense":
        counts = layout.num_selected()
        assert int(counts.max()) <= config.budget + config.max_chunk


def test_dhsa_with_small_budget_differs_from_dense_but_stays_close_on_structured_input(rng):
    length = 2048
    q, k, v = make_qkv(1, 4, 2, length, length, 64, rng)
    config = DHSAConfig(budget=512, min_length=0)
    layout = dhsa.select(q, k, config)
    assert 0.1 < layout.density() < 0.6
    out = dhsa.attend(q, k, v, layout, backend="torch")
    ref = naive_attention(q, k, v, mask=layout.to_dense_mask())
    assert rel_error(out, ref) < 1e-6
    dense = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert rel_error(out, dense) > 1e-3


def test_dhsa_selects_the_chunk_a_query_block_points_at(rng):
    """A far-away chunk whose keys align with the last query block must be selected."""
    length, dim = 2048, 64
    q, k, v = make_qkv(1, 2, 1, length, length, dim, rng)
    k = k * 0.1
    target = torch.randn(dim, generator=rng)
    k[0, 0, 500:540] = target + 0.01 * torch.randn(40, dim, generator=rng)
    q[0, :, -64:] = target
    config = DHSAConfig(budget=384, sink=32, local=64, min_length=0)
    for method in ("dhsa", "block_sparse"):
        layout = dhsa.select(q, k, config, method=method)
        last = layout.to_dense_mask()[0, 0, -1]
        assert last[500:540].all(), method


def test_shared_boundaries_are_used(rng):
    q, k, _ = make_qkv(2, 2, 1, 400, 400, 16, rng)
    bounds = torch.tensor([[0, 100, 400], [0, 200, 400]])
    config = DHSAConfig(budget=160, sink=16, local=32, query_block=16, min_length=0)
    layout = dhsa.select(q, k, config, boundaries=bounds)
    for start, end in layout.spans(0, 0, layout.num_q_blocks - 1):
        assert not (start < 100 < end) or start >= 16


def test_torch_backend_matches_reference_on_random_layouts_with_bias(rng):
    from dhsa import Geometry, Layout

    batch, kv_heads, q_len, k_len, bq = 2, 2, 45, 90, 8
    q, k, v = make_qkv(batch, 6, kv_heads, q_len, k_len, 16, rng)
    rows = batch * kv_heads * -(-q_len // bq)
    mask = torch.rand(rows, k_len, generator=rng) < 0.3
    mask[0] = False
    for window in (None, 20):
        base = Layout.from_key_mask(
            mask,
            Geometry(batch, kv_heads, q_len, k_len, bq, window),
        )
        layout = Layout(**{**base.__dict__, "span_bias": torch.randn(base.nnz, generator=rng)})
        ref = dhsa.attend(q, k, v, layout, backend="reference")
        for softcap in (None, 5.0):
            out = dhsa.attend(q, k, v, layout, backend="torch", softcap=softcap)
            expected = (
                ref
                if softcap is None
                else dhsa.attend(q, k, v, layout, backend="reference", softcap=softcap)
            )
            assert rel_error(out, expected) < 1e-6
        empty_rows = ~dhsa.Layout.to_dense_mask(layout).any(-1)
        assert empty_rows[0, 0, :bq].all()
        out = dhsa.attend(q, k, v, layout, backend="torch")
        group = 3
        assert (out[empty_rows.repeat_interleave(group, dim=1)] == 0).all()


@pytest.mark.parametrize("cut", ["length", "padding", "heads"])
def test_torch_backend_reads_views_of_a_cache_like_copies(rng, cut):
    q, k, v = make_qkv(2, 6, 3, 1, 120, 16, rng)
    if cut == "length":  # a cache with room for more positions, read up to the query
        k, v = (torch.cat([x, torch.randn_like(x)], dim=2)[:, :, :120] for x in (k, v))
    elif cut == "padding":  # one left-padded row, read after its pads
        q, k, v = q[1:], k[1:, :, 17:], v[1:, :, 17:]
    else:  # heads cut out of a larger cache: no in-place reading, a copy
        q, k, v = q[:, :4], k[:, 1:], v[:, 1:]
    layout = dhsa.select(q, k, DHSAConfig(budget=64, sink=4, local=8, query_block=8))
    out = dhsa.attend(q, k, v, layout, backend="torch")
    copies = dhsa.attend(q, k.contiguous(), v.contiguous(), layout, backend="torch")
    assert not k.is_contiguous()
    torch.testing.assert_close(out, copies, rtol=0, atol=0)
    torch.testing.assert_close(out, dhsa.attend(q, k, v, layout, backend="reference"))


def test_bf16_torch_backend_error_within_dtype_noise(rng):
    q, k, v = make_qkv(1, 4, 2, 700, 700, 64, rng)
    config = DHSAConfig(budget=256, sink=16, local=64, min_length=0)
    layout = dhsa.select(q, k, config)
    ref = naive_attention(q, k, v, mask=layout.to_dense_mask())
    qb, kb, vb = (x.bfloat16() for x in (q, k, v))
    out = dhsa.attend(qb, kb, vb, layout, backend="torch")
    eager = naive_attention(qb.float(), kb.float(), vb.float(), mask=layout.to_dense_mask())
    eager_err = rel_error(eager.bfloat16(), ref)
    assert out.dtype == torch.bfloat16
    assert rel_error(out, ref) <= 2 * eager_err + 1e-3


def test_auto_backend_below_min_length_is_dense(rng):
    q, k, v = make_qkv(1, 4, 2, 300, 300, 32, rng)
    out = dhsa.sparse_attention(q, k, v, DHSAConfig(budget=256, min_length=4096))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert (out - ref).abs().max().item() < 1e-5


def test_default_min_length_is_the_measured_one_for_the_device(rng):
    from dhsa.config import AUTO_MIN_LENGTH

    config = DHSAConfig(budget=256)
    assert config.dense_below("cpu") == AUTO_MIN_LENGTH["cpu"]
    assert config.dense_below(torch.device("cuda", 0)) == AUTO_MIN_LENGTH["cuda"]
    assert config.replace(min_length=123).dense_below("cuda") == 123
    q, k, v = make_qkv(1, 4, 2, 600, 600, 32, rng)
    sparse = dhsa.sparse_attention(q, k, v, config.replace(min_length=500))
    dense = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert (sparse - dense).abs().max().item() > 1e-3, "the budget leaves keys out at 600"
    assert (dhsa.sparse_attention(q, k, v, config) - dense).abs().max().item() < 1e-5


@pytest.mark.parametrize("where", ["q", "k"])
@pytest.mark.parametrize("method", SCORED[:2])
def test_non_finite_inputs_raise(rng, where, method):
    q, k, v = make_qkv(1, 2, 1, 500, 500, 16, rng)
    {"q": q, "k": k}[where][0, 0, 123, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        dhsa.sparse_attention(q, k, v, DHSAConfig(budget=256, min_length=0), method=method)


def test_non_finite_values_never_become_finite_output_in_attend(rng):
    """``attend`` computes what it is given: Inf in a key the layout keeps is not hidden."""
    q, k, v = make_qkv(1, 2, 1, 100, 100, 16, rng)
    config = DHSAConfig(budget=256, min_length=0)
    for method in ("dense", "streaming"):
        layout = dhsa.select(q, k, config, method=method)
        bad = k.clone()
        bad[0, 0, 3, 0] = float("inf")
        out = dhsa.attend(q, bad, v, layout, backend="torch")
        assert not torch.isfinite(out[0, :, 3:]).all()


@pytest.mark.parametrize("likely", [1, 3, 10_000])
def test_greedy_fill_does_not_depend_on_the_first_top_k_guess(rng, monkeypatch, likely):
    """The fill first ranks a guessed number of chunks and falls back to the sure bound when some
    block needs more: either way the layout is the one the sure bound gives."""
    import dhsa.methods.greedy as greedy

    q, k, _ = make_qkv(2, 4, 2, 700, 700, 16, rng)
    config = DHSAConfig(budget=160, sink=8, local=16, query_block=16, min_chunk=2, max_chunk=40)
    expected = dhsa.select(q, k, config, method="dhsa")
    monkeypatch.setattr(greedy, "likely_chunks_taken", lambda bounds, remaining: likely)
    got = dhsa.select(q, k, config, method="dhsa")
    for name in ("offsets", "starts", "ends"):
        assert torch.equal(getattr(got, name), getattr(expected, name))
