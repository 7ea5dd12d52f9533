"""Decode benchmark: one new query per sequence against an ``L``-long cache, dense vs sparse.

Dense is SDPA with one query (its best kernel on the device). Sparse decode is what a model pays
per layer and token: :class:`dhsa.decode.DecodeSession` absorbs the new key and selects spans
(sink, local window, best chunks within the budget), then :func:`dhsa.kernels.attend_decode`
attends them. Timed per step over consecutive tokens, so the incremental state really advances;
``attend_ms`` is the attention over a fixed selection alone, and ``paged_attend_ms`` the same
attention reading a paged copy of the cache (pages of ``page_size`` keys in shuffled order, the
NHD layout of :func:`dhsa.kernels.attend_decode`; ``paged_matches`` says it gave the contiguous
output). A speedup is recorded only when the sparse output passed the float64 spot check.

On CUDA the fused step (:class:`dhsa.decode_step.DecodeStep`: a fixed handful of Triton launches
that read the length from the device) is timed too, eager (``dhsa-fused``) and replayed from one
CUDA graph capture (``dhsa-graph``); ``spans_match`` says whether its last spans are those the
session selects at the same length.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import DHSAConfig
from ..decode import DecodeSession
from ..decode_step import CHUNKERS
from ..kernels import attend_decode
from ..layout import Layout
from .check import spot_check, tolerance
from .measure import peak_extra_memory, synchronize, time_call
from .runner import record_header, resolve_device


def _dense_decode(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1])


def paged_copy(x, page_size: int, table):
    """``x [B, Hkv, L, D]`` as a pool ``[B * ceil(L / page_size), page_size, Hkv, D]`` holding
    position ``[i * page_size, (i + 1) * page_size)`` of row ``b`` in page ``table[b, i]``."""
    batch, kv_heads, length, dim = x.shape
    per_row = table.shape[1]
    padded = F.pad(x, (0, 0, 0, per_row * page_size - length))
    pages = padded.view(batch, kv_heads, per_row, page_size, dim).permute(0, 2, 3, 1, 4)
    pool = torch.empty(batch * per_row, page_size, kv_heads, dim, dtype=x.dtype, device=x.device)
    pool[table.reshape(-1).long()] = pages.reshape(batch * per_row, page_size, kv_heads, dim)
    return pool


def decode_case(
    q, k, v, config: DHSAConfig, backend: str, steps: int, repeats: int, page_size: int = 0
) -> dict:
    """Per-token time of sparse decode over ``k, v [B, Hkv, L + steps, D]``: the state is built on
    the first ``L`` keys, then each timed step adds one key, selects its spans and attends (the
    steps read growing views of one cache tensor, as from a static cache: no synchronization).
    With ``page_size``, the attention over the last selection is timed on a paged copy too."""
    device = q.device
    length = k.shape[2] - steps
    budget = config.budget
    session = DecodeSession()
    session.select_spans(q, k[:, :, :length], config, layer=0)
    times = []
    for n in range(length + 1, length + steps + 1):
        keys, values = k[:, :, :n], v[:, :, :n]
        synchronize(device)
        start = time.perf_counter()
        starts, ends = session.select_spans(q, keys, config, layer=0)
        out = attend_decode(q, keys, values, starts, ends, backend=backend, max_keys=budget)
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    layout = session.select(q, keys, config, layer=0)
    error = spot_check(q, keys, values, out, layout, samples=1)
    attend_ms = time_call(
        lambda: attend_decode(q, keys, values, starts, ends, backend=backend, max_keys=budget),
        device,
        repeats,
        2,
    )["median_ms"]
    record = {
        "step_ms": statistics.median(times[2:] or times),
        "attend_ms": attend_ms,
        "selected": float(layout.num_selected().float().mean()),
        "check_rel_error": error,
        "check_passed": error <= tolerance(q.dtype),
    }
    if page_size:
        pages = keys.shape[0] * -(-keys.shape[2] // page_size)
        order = torch.randperm(pages, generator=torch.Generator().manual_seed(0))
        table = order.view(keys.shape[0], -1).to(device, torch.int32)
        k_pool, v_pool = paged_copy(keys, page_size, table), paged_copy(values, page_size, table)

        def paged():
            return attend_decode(
                q, k_pool, v_pool, starts, ends, backend=backend, page_table=table, max_keys=budget
            )

        record["paged_matches"] = bool(torch.allclose(paged(), out, rtol=1e-3, atol=1e-3))
        record["paged_attend_ms"] = time_call(paged, device, repeats, 2)["median_ms"]
        del k_pool, v_pool
    return record


def fused_cases(q, k, v, config: DHSAConfig, steps: int) -> list[dict]:
    """Per-token time of the fused step over ``k, v [B, Hkv, L + steps, D]`` from length ``L``:
    eager over the first half of the steps, then one step captured in a CUDA graph and replayed
    (each replay a new token) over the rest. Each record is checked like :func:`decode_case`'s
    at its last length, and its spans compared with the session's there."""
    device = q.device
    length = k.shape[2] - steps
    # One chunk table at the prompt: both steps copy it, the session then checks their spans.
    session = DecodeSession()
    session.select_spans(q, k[:, :, :length], config, layer=0)
    eager, graphed = (session.fused_step(k, v, config, layer=0) for _ in "eg")
    out = torch.empty_like(q)
    times = []
    for _ in range(max(steps // 2, 1)):
        synchronize(device)
        start = time.perf_counter()
        eager.step(q, k, v, out)
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    records = [dict(contender="dhsa-fused", step_ms=statistics.median(times[1:] or times))]
    finals = [(eager, out.clone())]

    replayed = torch.empty_like(q)
    graphed.step(q, k, v, replayed)  # compiles, allocates
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        graphed.step(q, k, v, replayed)
    torch.cuda.current_stream(device).wait_stream(stream)
    replays = max(steps - 2, 1)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    synchronize(device)
    records.append(
        dict(contender="dhsa-graph", step_ms=(time.perf_counter() - start) * 1e3 / replays)
    )
    finals.append((graphed, replayed))
    ends = [int(state.lengths[0]) for state, _ in finals]
    selected = {}
    for m in range(length + 1, max(ends) + 1):
        spans = session.select_spans(q, k[:, :, :m], config, layer=0)
        if m in ends:
            selected[m] = Layout.from_decode_spans(*spans, m).to_dense_mask()
    for record, (state, output), n in zip(records, finals, ends, strict=True):
        keys, values = k[:, :, :n], v[:, :, :n]
        layout = Layout.from_decode_spans(*state.spans(), n)
        error = spot_check(q, keys, values, output, layout, samples=1)
        record.update(
            selected=float(layout.num_selected().float().mean()),
            check_rel_error=error,
            check_passed=error <= tolerance(q.dtype),
            spans_match=bool(torch.equal(layout.to_dense_mask(), selected[n])),
        )
    return records


def run_decode_bench(
    *,
    lengths: tuple[int, ...],
    budgets: tuple[int, ...],
    batches: tuple[int, ...],
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    dtype: str,
    device: str,
    out_path: str | Path,
    command: str,
    backend: str = "auto",
    steps: int = 16,
    repeats: int = 20,
    config: DHSAConfig | None = None,
    progress: bool = True,
    page_size: int = 16,
    fused: bool | None = None,
) -> dict:
    """Dense vs sparse decode per token at every length, batch and budget; JSON kept current.

    ``page_size`` (0: none) also times each selection's attention over a paged cache. ``fused``
    (default: on CUDA with the ``similarity`` or ``fixed`` chunker and at least 3 ``steps``)
    times the fused step too."""
    device_ = resolve_device(device)
    torch_dtype = getattr(torch, dtype)
    base = (config or DHSAConfig()).replace(min_length=0)
    document = {
        **record_header(command, device_),
        "shape": dict(q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype),
        "steps": steps,
        "backend": backend,
        "page_size": page_size,
        # The budget of each record is its own (`budget`); the rest is shared by all records.
        "config": {**dataclasses.asdict(base), "budget": None, "budgets": list(budgets)},
        "records": [],
    }
    if fused is None:  # a graph replay needs a token of its own past the eager warm-up
        fused = device_.type == "cuda" and base.chunker in CHUNKERS and steps >= 3
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(
        total=len(lengths) * len(batches) * (1 + len(budgets) * (2 if fused else 1)),
        desc="dhsa decode bench",
        disable=not progress,
    )
    for length in lengths:
        for batch in batches:
            # Drawn on the device: a 128K cache at batch 32 is too large to draw on the host.
            generator = torch.Generator(device_).manual_seed(length + batch)
            shape = (batch, kv_heads, length + steps, head_dim)
            k, v = (
                torch.randn(shape, generator=generator, device=device_, dtype=torch_dtype)
                for _ in "kv"
            )
            q = torch.randn(
                (batch, q_heads, 1, head_dim),
                generator=generator,
                device=device_,
                dtype=torch_dtype,
            )
            dense_call = functools.partial(_dense_decode, q, k[:, :, :length], v[:, :, :length])
            dense = time_call(dense_call, device_, repeats, 3)
            dense_mb = peak_extra_memory(dense_call, device_)
            document["records"].append(
                dict(
                    contender="dense",
                    length=length,
                    batch=batch,
                    budget=None,
                    step_ms=dense["median_ms"],
                    peak_extra_mb=dense_mb / 2**20,
                )
            )
            bar.update(1)
            for budget in budgets:
                case = base.replace(budget=budget)
                record = decode_case(q, k, v, case, backend, steps, repeats, page_size)
                record.update(contender="dhsa", length=length, batch=batch, budget=budget)
                if record["check_passed"]:
                    record["speedup"] = dense["median_ms"] / record["step_ms"]
                    record["attend_speedup"] = dense["median_ms"] / record["attend_ms"]
                document["records"].append(record)
                bar.update(1)
                if not fused:
                    continue
                for fused_record in fused_cases(q, k, v, case, steps):
                    fused_record.update(length=length, batch=batch, budget=budget)
                    if fused_record["check_passed"]:
                        fused_record["speedup"] = dense["median_ms"] / fused_record["step_ms"]
                    document["records"].append(fused_record)
                bar.update(1)
            out_path.write_text(json.dumps(document, indent=1))
            del k, v
    bar.close()
    return document
