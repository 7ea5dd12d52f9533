"""Selection time vs sequence length for every selector, on the CPU or a GPU.

Times ``dhsa.select`` alone (no attention) at 4K..32K keys, ``B=1, Hq=8, Hkv=2, D=64``, budget
2048, float32 by default (``--device cuda --q-heads 32 --kv-heads 8 --head-dim 128 --dtype
bfloat16`` for the GPU record in ``benchmarks/gpu/selection.json``). Inputs are random with a
slowly drifting shared component per 64 tokens (so block
scores differ, as with real keys, and ``dash`` does not see a flat score landscape). Writes
``results.json`` in ``benchmarks/selection_cpu/`` with the command, device, date and per-run
numbers.

    python benchmarks/selection_cpu/scripts/run.py [--lengths 4096 ...] [--methods dash hip ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

import dhsa
from dhsa.bench.measure import time_call
from dhsa.methods.dash import row_density_quantiles

METHODS = ("dhsa", "block_sparse", "streaming", "dash", "hip", "vertical_slash")


def make_inputs(length: int, seed: int, args) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    dim = args.head_dim
    drift = torch.randn(1, 1, -(-length // 64), dim, generator=generator).repeat_interleave(64, 2)
    q = torch.randn(1, args.q_heads, length, dim, generator=generator) + drift[:, :, :length]
    k = torch.randn(1, args.kv_heads, length, dim, generator=generator) + drift[:, :, :length]
    dtype = getattr(torch, args.dtype)
    return q.to(args.device, dtype), k.to(args.device, dtype)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--q-heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "results.json"))
    args = parser.parse_args()
    config = dhsa.DHSAConfig(budget=2048)
    runs = []
    for length in args.lengths:
        q, k = make_inputs(length, length, args)
        for method in args.methods:
            timing = time_call(
                lambda m=method, q=q, k=k: dhsa.select(q, k, config, method=m),
                q.device,
                repeats=args.repeats,
                warmup=1,
            )
            layout = dhsa.select(q, k, config, method=method)
            run = {"method": method, "length": length, **timing, "density": layout.density()}
            run["row_density"] = row_density_quantiles(layout)
            runs.append(run)
            print(
                f"{method:>15} L={length:>6} {timing['median_ms']:9.1f} ms "
                f"density {run['density']:.4f}",
                flush=True,
            )
    record = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "device": torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"cpu: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shape": {
            "batch": 1,
            "q_heads": args.q_heads,
            "kv_heads": args.kv_heads,
            "head_dim": args.head_dim,
            "dtype": args.dtype,
        },
        "config": {
            "budget": config.budget,
            "sink": config.sink,
            "local": config.local,
            "query_block": config.query_block,
            "dash_block": config.dash.block,
            "dash_sparsity": config.dash.sparsity,
            "hip_block": config.hip.block,
            "vs_slash_share": config.vertical_slash.slash_share,
        },
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
