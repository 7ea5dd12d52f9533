"""Timing and peak-memory measurement on CPU and CUDA."""

from __future__ import annotations

import contextlib
import os
import re
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


_HWM = re.compile(r"^VmHWM:\s+(\d+) kB", re.MULTILINE)
_RSS = re.compile(r"^VmRSS:\s+(\d+) kB", re.MULTILINE)
CPU_SOURCES = ("resident", "allocations")


class PeakMemory:
    """Peak memory of a ``with`` block on ``device``: the one meter of every benchmark.

    After the block: ``baseline_bytes`` (in use on entry), ``peak_bytes`` (the most in use during
    the block, at least the baseline), ``extra_bytes`` (their difference) and ``kind`` (what was
    read).

    - CUDA: the allocator, ``memory_allocated`` on entry and ``max_memory_allocated`` after a reset.
    - CPU, ``cpu="resident"``: the process's resident-set high-water mark ``VmHWM``, reset on entry
      by writing ``5`` to ``/proc/self/clear_refs``; no overhead, so timed runs use it, but it
      counts the whole process and misses memory the allocator reuses. ValueError where Linux's
      ``/proc`` is missing.
    - CPU, ``cpu="allocations"``: the peak of the bytes torch allocated and has not freed during the
      block, summed in time order from the profiler's allocation and free events (baseline 0). It
      sees memory the allocator reuses (freed by an earlier call, taken again by this one) but
      slows the block: for measurements apart from timing.
    """

    def __init__(self, device: torch.device | str, cpu: str = "resident") -> None:
        if cpu not in CPU_SOURCES:
            raise ValueError(f"unknown CPU memory source {cpu!r}: allowed {CPU_SOURCES}")
        self.device = torch.device(device)
        self.cpu = cpu
        self.baseline_bytes = 0
        self.peak_bytes = 0
        self._profiling: contextlib.ExitStack | None = None
        self._profiler = None

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "cuda max_memory_allocated"
        return "process VmHWM" if self.cpu == "resident" else "torch allocations (profiler)"

    @property
    def extra_bytes(self) -> int:
        return self.peak_bytes - self.baseline_bytes

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
        elif self.cpu == "resident":
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.baseline_bytes = _proc_status_bytes(_RSS)
            except OSError as error:
                raise ValueError(
                    f"cannot measure CPU peak memory here ({error}): it needs Linux's "
                    "/proc/self/status and a writable /proc/self/clear_refs"
                ) from error
        else:
            from torch.profiler import ProfilerActivity, profile

            self._profiling = contextlib.ExitStack()
            self._profiling.enter_context(_profiler_notes_hidden())
            self._profiler = self._profiling.enter_context(
                profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.cpu == "resident":
            # The kernel updates VmHWM lazily (it can trail the resident size by a few pages), so
            # the peak is at least what was resident at entry and at exit.
            resident = _proc_status_bytes(_RSS)
            self.peak_bytes = max(_proc_status_bytes(_HWM), resident, self.baseline_bytes)
        else:
            self._profiling.close()
            self.peak_bytes = _peak_live_bytes(self._profiler)


def _proc_status_bytes(pattern: re.Pattern) -> int:
    with open("/proc/self/status") as f:
        return int(pattern.search(f.read()).group(1)) * 1024


def _peak_live_bytes(prof) -> int:
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


def peak_extra_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes of memory the call needs beyond what was allocated before it (its output included):
    :class:`PeakMemory` with the CPU's ``allocations`` source."""
    with PeakMemory(device, cpu="allocations") as memory:
        fn()
    return memory.extra_bytes


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
