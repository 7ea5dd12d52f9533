"""Per-token decode attention cost on this machine's CPU: sparse decode state vs dense SDPA.

One attention layer, ``B=1, Hq=8, Hkv=2, D=64``, float32. For each context length ``L`` a key/value
cache of ``L + steps`` tokens is drawn once (random, with a shared component that drifts every 64
tokens so the similarity chunker finds boundaries, as on real keys); decoding step ``t`` attends the
query of position ``L + t`` over the first ``L + t + 1`` keys (views: no cache copy is timed).

Timed per token, after ``warmup`` untimed steps:
  - ``dense``: ``F.scaled_dot_product_attention`` over all keys (``O(L)``);
  - ``dhsa`` at each budget: :meth:`dhsa.decode.DecodeSession.select_spans` (extends the
    boundaries and chunk sums by one token, scores the chunks, greedy fill) plus
    :func:`dhsa.kernels.attend_decode` over the selected spans (torch backend), the path
    ``attn_implementation="dhsa"`` takes per decode step;
    the session is started on the ``L``-token prefix untimed (as the prefill would);
  - ``dhsa_fresh`` at each budget (``--fresh``): :func:`dhsa.select` on the whole cache per token,
    i.e. what decode would cost without the incremental state.

Before a sparse configuration is timed, its first step's output is checked against the reference
backend on the same layout (fp32 dense masked softmax). Writes ``results.json`` in
``benchmarks/decode_cpu/`` with the command, device, date, load average and per-configuration
timings.

    python benchmarks/decode_cpu/scripts/run.py [--lengths 4096 8192 ...] [--budgets 512 1024 ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import dhsa
from dhsa.decode import DecodeSession
from dhsa.kernels import attend_decode

SHAPE = {"batch": 1, "q_heads": 8, "kv_heads": 2, "head_dim": 64, "dtype": "float32"}


def make_cache(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q [1, Hq, length, D]``, ``k, v [1, Hkv, length, D]`` with a drifting shared component."""
    g = torch.Generator().manual_seed(seed)
    h, hkv, d = SHAPE["q_heads"], SHAPE["kv_heads"], SHAPE["head_dim"]
    drift = torch.randn(1, 1, -(-length // 64), d, generator=g).repeat_interleave(64, 2)
    drift = drift[:, :, :length]
    q = torch.randn(1, h, length, d, generator=g) + drift
    k = torch.randn(1, hkv, length, d, generator=g) + drift
    v = torch.randn(1, hkv, length, d, generator=g)
    return q, k, v


def time_steps(step, first: int, steps: int, warmup: int) -> list[float]:
    """Milliseconds of ``step(position)`` for ``steps`` positions after ``warmup`` untimed ones."""
    for t in range(warmup):
        step(first + t)
    times = []
    for t in range(warmup, warmup + steps):
        start = time.perf_counter()
        step(first + t)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def summary(times: list[float]) -> dict:
    return {
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),
        "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))],
        "steps": len(times),
    }


def check_against_reference(q, k, v, layout, scale: float) -> float:
    """Max abs difference of the torch backend's output from the reference on ``layout``."""
    out = dhsa.attend(q, k, v, layout, scale=scale, backend="torch")
    ref = dhsa.attend(q, k, v, layout, scale=scale, backend="reference")
    error = float((out - ref).abs().max())
    if error > 1e-4:
        raise AssertionError(f"sparse decode output differs from the reference by {error:.2e}")
    return error


def dense_run(q, k, v, length, args, scale) -> dict:
    def dense_step(pos: int) -> None:
        F.scaled_dot_product_attention(
            q[:, :, pos : pos + 1],
            k[:, :, : pos + 1],
            v[:, :, : pos + 1],
            scale=scale,
            enable_gqa=True,
        )

    times = time_steps(dense_step, length, args.steps, args.warmup)
    return {"method": "dense", "length": length, "budget": None, **summary(times)}


def sparse_runs(q, k, v, length, budget, args, scale) -> list[dict]:
    config = dhsa.DHSAConfig(budget=budget, min_length=0)
    session = DecodeSession()
    # Start the state on the prompt's keys, as the prefill's first decode step would.
    session.select(q[:, :, length - 1 : length], k[:, :, :length], config, layer=0)
    selected = []

    def sparse_step(pos: int) -> None:
        qs, ks, vs = q[:, :, pos : pos + 1], k[:, :, : pos + 1], v[:, :, : pos + 1]
        starts, ends = session.select_spans(qs, ks, config, layer=0)
        attend_decode(qs, ks, vs, starts, ends, scale=scale, backend="torch")
        selected.append((starts, ends))

    pos = length
    sparse_step(pos)
    starts, ends = selected.pop()
    layout = dhsa.Layout.from_decode_spans(starts, ends, pos + 1)
    error = check_against_reference(
        q[:, :, pos : pos + 1], k[:, :, : pos + 1], v[:, :, : pos + 1], layout, scale
    )
    times = time_steps(sparse_step, length + 1, args.steps, args.warmup)
    keys = [float((e - s).clamp(min=0).sum(-1).float().mean()) for s, e in selected]
    chunks = session.boundaries(0).shape[1] - 1
    runs = [
        {
            "method": "dhsa",
            "length": length,
            "budget": budget,
            **summary(times),
            "max_abs_error_vs_reference": error,
            "mean_keys_per_query": statistics.fmean(keys),
            "chunks_at_end": chunks,
        }
    ]
    if args.fresh:

        def fresh_step(p: int) -> None:
            qs, ks, vs = q[:, :, p : p + 1], k[:, :, : p + 1], v[:, :, : p + 1]
            lay = dhsa.select(qs, ks, config, method="dhsa", scale=scale)
            dhsa.attend(qs, ks, vs, lay, scale=scale, backend="torch")

        times = time_steps(fresh_step, length, args.fresh_steps, 1)
        runs.append({"method": "dhsa_fresh", "length": length, "budget": budget, **summary(times)})
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--budgets", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--steps", type=int, default=64, help="timed decode steps per run")
    parser.add_argument("--warmup", type=int, default=8, help="untimed decode steps per run")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="also time selection from scratch per token (dhsa_fresh)",
    )
    parser.add_argument("--fresh-steps", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "results.json"))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine, two threads "
        "wait on each other whenever another process holds a core)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scale = SHAPE["head_dim"] ** -0.5
    load_before = os.getloadavg()
    runs = []
    for length in args.lengths:
        q, k, v = make_cache(length + args.warmup + args.steps + 1, seed=length)
        with torch.no_grad():
            runs.append(dense_run(q, k, v, length, args, scale))
            print(
                f"{'dense':>10} L={length:>6} {'':>11} {runs[-1]['median_ms']:8.3f} ms/token",
                flush=True,
            )
            for budget in args.budgets:
                for run in sparse_runs(q, k, v, length, budget, args, scale):
                    runs.append(run)
                    print(
                        f"{run['method']:>10} L={length:>6} budget={budget:>5} "
                        f"{run['median_ms']:8.3f} ms/token",
                        flush=True,
                    )
    record = {
        "command": " ".join(["python", *sys.argv]),
        "device": f"cpu: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "shape": SHAPE,
        "config": {
            "sink": 64,
            "local": 128,
            "query_block": 64,
            "chunker": "similarity",
            "min_chunk": 8,
            "max_chunk": 128,
        },
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
