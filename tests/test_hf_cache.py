"""transformers' static cache (and torch.compile of its decode step) with the "dhsa" attention."""

import pytest
import torch

import dhsa

pytest.importorskip("transformers")
from transformers import StaticCache  # noqa: E402

from dhsa.hf import padding_mask  # noqa: E402
from test_hf import ARCHS, FULL, SMALL, greedy, prompt, tiny_model  # noqa: E402

STEPS = 10


def _state_lengths(model):
    binding = model.model.layers[0].self_attn._dhsa_binding
    return {key: chunks.length for key, chunks in binding.session._chunks.items()}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_static_and_dynamic_caches_equal_reference_with_a_covering_budget(arch):
    model, _ = tiny_model(arch)
    ids = prompt(75)
    ref_seq, ref_steps = greedy(model, ids, steps=STEPS)
    dhsa.configure(model, FULL)
    for cache in ("static", "dynamic"):
        seq, steps = greedy(model, ids, steps=STEPS, cache_implementation=cache)
        torch.testing.assert_close(steps, ref_steps, rtol=1e-5, atol=1e-5)
        assert torch.equal(seq, ref_seq), cache


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_static_cache_equals_dynamic_with_a_small_budget(arch):
    model, _ = tiny_model(arch)
    ids = prompt(75)
    _, ref_steps = greedy(model, ids, steps=STEPS)
    dhsa.configure(model, SMALL)
    seq, steps = greedy(model, ids, steps=STEPS, cache_implementation="static")
    static_state = _state_lengths(model)
    dyn_seq, dyn_steps = greedy(model, ids, steps=STEPS)
    torch.testing.assert_close(steps, dyn_steps, rtol=1e-5, atol=1e-5)
    assert torch.equal(seq, dyn_seq)
    assert (steps - ref_steps).abs().max() > 1e-3, "the small budget changed nothing"
    if arch != "mistral":  # every mistral layer slides within the budget: dense, no state
        # The state absorbed the written keys only, not the static cache's empty slots.
        assert static_state and set(static_state.values()) == {75 + STEPS - 1}


def test_static_cache_with_left_padding_equals_rows_alone():
    model, _ = tiny_model("llama")
    dhsa.configure(model, SMALL)
    long, short = prompt(71, seed=3)[0], prompt(52, seed=4)[0]
    ids = torch.zeros(2, 71, dtype=torch.long)
    ids[0], ids[1, 19:] = long, short
    mask = (ids != 0).long()
    batch_seq, _ = greedy(model, ids, steps=8, attention_mask=mask, cache_implementation="static")
    for row, alone in ((0, long), (1, short)):
        seq, _ = greedy(model, alone[None], steps=8)
        assert torch.equal(batch_seq[row, -8:], seq[0, -8:])


def test_static_cache_chunked_prefill_and_decode_equal_reference():
    model, _ = tiny_model("qwen2")
    ids = prompt(90)
    with torch.no_grad():
        ref = model(ids).logits[:, 86:89]
        dhsa.configure(model, FULL)
        cache = StaticCache(config=model.config, max_cache_len=128)
        model(ids[:, :50], cache=cache, use_cache=True)
        out = [model(ids[:, 50:87], cache=cache, use_cache=True).logits[:, -1]]
        for n in (87, 88):
            out.append(model(ids[:, n : n + 1], cache=cache, use_cache=True).logits[:, -1])
    torch.testing.assert_close(torch.stack(out, dim=1), ref, rtol=1e-5, atol=1e-5)
    assert set(_state_lengths(model).values()) == {89}


