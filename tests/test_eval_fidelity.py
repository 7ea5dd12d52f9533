"""Attention fidelity: recall against a dense-mask reference, and the recording probe on a tiny
random-init Llama."""

import math

import pytest
import torch

from conftest import make_qkv
from dhsa import DHSAConfig, select
from dhsa.eval.fidelity import (
    FidelityProbe,
    attention_recall,
    evaluated_blocks,
    layer_fidelity,
    run_fidelity,
    summarize_fidelity,
)

CONFIG = DHSAConfig(
    budget=96,
    sink=16,
    local=32,
    query_block=16,
    min_length=0,
    min_chunk=4,
    max_chunk=24,
    chunk_size=16,
)


def reference_recall(q, k, mask, blocks, query_block, scale, window=None):
    """Float64 softmax mass inside ``mask [B, Hkv, Lq, Lk]`` over the queries of ``blocks``."""
    group = q.shape[1] // k.shape[1]
    q_len, k_len = q.shape[2], k.shape[2]
    logits = q.double() @ k.double().repeat_interleave(group, 1).transpose(-1, -2) * scale
    qp = torch.arange(k_len - q_len, k_len)[:, None]
    kp = torch.arange(k_len)[None, :]
    allowed = kp <= qp
    if window is not None:
        allowed &= qp - kp < window
    probs = logits.masked_fill(~allowed, -math.inf).softmax(-1)
    kept = (probs * mask.repeat_interleave(group, 1)).sum(-1)
    rows = torch.cat(
        [torch.arange(b * query_block, min((b + 1) * query_block, q_len)) for b in blocks.tolist()]
    )
    return kept[:, :, rows].mean().item()


