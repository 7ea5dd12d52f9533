"""`dhsa bench --decode` and `--model` at tiny sizes: batches, paged attention, static cache."""

import json

import pytest
import torch

from dhsa.bench.decode import paged_copy
from dhsa.bench.presets import PRESETS
from dhsa.cli import main
from dhsa.kernels import attend_decode


def _decode_args(tmp_path, *extra):
    return [
        "bench",
        "--decode",
        "--lengths",
        "600",
        "--budgets",
        "256",
        "--q-heads",
        "4",
        "--kv-heads",
        "2",
        "--head-dim",
        "16",
        "--repeats",
        "1",
        "--decode-tokens",
        "3",
        "--out",
        str(tmp_path / "d.json"),
        "--no-progress",
        *extra,
    ]


def test_decode_bench_records_every_batch_with_paged_attention(tmp_path):
    assert main(_decode_args(tmp_path, "--batches", "1,3", "--page-size", "7")) == 0
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["page_size"] == 7
    sparse = [r for r in doc["records"] if r["contender"] == "dhsa"]
    dense = [r for r in doc["records"] if r["contender"] == "dense"]
    assert sorted(r["batch"] for r in sparse) == [1, 3] == sorted(r["batch"] for r in dense)
    for r in sparse:
        assert r["check_passed"] and r["paged_matches"]
        assert r["paged_attend_ms"] > 0 and r["step_ms"] > 0 and "speedup" in r


def test_decode_bench_without_pages_and_the_gpu_decode_grid(tmp_path):
    assert main(_decode_args(tmp_path, "--page-size", "0", "--scoring", "paper")) == 0
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["config"]["scoring"] == "paper"
    assert all("paged_attend_ms" not in r for r in doc["records"])
    assert {r["batch"] for r in doc["records"]} == {1}
    grid = PRESETS["gpu-decode"]
    assert grid.lengths == (32768, 131072) and grid.batches == (1, 8, 32)


def test_paged_copy_keeps_every_key_where_its_table_says(rng):
    x = torch.randn(2, 3, 23, 8, generator=rng)
    table = torch.randperm(2 * 5, generator=rng).view(2, 5).to(torch.int32)
    pool = paged_copy(x, 5, table)
    for b in range(2):
        for t in range(23):
            assert torch.equal(pool[table[b, t // 5], t % 5], x[b, :, t])
    q = torch.randn(2, 6, 1, 8, generator=rng)
    starts = torch.tensor([[[0, 9]] * 3, [[4, 20]] * 3])
    ends = torch.tensor([[[3, 23]] * 3, [[11, 23]] * 3])
    paged = attend_decode(q, pool, pool, starts, ends, page_table=table)
    assert torch.equal(paged, attend_decode(q, x, x, starts, ends, backend="torch"))


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_model_bench_decodes_with_either_cache(tmp_path, cache):
    pytest.importorskip("transformers")
    out = tmp_path / "m.json"
    args = ["bench", "--model", "tiny", "--lengths", "600", "--budgets", "256"]
    args += ["--methods", "dhsa", "--decode-tokens", "3", "--cache", cache, "--min-length", "0"]
    args += ["--out", str(out), "--no-progress"]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["cache"] == cache and doc["compile"] is False and doc["config"]["min_length"] == 0
    assert [r["method"] for r in doc["records"]] == ["dense", "dhsa"]
    for r in doc["records"]:
        assert r["cache"] == cache and r["decode_tokens_per_s"] > 0
    assert doc["records"][1]["decode_speedup"] > 0
