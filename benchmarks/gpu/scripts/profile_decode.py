"""Where a sparse decode step spends its time (one layer, 32/8 heads, head size 128, bf16).

Usage: python benchmarks/gpu/scripts/profile_decode.py [LENGTH] [DEVICE]   (default 131072 cuda)

For each scoring, one JSON line: the median time of a whole step (selection by
``DecodeSession.select_spans`` and ``attend_decode``) and of the attention alone, the device
kernels and host-side operator calls per step (torch profiler over 10 steps), then the 10
operators with the most host time.
"""

import json
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from dhsa.config import DHSAConfig
from dhsa.decode import DecodeSession
from dhsa.kernels import attend_decode


def timed(fn, device, repeats=20):
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(length: int, device: torch.device, steps: int = 64) -> None:
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    k = torch.randn(1, 8, length + steps, 128, device=device, dtype=dtype)
    v = torch.randn_like(k)
    q = torch.randn(1, 32, 1, 128, device=device, dtype=dtype)
    for scoring in ("peak", "paper"):
        config = DHSAConfig(budget=2048, min_length=0, scoring=scoring)
        session = DecodeSession()
        session.select_spans(q, k[:, :, :length], config, layer=0)
        n = length

        def step(session=session, config=config):
            nonlocal n
            n += 1
            starts, ends = session.select_spans(q, k[:, :, :n], config, layer=0)
            return attend_decode(q, k[:, :, :n], v[:, :, :n], starts, ends)

        step_ms = timed(step, device)
        keys, values = k[:, :, :n], v[:, :, :n]
        spans = session.select_spans(q, keys, config, layer=0)
        attend_ms = timed(
            lambda keys=keys, values=values, spans=spans: attend_decode(q, keys, values, *spans),
            device,
        )
        activities = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if device.type == "cuda" else []
        )
        with profile(activities=activities) as prof:
            for _ in range(10):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        events = prof.events()
        kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        calls = sum(
            1
            for e in events
            if e.device_type == torch.autograd.DeviceType.CPU and e.name.startswith("aten::")
        )
        row = {
            "length": length,
            "scoring": scoring,
            "step_ms": round(step_ms, 3),
            "attend_ms": round(attend_ms, 3),
            "device_kernels_per_step": kernels / 10,
            "aten_calls_per_step": calls / 10,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        }
        print(json.dumps(row), flush=True)
        table = prof.key_averages().table(
            sort_by="cpu_time_total", row_limit=10, max_name_column_width=40
        )
        print(table, flush=True)


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 131072,
        torch.device(sys.argv[2] if len(sys.argv) > 2 else "cuda"),
    )
