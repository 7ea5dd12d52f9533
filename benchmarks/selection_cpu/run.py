"""Selection time vs sequence length for every selector, on this machine's CPU.

Times ``dhsa.select`` alone (no attention) at 4K..32K keys, ``B=1, Hq=8, Hkv=2, D=64``, budget
2048, float32. Inputs are random with a slowly drifting shared component per 64 tokens (so block
scores differ, as with real keys, and ``dash`` does not see a flat score landscape). Writes
``results.json`` beside this script with the command, device, date and per-run numbers.

    python benchmarks/selection_cpu/run.py [--lengths 4096 8192 ...] [--methods dash hip ...]
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


def make_inputs(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    drift = torch.randn(1, 1, -(-length // 64), 64, generator=generator).repeat_interleave(64, 2)
    q = torch.randn(1, 8, length, 64, generator=generator) + drift[:, :, :length]
    k = torch.randn(1, 2, length, 64, generator=generator) + drift[:, :, :length]
    return q, k


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    config = dhsa.DHSAConfig(budget=2048)
    runs = []
    for length in args.lengths:
        q, k = make_inputs(length, seed=length)
        for method in args.methods:
            timing = time_call(
                lambda m=method: dhsa.select(q, k, config, method=m),
                q.device,
                repeats=args.repeats,
                warmup=1,
            )
            layout = dhsa.select(q, k, config, method=method)
            run = {"method": method, "length": length, **timing, "density": layout.density()}
            run["row_density"] = row_density_quantiles(layout)
            runs.append(run)
            print(f"{method:>15} L={length:>6} {timing['median_ms']:9.1f} ms "
                  f"density {run['density']:.4f}", flush=True)
    record = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "device": f"cpu: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shape": {"batch": 1, "q_heads": 8, "kv_heads": 2, "head_dim": 64, "dtype": "float32"},
        "config": {"budget": config.budget, "sink": config.sink, "local": config.local,
                   "query_block": config.query_block, "dash_block": config.dash_block,
                   "dash_sparsity": config.dash_sparsity, "hip_block": config.hip_block,
                   "vs_slash_share": config.vs_slash_share},
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