def test_mask_marks_written_keys_of_a_static_cache():
    position = torch.tensor(5)  # a static cache's query offset is a tensor
    mask = padding_mask(2, 1, 8, q_offset=position, kv_offset=0, attention_mask=None)
    assert mask.tolist() == [[True] * 6 + [False] * 2] * 2
    padded = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
    mask = padding_mask(2, 1, 8, q_offset=position, kv_offset=0, attention_mask=padded)
    assert mask.tolist() == [[False, False] + [True] * 4 + [False] * 2, [True] * 6 + [False] * 2]
    assert padding_mask(2, 1, 6, q_offset=5, kv_offset=0, attention_mask=None) is None
    with pytest.raises(ValueError, match="end before the last query"):
        padding_mask(1, 2, 6, q_offset=5, kv_offset=0, attention_mask=None)


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_non_finite_decode_input_raises_with_either_cache(cache):
    model, _ = tiny_model("llama")
    dhsa.configure(model, FULL)
    poisoned = 7
    with torch.no_grad():
        model.model.embed_tokens.weight[poisoned, 0] = float("nan")
    ids = prompt(40)
    ids[ids == poisoned] = 8
    generated, _ = greedy(model, ids, steps=2, cache_implementation=cache)
    assert generated.shape[1] == 42
    binding = model.model.layers[0].self_attn._dhsa_binding
    with torch.no_grad():
        prefix = model(ids, use_cache=True)
        with pytest.raises(dhsa.NonFiniteInputError):
            model(ids[:, :1] * 0 + poisoned, cache=prefix.cache)
    assert binding._non_finite is None, "a raised check must not carry over to the next step"


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_compiled_static_cache_decode_gives_the_eager_tokens(arch):
    """Both transformers recipes: ``compile_config`` in ``generate`` and a compiled forward."""
    from transformers import CompileConfig

    model, _ = tiny_model(arch)
    dhsa.configure(model, SMALL)
    ids = prompt(75)
    eager_seq, eager_steps = greedy(model, ids, steps=6, cache_implementation="static")
    torch._dynamo.reset()
    config = CompileConfig(backend="aot_eager", fullgraph=False, mode=None)
    config._compile_all_devices = True  # transformers compiles on accelerators only by default
    seq, steps = greedy(model, ids, steps=6, cache_implementation="static", compile_config=config)
    assert hasattr(model, "_compiled_call"), "generate did not compile the decode step"
    binding = model.model.layers[0].self_attn._dhsa_binding
    assert binding._non_finite is None, "compiled steps left an unread NaN check behind"
    assert torch.equal(seq, eager_seq)
    torch.testing.assert_close(steps, eager_steps, rtol=1e-5, atol=1e-5)
    model.forward = torch.compile(model.forward, backend="aot_eager")
    seq, _ = greedy(model, ids, steps=6, cache_implementation="static", disable_compile=True)
    assert torch.equal(seq, eager_seq)


def _explain_decode_step(model):
    cache = StaticCache(config=model.config, max_cache_len=96)
    with torch.no_grad():
        token = model(prompt(75), cache=cache, use_cache=True).logits[:, -1:].argmax(dim=-1)
        torch._dynamo.reset()
        return torch._dynamo.explain(model.forward)(token, cache=cache, use_cache=True)


def test_compiled_sparse_decode_breaks_the_graph_only_at_the_selection():
    model, _ = tiny_model("llama")
    dhsa.configure(model, SMALL)
    explained = _explain_decode_step(model)
    assert explained.graph_break_count >= 1
    for reason in explained.break_reasons:
        assert "_attention_eager" in reason.reason, reason.reason


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3"])
def test_compiled_dense_decode_has_no_graph_break_and_equals_reference(arch):
    """Below ``min_length`` (and on windows within the budget) a step attends under the mask."""
    model, _ = tiny_model(arch)
    ids = prompt(75)
    ref_seq, ref_steps = greedy(model, ids, steps=6, cache_implementation="static")
    dhsa.configure(model, SMALL.replace(min_length=1000))
    seq, steps = greedy(model, ids, steps=6, cache_implementation="static")
    assert torch.equal(seq, ref_seq)
    torch.testing.assert_close(steps, ref_steps, rtol=1e-5, atol=1e-5)
    assert _explain_decode_step(model).graph_break_count == 0
    padded = torch.cat([torch.zeros(1, 9, dtype=torch.long), ids], dim=1)
    mask = (padded != 0).long()
    row_seq, _ = greedy(model, padded, steps=6, attention_mask=mask, cache_implementation="static")
    assert torch.equal(row_seq[:, 9:], ref_seq)
