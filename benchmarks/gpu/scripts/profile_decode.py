"""Where a sparse decode step spends its time on the GPU (128K keys, batch 1, budget 2048).

Times the parts of one step on their own (chunk-state update, span fill, attention) and prints a
torch.profiler table of a few whole steps, by CPU time and by GPU time.
"""

import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from dhsa.config import DHSAConfig
from dhsa.decode import DecodeSession
from dhsa.kernels import attend_decode


def timed(fn, repeats=30):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(length=131072, steps=40, budget=2048):
    torch.manual_seed(0)
    k = torch.randn(1, 8, length + steps, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(1, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    config = DHSAConfig(budget=budget, min_length=0)
    session = DecodeSession()
    session.select_spans(q, k[:, :, :length], config, layer=0)
    n = length

    def step():
        nonlocal n
        n += 1
        starts, ends = session.select_spans(q, k[:, :, :n], config, layer=0)
        return attend_decode(q, k[:, :, :n], v[:, :, :n], starts, ends)

    print(f"step {timed(step, 10):.3f} ms")
    chunks = session._chunks[(0, None)]
    starts, ends = chunks.fill(q, config)
    keys, values = k[:, :, :n], v[:, :, :n]
    print(f"fill alone {timed(lambda: chunks.fill(q, config)):.3f} ms")
    print(f"follows check {timed(lambda: chunks.follows(k[:, :, : n + 1])):.3f} ms")
    print(
        f"attend_decode alone {timed(lambda: attend_decode(q, keys, values, starts, ends)):.3f} ms"
    )
    print(f"chunks {chunks.closed}, table {tuple(chunks.table.shape)}, spans {tuple(starts.shape)}")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=50))
    print(table.table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=50))


if __name__ == "__main__":
    main()
