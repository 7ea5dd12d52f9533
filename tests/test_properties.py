"""Property-based checks over methods, shapes, dtypes, windows, softcap and budgets.

Every case draws a configuration and fresh inputs and compares against a float64 masked softmax
written from the definition (``conftest.naive_attention``): the backends must compute exactly the
keys the layout keeps, every layout must be causal, keep sink and local window and stay within
its budget, and a budget covering every key must equal dense attention. Bounded by
``max_examples`` so that the suite takes well under a minute on two CPU cores.
"""

import pytest
import torch

import dhsa
from conftest import naive_attention, rel_error
from dhsa import DHSAConfig

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
given, settings = hypothesis.given, hypothesis.settings

METHODS = sorted(dhsa.SELECTORS)
# Methods whose layout fills the budget exactly and, with a budget covering every key, is dense.
BUDGET_FILLING = ("dense", "dhsa", "block_sparse", "streaming", "oracle_topk")
# Relative error of a run in each dtype against float64 (inputs rounded to the dtype first).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@st.composite
def cases(draw):
    kv_heads = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 2, 3]))
    k_len = draw(st.integers(1, 160))
    query_block = draw(st.sampled_from([4, 8, 16]))
    sink = draw(st.integers(0, 8))
    local = draw(st.integers(0, 24))
    budget = sink + local + query_block + draw(st.integers(0, 96))
    return {
        "method": draw(st.sampled_from(METHODS)),
        "batch": draw(st.integers(1, 2)),
        "kv_heads": kv_heads,
        "q_heads": kv_heads * group,
        "k_len": k_len,
        "q_len": draw(st.integers(1, k_len)),
        "dim": draw(st.sampled_from([8, 16, 24])),
        "dtype": draw(st.sampled_from(list(TOLERANCE))),
        "backend": draw(st.sampled_from(["torch", "reference"])),
        "window": draw(st.one_of(st.none(), st.integers(1, 200))),
        "softcap": draw(st.one_of(st.none(), st.floats(1.0, 50.0))),
        "config": DHSAConfig(
            budget=budget,
            sink=sink,
            local=local,
            query_block=query_block,
            chunk_size=draw(st.sampled_from([4, 16])),
            min_chunk=2,
            max_chunk=draw(st.sampled_from([8, 32])),
            chunker=draw(st.sampled_from(["similarity", "fixed"])),
            dash_block=draw(st.sampled_from([4, 8])),
            hip_block=draw(st.sampled_from([2, 4])),
            min_length=0,
        ),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def inputs(case):
    generator = torch.Generator().manual_seed(case["seed"])
    b, hq, hkv, lq, lk, d = (
        case[n] for n in ("batch", "q_heads", "kv_heads", "q_len", "k_len", "dim")
    )
    shapes = [(b, hq, lq, d), (b, hkv, lk, d), (b, hkv, lk, d)]
    return [torch.randn(s, generator=generator).to(case["dtype"]) for s in shapes]


def attention(case, q, k, v, config):
    """``dhsa.sparse_attention`` as ``case`` asks for it."""
    return dhsa.sparse_attention(
        q,
        k,
        v,
        config,
        method=case["method"],
        sliding_window=case["window"],
        softcap=case["softcap"],
        backend=case["backend"],
    )


def causal_mask(q_len, k_len, window):
    q_pos = torch.arange(k_len - q_len, k_len)[:, None]
    k_pos = torch.arange(k_len)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= q_pos - k_pos < window
    return allowed, q_pos, k_pos


@settings(max_examples=300, deadline=None)
@given(cases())
def test_sparse_attention_is_the_float64_softmax_over_the_selected_keys(case):
    q, k, v = inputs(case)
    config, window = case["config"], case["window"]
    layout = dhsa.select(q, k, config, method=case["method"], sliding_window=window)
    layout.validate()
    out = attention(case, q, k, v, config)
    assert out.dtype == q.dtype and out.shape == q.shape
    mask = layout.to_dense_mask()
    want = naive_attention(q, k, v, mask=mask, window=window, softcap=case["softcap"])
    assert rel_error(out, want) <= TOLERANCE[case["dtype"]], case


@settings(max_examples=300, deadline=None)
@given(cases())
def test_layouts_are_causal_keep_sink_and_window_and_respect_the_budget(case):
    q, k, _ = inputs(case)
    config, window = case["config"], case["window"]
    layout = dhsa.select(q, k, config, method=case["method"], sliding_window=window)
    mask = layout.to_dense_mask()  # [B, Hkv, Lq, Lk]
    allowed, q_pos, k_pos = causal_mask(case["q_len"], case["k_len"], window)
    assert not (mask & ~allowed).any(), "a key after its query or outside the window is kept"
    if case["method"] == "dense":
        assert (mask == allowed).all(), "dense keeps every visible key"
        return
    block_start = case["k_len"] - case["q_len"]
    block_start += (torch.arange(case["q_len"])[:, None] // config.query_block) * config.query_block
    if case["method"] not in ("vertical_slash", "dash"):
        required = (k_pos < config.sink) | (k_pos >= block_start - config.local)
        if case["method"] == "streaming":
            required = (k_pos < config.sink) | (k_pos >= block_start)
        assert (mask | ~(required & allowed)).all(), "sink or local window missing"
    if case["method"] in BUDGET_FILLING:
        kept = layout.num_selected()
        assert int(kept.max()) <= config.budget, (int(kept.max()), config.budget)


@settings(max_examples=200, deadline=None)
@given(cases())
def test_a_budget_covering_every_key_is_dense_attention(case):
    hypothesis.assume(case["method"] in BUDGET_FILLING)
    q, k, v = inputs(case)
    config = case["config"]
    config = config.replace(budget=max(config.budget, case["k_len"]))
    window = case["window"]
    layout = dhsa.select(q, k, config, method=case["method"], sliding_window=window)
    allowed, _, _ = causal_mask(case["q_len"], case["k_len"], window)
    assert (layout.to_dense_mask() == allowed).all(), "the layout is not dense causal"
    out = attention(case, q, k, v, config)
    want = naive_attention(q, k, v, window=window, softcap=case["softcap"])
    assert rel_error(out, want) <= TOLERANCE[case["dtype"]], case
