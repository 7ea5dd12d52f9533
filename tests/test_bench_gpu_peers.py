"""The GPU contenders of ``dhsa bench``: FlexAttention block masks from a layout, dense kernels,
decode and whole-model modes. The FlexAttention run itself needs CUDA; the block conversion and
the decode / model modes run here on the CPU."""

import json

import pytest
import torch

import dhsa
from conftest import make_qkv, naive_attention, rel_error
from dhsa.bench.flex import blocks_layout, random_blocks, touched_blocks
from dhsa.cli import main

SMALL = dhsa.DHSAConfig(budget=96, sink=8, local=16, query_block=16, min_chunk=2, max_chunk=16)


def test_touched_blocks_cover_exactly_the_blocks_the_spans_touch(rng):
    q, k, _ = make_qkv(2, 4, 2, 301, 301, 16, rng)
    layout = dhsa.select(q, k, SMALL, method="dhsa")
    block = 16
    touched = touched_blocks(layout, block)
    member = layout.key_membership()
    padded = torch.nn.functional.pad(member, (0, touched.shape[1] * block - member.shape[1]))
    expected = padded.view(layout.num_rows, -1, block).any(dim=-1)
    assert torch.equal(touched, expected)
    coarse = blocks_layout(touched, layout, block)
    coarse.validate()
    assert torch.equal(coarse.key_membership(), expected.repeat_interleave(block, 1)[:, :301])


def test_block_layout_attention_is_exact_over_its_blocks(rng):
    q, k, v = make_qkv(1, 4, 2, 200, 200, 16, rng)
    layout = dhsa.select(q, k, SMALL, method="block_sparse")
    coarse = blocks_layout(touched_blocks(layout, 16), layout, 16)
    mask = coarse.to_dense_mask()
    assert bool((mask | ~layout.to_dense_mask()).all()), "blocks must cover the selection"
    out = dhsa.attend(q, k, v, coarse, backend="torch")
    assert rel_error(out, naive_attention(q, k, v, mask=mask)) < 1e-5


def test_random_blocks_keep_each_rows_count_causally_with_the_diagonal(rng):
    q, k, _ = make_qkv(2, 4, 2, 301, 301, 16, rng)
    layout = dhsa.select(q, k, SMALL, method="dhsa")
    touched = touched_blocks(layout, 16)
    chosen = random_blocks(touched, layout, 16, torch.Generator().manual_seed(1))
    assert torch.equal(chosen.sum(1), touched.sum(1))
    blocks_layout(chosen, layout, 16).validate()
    # Square geometry: query block i's diagonal key block is block i; none past it is kept.
    block_of_row = torch.arange(layout.num_rows) % layout.num_q_blocks
    assert bool(chosen[torch.arange(layout.num_rows), block_of_row].all())
    assert not bool((chosen & (torch.arange(chosen.shape[1]) > block_of_row[:, None])).any())
    assert not torch.equal(chosen, touched), "the anchor's blocks are not the selection's"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention peer runs on CUDA")
@pytest.mark.parametrize("name", ["flex_dhsa", "flex_random"])
def test_flex_peer_matches_exact_attention_over_its_blocks(name):
    from dhsa.bench.contenders import get_contender

    generator = torch.Generator().manual_seed(0)
    q, k, v = (x.cuda() for x in make_qkv(1, 8, 2, 2048, 2048, 64, generator, torch.bfloat16))
    config = dhsa.DHSAConfig(budget=512, min_length=0)
    prepared = get_contender(name).prepare(q, k, v, config, "auto")
    out = prepared.run().float().cpu()
    mask = prepared.layout.to_dense_mask().cpu()
    ref = naive_attention(*(x.float().cpu() for x in (q, k, v)), mask=mask)
    assert rel_error(out, ref) < 2e-2


def test_decode_mode_records_dense_and_sparse_per_token(tmp_path, capsys):
    out = tmp_path / "decode.json"
    code = main(
        [
            "bench",
            "--decode",
            "--lengths",
            "600,900",
            "--budgets",
            "256",
            "--batches",
            "1,2",
            "--q-heads",
            "4",
            "--kv-heads",
            "2",
            "--head-dim",
            "16",
            "--repeats",
            "2",
            "--decode-tokens",
            "4",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    records = json.loads(out.read_text())["records"]
    assert {(r["contender"], r["length"], r["batch"]) for r in records} == {
        (c, n, b) for c in ("dense", "dhsa") for n in (600, 900) for b in (1, 2)
    }
    for r in records:
        assert r["step_ms"] > 0
        if r["contender"] == "dhsa":
            assert r["check_passed"] and 256 - 16 <= r["selected"] <= 256
    assert "ms/token" in capsys.readouterr().out


def test_model_mode_times_dense_and_dhsa(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "model.json"
    code = main(
        [
            "bench",
            "--model",
            "tiny",
            "--lengths",
            "4200",
            "--budgets",
            "256",
            "--methods",
            "dhsa",
            "--decode-tokens",
            "3",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    document = json.loads(out.read_text())
    records = document["records"]
    assert "per method and length" in document["warmup"]
    assert [r["method"] for r in records] == ["dense", "dhsa"]
    assert all(r["ttft_ms"] > 0 and r["decode_tokens_per_s"] > 0 for r in records)
    assert records[1]["ttft_speedup"] > 0
