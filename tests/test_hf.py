"""The "dhsa" transformers attention on tiny random models of every supported architecture."""

import subprocess
import sys

import pytest
import torch

import dhsa

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, DynamicCache  # noqa: E402

COMMON = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
ARCHS = {
    "llama": lambda: transformers.LlamaConfig(**COMMON),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, head_dim=16),
    "mistral": lambda: transformers.MistralConfig(**COMMON, sliding_window=48),
    "gemma2": lambda: transformers.Gemma2Config(
        **COMMON,
        head_dim=16,
        sliding_window=24,
        attn_logit_softcapping=20.0,
        final_logit_softcapping=30.0,
        query_pre_attn_scalar=24,
    ),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **COMMON,
        head_dim=16,
        sliding_window=24,
        sliding_window_pattern=2,
        query_pre_attn_scalar=24,
    ),
    "phi3": lambda: transformers.Phi3Config(**COMMON),
}
FULL = dhsa.DHSAConfig(
    budget=256, sink=4, local=8, query_block=8, min_length=0, min_chunk=4, max_chunk=16
)
SMALL = dhsa.DHSAConfig(
    budget=24, sink=2, local=4, query_block=4, min_length=0, min_chunk=4, max_chunk=8
)


def tiny_model(arch, seed=0):
    """A random model and the implementation it is compared with (Gemma2 has no SDPA path)."""
    torch.manual_seed(seed)
    reference = "eager" if arch == "gemma2" else "sdpa"
    model = AutoModelForCausalLM.from_config(
        ARCHS[arch](), attn_implementation=reference, dtype=torch.float32
    )
    return model.eval(), reference


def greedy(model, ids, steps=20, **kwargs):
    with torch.no_grad():
        out = model.generate(
            ids,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            **kwargs,
        )
    return out.sequences, torch.stack(out.logits, dim=1)