def reference_topk_recall(q, k, mask, blocks, query_block, scale, window, top):
    """Per query head: the mean share of each query's ``top`` largest logits inside ``mask``,
    by loops over heads and queries."""
    q_heads, q_len, k_len = q.shape[1], q.shape[2], k.shape[2]
    group = q_heads // k.shape[1]
    out = torch.zeros(q_heads)
    rows = [
        i
        for b in blocks.tolist()
        for i in range(b * query_block, min((b + 1) * query_block, q_len))
    ]
    for batch in range(q.shape[0]):
        for h in range(q_heads):
            for i in rows:
                pos = k_len - q_len + i
                logits = (q[batch, h, i].double() @ k[batch, h // group].double().T) * scale
                visible = torch.arange(k_len) <= pos
                if window is not None:
                    visible &= pos - torch.arange(k_len) < window
                logits[~visible] = -math.inf
                best = logits.topk(top).indices
                out[h] += mask[batch, h // group, i, best].double().mean().float()
    return out / (len(rows) * q.shape[0])


@pytest.mark.parametrize("window", [None, 70])
def test_recall_matches_dense_mask_reference(rng, window):
    q, k, _ = make_qkv(2, 6, 2, 301, 301, 16, rng)
    blocks = evaluated_blocks(301, 301, CONFIG, max_blocks=7)
    assert blocks.numel() == 7 and int(blocks.min()) * 16 >= CONFIG.budget
    layouts = {
        m: select(q, k, CONFIG, method=m, sliding_window=window)
        for m in ("dense", "dhsa", "block_sparse", "streaming")
    }
    got = attention_recall(
        q, k, layouts, blocks, scale=0.25, softcap=None, sliding_window=window, query_block=16
    )
    for method, layout in layouts.items():
        mask = layout.to_dense_mask()
        expected = reference_recall(q, k, mask, blocks, 16, 0.25, window)
        assert got[method]["recall"] == pytest.approx(expected, abs=1e-5)
        for top in (8, 32):
            want = reference_topk_recall(q, k, mask, blocks, 16, 0.25, window, top)
            torch.testing.assert_close(got[method][top], want, atol=1e-5, rtol=0)
    assert got["dense"]["recall"] == pytest.approx(1.0, abs=1e-5)
    assert bool((got["dense"][32] == 1.0).all())
    assert got["streaming"]["recall"] < 0.999
    assert float(got["streaming"][8].min()) < 1.0


def test_layer_fidelity_limits(rng):
    q, k, v = make_qkv(1, 4, 2, 257, 257, 16, rng)
    methods = ["dense", "oracle_topk", "dhsa", "block_sparse", "streaming"]
    rows = {r["method"]: r for r in layer_fidelity(q, k, v, CONFIG, methods, scale=0.25)}
    assert rows["dense"]["output_error"] < 1e-5 and rows["dense"]["density"] == pytest.approx(1.0)
    for method in methods[2:]:
        # The oracle keeps the most mass any selection of the same budget can keep.
        assert rows["oracle_topk"]["recall"] >= rows[method]["recall"] - 1e-6
        assert 0.0 < rows[method]["recall"] < 1.0
        assert rows[method]["output_error"] > 0.0
        assert rows[method]["density"] < 1.0
    # A budget covering everything is dense attention.
    full = layer_fidelity(q, k, v, CONFIG.replace(budget=4096), ["dhsa"], scale=0.25)[0]
    assert full["recall"] == pytest.approx(1.0, abs=1e-5) and full["output_error"] < 1e-5


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
    return transformers.LlamaForCausalLM(config).eval()


def test_probe_records_every_layer_and_keeps_outputs():
    model = tiny_llama()
    ids = torch.randint(0, 97, (1, 283))
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
    methods = ["dense", "dhsa", "block_sparse", "streaming"]
    probe = FidelityProbe(CONFIG, methods, max_query_blocks=5)
    records = run_fidelity(model, ids, probe)
    assert model.config._attn_implementation == "sdpa"
    assert [(r["layer"], r["method"]) for r in records] == [
        (layer, m) for layer in range(3) for m in methods
    ]
    # Five blocks, evenly spread, the last one (11 queries of 283) included.
    assert all(r["queries"] == 4 * 16 + 11 for r in records)
    dense = [r for r in records if r["method"] == "dense"]
    assert all(r["recall"] == pytest.approx(1.0, abs=1e-5) for r in dense)
    # The probe measures on the side: the model's output is its usual SDPA output.
    with torch.no_grad():
        probe2 = FidelityProbe(CONFIG, ["dhsa"], max_query_blocks=1)
        from dhsa.eval.fidelity import recording_attention

        previous = recording_attention(model, probe2)
        got = model(input_ids=ids, use_cache=False).logits
        model.set_attn_implementation(previous)
    torch.testing.assert_close(got, expected)
    summary = {s["method"]: s for s in summarize_fidelity(records)}
    assert summary["dense"]["layers"] == 3
    assert summary["streaming"]["worst_recall"] <= summary["streaming"]["recall"]


def _eval_args(tmp_path, *extra):
    import argparse

    from dhsa.eval.options import add_model_options

    parser = argparse.ArgumentParser()
    add_model_options(parser, str(tmp_path / "out.jsonl"))
    return parser.parse_args(["--model", "m", *extra])


def test_eval_options_take_the_learned_chunker(tmp_path):
    from dhsa.chunking.learned import BoundaryPredictor, save_predictor
    from dhsa.eval.options import base_config, method_label

    path = tmp_path / "p.pt"
    save_predictor(BoundaryPredictor(16, window=2, heads=2, hidden=8), path)
    config = base_config(
        _eval_args(
            tmp_path, "--chunker", "learned", "--predictor", str(path), "--boundaries", "per-layer"
        )
    )
    assert (config.chunker, config.predictor, config.share_boundaries) == (
        "learned",
        str(path),
        False,
    )
    assert base_config(_eval_args(tmp_path)).share_boundaries
    with pytest.raises(ValueError, match="predictor=PATH"):
        base_config(_eval_args(tmp_path, "--chunker", "learned"))
    with pytest.raises(ValueError, match="only with --chunker learned"):
        base_config(_eval_args(tmp_path, "--predictor", str(path)))
    with pytest.raises(FileNotFoundError, match="train-predictor"):
        base_config(_eval_args(tmp_path, "--chunker", "learned", "--predictor", "missing.pt"))
    assert method_label("dhsa", "similarity", True) == "dhsa"
    assert method_label("dhsa", "learned", True) == "dhsa:learned"
    assert method_label("dhsa", "fixed", False) == "dhsa:fixed/per-layer"
    assert method_label("block_sparse", "learned", False) == "block_sparse"
    assert method_label("dhsa", "similarity", True, False) == "dhsa/dense-decode"
    assert method_label("block_sparse", "similarity", True, False) == "block_sparse/dense-decode"
    assert method_label("dense", "similarity", True, False) == "dense"
    assert method_label("dhsa", "similarity", True, boundary_z=0.0) == "dhsa/z=0"
    assert (
        method_label("dhsa", "similarity", False, False, 0.5) == "dhsa/per-layer/z=0.5/dense-decode"
    )
    assert method_label("dhsa", "fixed", True, boundary_z=0.0) == "dhsa:fixed", "fixed ignores z"


def test_probe_chunks_with_the_learned_predictor(tmp_path):
    from dhsa.chunking.labels import capture_keys_and_labels
    from dhsa.chunking.learned import (
        BoundaryPredictor,
        learned_boundaries,
        load_predictor,
        save_predictor,
    )

    model = tiny_llama()
    ids = torch.randint(0, 97, (1, 283))
    predictor = BoundaryPredictor(16, window=2, heads=2, hidden=8)
    with torch.no_grad():
        predictor.mlp[-1].bias += 1e3  # every cut passes the threshold: NMS decides
    path = tmp_path / "p.pt"
    save_predictor(predictor, path)
    config = CONFIG.replace(chunker="learned", predictor=str(path))
    probe = FidelityProbe(config, ["dhsa", "block_sparse"], max_query_blocks=3)
    records = run_fidelity(model, ids, probe)
    assert [r["method"] for r in records] == ["dhsa", "block_sparse"] * 3
    assert all(0.0 < r["recall"] <= 1.0 + 1e-6 for r in records)
    # Shared boundaries are the predictor's on the first layer's keys (averaged over KV heads).
    keys = capture_keys_and_labels(model, ids, [0])[0][0]
    expected = learned_boundaries(keys[None, None], load_predictor(path), min_chunk=4, max_chunk=24)
    assert torch.equal(probe.boundaries, expected)
    assert expected.shape[1] - 1 > 2 * -(-283 // 24)  # the predictor cut, not max-length splits
