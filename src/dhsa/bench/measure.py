"""Timing and peak-memory measurement on CPU and CUDA."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> dict:
    """Median / min wall time in ms over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "repeats": repeats}


def peak_extra_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes of memory the call needs beyond what was allocated before it (its output included).

    CUDA: the allocator's peak. CPU: the peak of the bytes allocated and not yet freed during the
    call, summed from the profiler's allocation and free events in time order. Unlike the resident
    size, this sees memory the allocator reuses (freed by an earlier call, taken again by this one).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _cpu_peak_allocated(fn)


def _cpu_peak_allocated(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with (
        _profiler_notes_hidden(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    events = [
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    live = peak = 0
    for _, nbytes in sorted(events, key=lambda event: event[0]):
        live += nbytes
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _profiler_notes_hidden():
    """The profiler library writes ``USDT: ... profiler_start/stop`` lines straight to file
    descriptor 2 on every use; they are dropped, anything else written there is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(True)
                if not line.startswith("USDT:")
            ]
            sys.stderr.write("".join(kept))