def prompt(length, batch=1, seed=1):
    return torch.randint(3, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_full_budget_equals_reference_prefill_and_decode(arch):
    model, reference = tiny_model(arch)
    ids = prompt(75)
    with torch.no_grad():
        ref_logits = model(ids).logits
    ref_seq, ref_steps = greedy(model, ids)
    dhsa.configure(model, FULL)
    assert model.config._attn_implementation == "dhsa"
    with torch.no_grad():
        logits = model(ids).logits
    seq, steps = greedy(model, ids)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(steps, ref_steps, rtol=1e-5, atol=1e-5)
    assert torch.equal(seq, ref_seq)
    binding = model.model.layers[0].self_attn._dhsa_binding
    if arch == "mistral":
        # Every layer slides with a window under the budget: dense is exact there, no state kept.
        assert not binding.session._chunks
    else:
        assert binding.session._chunks, "decode never used the incremental selection state"


@pytest.mark.parametrize("arch", ["llama", "gemma2", "mistral"])
def test_small_budget_differs_only_beyond_the_budget(arch):
    model, _ = tiny_model(arch)
    ids = prompt(75)
    with torch.no_grad():
        ref_logits = model(ids).logits
    _, ref_steps = greedy(model, ids)
    dhsa.configure(model, SMALL)
    with torch.no_grad():
        logits = model(ids).logits
    _, steps = greedy(model, ids)
    exact = SMALL.budget - SMALL.budget % SMALL.query_block
    torch.testing.assert_close(logits[:, :exact], ref_logits[:, :exact], rtol=1e-5, atol=1e-5)
    assert (logits[:, exact:] - ref_logits[:, exact:]).abs().max() > 1e-3
    assert (steps - ref_steps).abs().max() > 1e-3


def test_set_attn_implementation_and_layer_overrides():
    model, _ = tiny_model("qwen2")
    ids = prompt(61)
    _, ref_steps = greedy(model, ids, steps=8)
    dhsa.register()
    model.set_attn_implementation("dhsa")
    dhsa.configure(model, SMALL, layers={0: "dense", 1: "dense", 2: ("dense", SMALL)})
    _, steps = greedy(model, ids, steps=8)
    torch.testing.assert_close(steps, ref_steps, rtol=1e-5, atol=1e-5)
    dhsa.configure(model, SMALL, layers={0: "dense"})
    _, sparse_steps = greedy(model, ids, steps=8)
    assert (sparse_steps - ref_steps).abs().max() > 1e-3


def test_dense_decode_attends_every_key_after_a_sparse_prefill():
    """With ``sparse_decode=False`` a decode step over a sparse prefill's cache equals the
    reference attention's step over the same cache; the selecting step differs from it."""
    model, reference = tiny_model("llama")
    ids, token = prompt(75), prompt(1, seed=5)

    def next_logits(step_config):
        dhsa.configure(model, SMALL)
        cache = DynamicCache()
        with torch.no_grad():
            model(ids, past_key_values=cache, use_cache=True)
            if step_config is None:
                model.set_attn_implementation(reference)
            else:
                dhsa.configure(model, step_config)
            return model(token, past_key_values=cache, use_cache=True).logits

    want = next_logits(None)
    torch.testing.assert_close(
        next_logits(SMALL.replace(sparse_decode=False)), want, rtol=1e-5, atol=1e-5
    )
    assert (next_logits(SMALL) - want).abs().max() > 1e-3


def test_short_prompts_run_dense():
    model, _ = tiny_model("llama")
    ids = prompt(61)
    _, ref_steps = greedy(model, ids, steps=5)
    dhsa.configure(model, SMALL.replace(min_length=100))
    _, steps = greedy(model, ids, steps=5)
    torch.testing.assert_close(steps, ref_steps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shared", [True, False])
def test_left_padded_batch_equals_rows_alone(shared):
    model, _ = tiny_model("gemma3")
    dhsa.configure(model, SMALL.replace(share_boundaries=shared))
    long, short = prompt(71, seed=3)[0], prompt(52, seed=4)[0]
    ids = torch.zeros(2, 71, dtype=torch.long)
    ids[0], ids[1, 19:] = long, short
    mask = (ids != 0).long()
    batch_seq, _ = greedy(model, ids, steps=12, attention_mask=mask)
    for row, alone in ((0, long), (1, short)):
        seq, _ = greedy(model, alone[None], steps=12)
        assert torch.equal(batch_seq[row, -12:], seq[0, -12:])


def test_chunked_prefill_with_cache_equals_reference():
    model, _ = tiny_model("phi3")
    ids = prompt(83)
    with torch.no_grad():
        ref = model(ids).logits[:, -1]
        dhsa.configure(model, FULL)
        cache = DynamicCache(config=model.config)
        model(ids[:, :50], past_key_values=cache, use_cache=True)
        out = model(ids[:, 50:], past_key_values=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_unsupported_calls_raise():
    model, _ = tiny_model("llama")
    dhsa.configure(model, SMALL)
    ids = prompt(30)
    with pytest.raises(ValueError, match="output_attentions"):
        model(ids, output_attentions=True)
    right_padded = torch.ones(1, 30, dtype=torch.long)
    right_padded[0, -3:] = 0
    with pytest.raises(ValueError, match="left padding"):
        model(ids, attention_mask=right_padded)
    model.config.attention_dropout = 0.1
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    model.train()
    with pytest.raises(ValueError, match="dropout"):
        model(ids)


def test_configure_rejects_bad_arguments():
    model, _ = tiny_model("llama")
    with pytest.raises(ValueError, match="unknown method"):
        dhsa.configure(model, SMALL, method="nope")
    with pytest.raises(ValueError, match="layers has layer 7"):
        dhsa.configure(model, SMALL, layers={7: "dense"})
    with pytest.raises(TypeError, match="layers\\[0\\]"):
        dhsa.configure(model, SMALL, layers={0: 3})


def test_import_without_transformers():
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import dhsa, dhsa.hf, dhsa.models\n"
        "try:\n    dhsa.register()\nexcept ImportError:\n    print('lazy')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "lazy"


def test_learned_chunker_generates_with_incremental_decode(tmp_path):
    from dhsa.chunking.learned import BoundaryPredictor, save_predictor

    model, _ = tiny_model("llama")
    torch.manual_seed(0)
    path = tmp_path / "predictor.pt"
    save_predictor(BoundaryPredictor(head_dim=16, window=2), path)
    dhsa.configure(model, SMALL.replace(chunker="learned", predictor=str(path)))
    seq, steps = greedy(model, prompt(75), steps=6)
    assert seq.shape == (1, 81) and torch.isfinite(steps).all()
    binding = model.model.layers[0].self_attn._dhsa_binding
    assert binding.session._chunks, "decode never used the incremental selection state"


def test_tokenizer_check_warns_when_common_words_split(caplog):
    from dhsa.models import PROBE_WORDS, check_tokenizer

    def words(text, add_special_tokens=True):
        return {"input_ids": text.split()}

    def pieces(text, add_special_tokens=True):
        return {"input_ids": [text[i : i + 2] for i in range(0, len(text), 2)]}

    with caplog.at_level("WARNING", logger="dhsa.models"):
        assert check_tokenizer(words, "good.gguf") == 0
        assert not caplog.records
        assert check_tokenizer(pieces, "broken.gguf") == len(PROBE_WORDS)
    assert "broken.gguf splits common words" in caplog.text


@pytest.mark.parametrize("min_length", [0, 10_000])
@pytest.mark.parametrize("step", ["prefill", "decode"])
def test_non_finite_activations_raise_on_dense_and_sparse_paths(min_length, step):
    """The library's NaN policy holds inside a model: below ``min_length`` (dense) as above it."""
    model, _ = tiny_model("llama")
    dhsa.configure(model, dhsa.DHSAConfig(budget=256, min_length=min_length))
    ids = prompt(75)
    poisoned = 7
    if step == "decode":
        with torch.no_grad():
            cache = DynamicCache(config=model.config)
            model(ids, past_key_values=cache, use_cache=True)
        ids, extra = ids[:, -1:] * 0 + poisoned, {"past_key_values": cache, "use_cache": True}
    else:
        ids[0, 40], extra = poisoned, {}
    with torch.no_grad():
        model.model.embed_tokens.weight[poisoned, 0] = float("nan")
    with pytest.raises(dhsa.NonFiniteInputError), torch.no_grad():
        model(ids, **extra)


@pytest.fixture
def outside_method():
    """Registers ``outside`` (block_sparse's selector, counting its calls) with the given traits;
    the registry is restored afterwards."""
    from dhsa.methods import METHODS, get_method

    before = dict(METHODS)
    calls = []
    select_block_sparse = get_method("block_sparse").select

    def selector(q, k, config, **kwargs):
        calls.append(q.shape[2])
        return select_block_sparse(q, k, config, **kwargs)

    def register(**traits):
        dhsa.register_method("outside", selector, **traits)
        return calls

    yield register
    METHODS.clear()
    METHODS.update(before)


@pytest.mark.parametrize("declared", [True, False])
def test_an_outside_method_gets_the_incremental_decode_it_declares(outside_method, declared):
    from dhsa.methods import IncrementalDecode

    decode = IncrementalDecode(norm="mean", chunker="fixed") if declared else None
    calls = outside_method(decode=decode, fills_budget=True)
    model, _ = tiny_model("llama")
    ids = prompt(75)
    dhsa.configure(model, SMALL, method="block_sparse")
    _, built_in = greedy(model, ids, steps=6)
    dhsa.configure(model, SMALL, method="outside")
    _, steps = greedy(model, ids, steps=6)
    binding = model.model.layers[0].self_attn._dhsa_binding
    layers = model.config.num_hidden_layers
    if declared:
        assert torch.equal(steps, built_in)
        assert binding.session._chunks and calls == [75] * layers
    else:
        assert not binding.session._chunks and calls == [75] * layers + [1] * 5 * layers


@pytest.mark.parametrize("fills_budget", [True, False])
def test_an_outside_budget_filling_method_runs_short_windows_dense(outside_method, fills_budget):
    calls = outside_method(fills_budget=fills_budget)
    model, reference = tiny_model("mistral")  # every layer slides over 48 keys, FULL keeps 256
    ids = prompt(75)
    _, ref_steps = greedy(model, ids, steps=4)
    dhsa.configure(model, FULL, method="outside")
    _, steps = greedy(model, ids, steps=4)
    torch.testing.assert_close(steps, ref_steps, rtol=1e-5, atol=1e-5)
    assert (calls == []) == fills_budget


def test_use_attention_is_sdpa_for_dense_methods_and_dhsa_otherwise(outside_method):
    from dhsa.hf import use_attention

    outside_method(dense=True)
    model, _ = tiny_model("llama")
    attention = model.model.layers[0].self_attn
    for method in ("dense", "outside"):
        assert use_attention(model, method, SMALL) is model
        assert model.config._attn_implementation == "sdpa"
    use_attention(model, "block_sparse", SMALL)
    assert model.config._attn_implementation == "dhsa"
    assert attention._dhsa_binding.plan(0) == ("block_sparse", SMALL)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        use_attention(model, "nope", SMALL)
