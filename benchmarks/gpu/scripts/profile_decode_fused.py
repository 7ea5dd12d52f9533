"""One layer's fused decode step (dhsa.decode_step.DecodeStep): launches, device time, wall time.

Usage: python benchmarks/gpu/scripts/profile_decode_fused.py [LENGTH] [BATCH]   (default 131072 1)

For each scoring, one JSON line: the kernels a step launches and their device time (torch profiler
over 10 eager steps), the wall time of an eager step and of a replay of the step captured in a
CUDA graph, and dense SDPA decode's time for scale; then the step's kernels by device time.
Shape: 32 query / 8 KV heads, head size 128, bf16, budget 2048.
"""

import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from dhsa.config import DHSAConfig
from dhsa.decode_step import DecodeStep

STEPS = 10


def wall_ms(fn, repeats=20):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(length: int, batch: int) -> None:
    torch.manual_seed(0)
    room = 200
    shape = (batch, 8, length + room, 128)
    k = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(batch, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    dense_ms = wall_ms(
        lambda: F.scaled_dot_product_attention(
            q, k[:, :, :length], v[:, :, :length], enable_gqa=True
        )
    )
    for scoring in ("peak", "paper"):
        config = DHSAConfig(budget=2048, min_length=0, scoring=scoring)
        step = DecodeStep.start(k, v, length, config)
        out = torch.empty_like(q)
        step.step(q, k, v, out)  # compiles
        eager_ms = wall_ms(lambda step=step, out=out: step.step(q, k, v, out))
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(STEPS):
                step.step(q, k, v, out)
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        device_us = sum(e.device_time for e in kernels) / STEPS

        graphed = DecodeStep.start(k, v, length, config)
        graphed.step(q, k, v, out)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream), torch.cuda.graph(graph):
            graphed.step(q, k, v, out)
        torch.cuda.current_stream().wait_stream(stream)
        replay_ms = wall_ms(graph.replay, repeats=room - 60)
        row = {
            "length": length,
            "batch": batch,
            "scoring": scoring,
            "kernels_per_step": len(kernels) / STEPS,
            "device_ms_per_step": round(device_us / 1e3, 4),
            "eager_step_ms": round(eager_ms, 4),
            "graph_step_ms": round(replay_ms, 4),
            "dense_ms": round(dense_ms, 4),
            "graph_speedup": round(dense_ms / replay_ms, 2),
            "device": torch.cuda.get_device_name(),
        }
        print(json.dumps(row), flush=True)
        print(
            prof.key_averages().table(
                sort_by="cuda_time_total", row_limit=12, max_name_column_width=50
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 131072,
        int(sys.argv[2]) if len(sys.argv) > 2 else 1,
    )
