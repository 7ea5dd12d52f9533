"""Selection cost of each dhsa scoring on the GPU (one layer, 32/8 heads, head size 128, bf16).

Usage: python benchmarks/gpu/scripts/selection_cost.py [--profile] [LENGTH ...]
(default lengths 32768 131072)

Prints one JSON line per length and scoring: ``dhsa.select`` time, the whole
``dhsa.sparse_attention`` time and the best dense SDPA time, medians of
``triton.testing.do_bench``, all measured in the same process. For ``peak`` the row also holds its
stages, each timed alone: the chunk boundaries, the chunk means, the peak scores of every tile
(both stages and the probe), the probe alone, and the rest of ``dhsa.select`` (the fill and the
layout) as the difference. ``--profile`` adds, per length and scoring, the CUDA operations of one
``dhsa.select`` by their total device time (torch profiler).
"""

import json
import sys

import torch
from triton.testing import do_bench

import dhsa
from dhsa.chunking import compute_boundaries
from dhsa.layout import Geometry
from dhsa.methods.chunked import peak_tiles
from dhsa.methods.regions import block_regions
from dhsa.methods.scoring import chunk_representations, probe_chunk_scores


def peak_stages(config, q, k) -> dict:
    """Milliseconds of each stage of a ``peak`` selection, each timed alone."""
    scale = q.shape[-1] ** -0.5
    bounds = compute_boundaries(k, config)
    means = chunk_representations(k, bounds, "mean")
    regions = block_regions(
        Geometry.of(q, k, config.query_block), config.sink, config.local, k.device
    )

    def scores():
        for _ in peak_tiles(q, k, bounds, regions, config, scale, means)():
            pass

    def bench(f):
        return round(do_bench(f, rep=200, return_mode="median"), 2)

    last = (regions.block_end.numel() - 1) * config.query_block
    return {
        "boundaries_ms": bench(lambda: compute_boundaries(k, config)),
        "chunk_means_ms": bench(lambda: chunk_representations(k, bounds, "mean")),
        "peak_scores_ms": bench(scores),
        "probe_ms": bench(lambda: probe_chunk_scores(q[:, :, last:], k, bounds, scale=scale)),
    }


def profile(config, q, k) -> None:
    """Print the 12 CUDA operations of one ``dhsa.select`` with the most device time."""
    dhsa.select(q, k, config)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        dhsa.select(q, k, config)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12), flush=True)


def main(lengths: list[int], with_profile: bool) -> None:
    torch.manual_seed(0)
    for length in lengths:
        q = torch.randn(1, 32, length, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, 8, length, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, 8, length, 128, device="cuda", dtype=torch.bfloat16)
        dense = do_bench(
            lambda q=q, k=k, v=v: torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, enable_gqa=True
            ),
            rep=300,
            return_mode="median",
        )
        for scoring in ("paper", "peak"):
            config = dhsa.DHSAConfig(budget=2048, min_length=0, scoring=scoring)
            select = do_bench(
                lambda c=config, q=q, k=k: dhsa.select(q, k, c), rep=300, return_mode="median"
            )
            whole = do_bench(
                lambda c=config, q=q, k=k, v=v: dhsa.sparse_attention(q, k, v, c),
                rep=300,
                return_mode="median",
            )
            row = {
                "length": length,
                "scoring": scoring,
                "select_ms": round(select, 2),
                "sparse_attention_ms": round(whole, 2),
                "dense_sdpa_ms": round(dense, 2),
                **(peak_stages(config, q, k) if scoring == "peak" else {}),
                "device": torch.cuda.get_device_name(),
            }
            print(json.dumps(row), flush=True)
            if with_profile:
                profile(config, q, k)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--profile"]
    main([int(x) for x in args] or [32768, 131072], "--profile" in sys.argv[1:])
