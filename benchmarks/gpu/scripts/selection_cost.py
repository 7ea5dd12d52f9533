"""Selection cost of each dhsa scoring on the GPU (one layer, 32/8 heads, head size 128, bf16).

Usage: python benchmarks/gpu/scripts/selection_cost.py [LENGTH ...]   (default 32768 131072)

Prints one JSON line per length and scoring: ``dhsa.select`` time, the whole
``dhsa.sparse_attention`` time and the best dense SDPA time, medians of
``triton.testing.do_bench``, all measured in the same process.
"""

import json
import sys

import torch
from triton.testing import do_bench

import dhsa


def main(lengths: list[int]) -> None:
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
                "device": torch.cuda.get_device_name(),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1:]] or [32768, 131072])
