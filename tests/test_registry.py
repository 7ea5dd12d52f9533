"""Method records: a method registered from outside behaves like a built-in one."""

import pytest
import torch

import dhsa
from conftest import make_qkv, naive_attention, rel_error
from dhsa import DHSAConfig
from dhsa.attention import runs_dense
from dhsa.methods import METHODS, IncrementalDecode, Method, get_method, register_method
from dhsa.methods.fixed_windows import select_streaming

CONFIG = DHSAConfig(budget=48, sink=4, local=8, query_block=8, min_length=0)


@pytest.fixture
def counted():
    """A streaming selector that counts its calls; methods registered in the test are removed."""
    before = dict(METHODS)
    calls = []

    def selector(q, k, config, **kwargs):
        calls.append(q.shape[2])
        return select_streaming(q, k, config, **kwargs)

    yield selector, calls
    METHODS.clear()
    METHODS.update(before)


def test_register_method_keeps_its_two_argument_form(rng, counted):
    selector, calls = counted
    record = dhsa.register_method("mine", selector)
    assert get_method("mine") is record and dhsa.SELECTORS["mine"] is selector
    assert "mine" in dhsa.SELECTORS and len(dhsa.SELECTORS) == len(METHODS)
    assert record.decode is None and not (record.fills_budget or record.dense)
    q, k, v = make_qkv(1, 4, 2, 100, 100, 16, rng)
    out = dhsa.sparse_attention(q, k, v, CONFIG, method="mine")
    want = dhsa.sparse_attention(q, k, v, CONFIG, method="streaming", backend="torch")
    assert calls == [100] and rel_error(out, want) < 1e-6


@pytest.mark.parametrize("fills_budget", [True, False])
def test_a_budget_filling_method_runs_short_windows_dense(rng, counted, fills_budget):
    selector, calls = counted
    register_method("mine", selector, fills_budget=fills_budget)
    q, k, v = make_qkv(1, 4, 2, 100, 100, 16, rng)
    window = CONFIG.budget
    out = dhsa.sparse_attention(q, k, v, CONFIG, method="mine", sliding_window=window)
    assert calls == ([] if fills_budget else [100])
    if fills_budget:
        want = naive_attention(q, k, v, window=window)
    else:  # streaming's own selection, which keeps fewer keys than the window holds
        layout = select_streaming(q, k, CONFIG, sliding_window=window)
        want = naive_attention(q, k, v, window=window, mask=layout.to_dense_mask())
    assert rel_error(out, want) < 1e-6


def test_a_dense_method_never_selects(rng, counted):
    selector, calls = counted
    register_method("mine", selector, dense=True)
    q, k, v = make_qkv(1, 4, 2, 100, 100, 16, rng)
    out = dhsa.sparse_attention(q, k, v, CONFIG, method="mine")
    assert calls == [] and rel_error(out, naive_attention(q, k, v)) < 1e-6
    out = dhsa.sparse_attention(q, k, v, CONFIG, method="mine", backend="torch")
    assert calls == [100], "a named backend runs the selection"


def test_one_query_without_sparse_decode_runs_dense(rng, counted):
    selector, calls = counted
    register_method("mine", selector)
    q, k, v = make_qkv(1, 4, 2, 1, 100, 16, rng)
    config = CONFIG.replace(sparse_decode=False)
    out = dhsa.sparse_attention(q, k, v, config, method="mine")
    assert calls == [] and rel_error(out, naive_attention(q, k, v)) < 1e-6
    dhsa.sparse_attention(q, k, v, CONFIG, method="mine")
    assert calls == [1]


def test_routing_rule():
    route = dict(q_len=64, k_len=1000, device=torch.device("cpu"), sliding_window=None)
    dhsa_method, hip = get_method("dhsa"), get_method("hip")
    assert not runs_dense(dhsa_method, CONFIG, **route)
    assert runs_dense(get_method("dense"), CONFIG, **route)
    assert runs_dense(dhsa_method, CONFIG.replace(min_length=1001), **route)
    assert not runs_dense(dhsa_method, CONFIG.replace(min_length=1000), **route)
    short = {**route, "sliding_window": CONFIG.budget}
    assert runs_dense(dhsa_method, CONFIG, **short) and not runs_dense(hip, CONFIG, **short)
    longer = {**route, "sliding_window": CONFIG.budget + 1}
    assert not runs_dense(dhsa_method, CONFIG, **longer)


def test_built_in_decode_records():
    dhsa_decode = get_method("dhsa").decode
    assert dhsa_decode.norm_for(CONFIG) == "peak" and dhsa_decode.keeps_probe(CONFIG)
    paper = CONFIG.replace(scoring="paper")
    assert dhsa_decode.norm_for(paper) == "sqrt" and not dhsa_decode.keeps_probe(paper)
    assert dhsa_decode.config_for(CONFIG) is CONFIG
    block = get_method("block_sparse").decode
    assert block.norm_for(CONFIG) == "mean"
    assert block.config_for(CONFIG) == CONFIG.replace(chunker="fixed")
    assert {n for n, m in METHODS.items() if m.decode} == {"dhsa", "block_sparse"}


def test_bad_records_are_refused():
    with pytest.raises(ValueError, match="identifier"):
        register_method("two words", select_streaming)
    with pytest.raises(TypeError, match="callable"):
        Method(name="mine", select="select_streaming")
    with pytest.raises(ValueError, match="unknown decode norm 'median'"):
        IncrementalDecode(norm="median")
    with pytest.raises(ValueError, match="unknown decode chunker"):
        IncrementalDecode(norm="mean", chunker="random")
    with pytest.raises(TypeError, match="IncrementalDecode"):
        Method(name="mine", select=select_streaming, decode="mean")
    with pytest.raises(ValueError, match="decode norm 'x' is unknown"):
        IncrementalDecode(norm=lambda config: "x").norm_for(CONFIG)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")
    assert "two words" not in METHODS
