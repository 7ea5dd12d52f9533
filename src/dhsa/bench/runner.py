"""The benchmark loop: contenders x lengths x budgets, written to JSON after every measurement."""

from __future__ import annotations

import datetime
import json
import logging
import platform
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import DHSAConfig
from ..kernels import resolve_backend
from ..layout import Layout
from .check import spot_check, tolerance
from .contenders import get_contender
from .measure import peak_extra_memory, time_call
from .presets import BenchPreset

logger = logging.getLogger(__name__)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"


def record_header(command: str, device: torch.device) -> dict:
    """The fields every benchmark record starts with: command, UTC date, device, torch."""
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "torch": torch.__version__,
    }


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"bench device {name!r} requested but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"bench device must be cpu or cuda, got {name!r}")
    return device


def load_inputs(path: str | Path, length: int, device: torch.device, dtype: torch.dtype):
    """Recorded ``{"q", "k", "v"}`` tensors ``[B, H, L, D]`` from a ``torch.save`` file, cut to
    their first ``length`` positions."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recorded inputs file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several kinds for a damaged or foreign file
        raise ValueError(
            f"{path} is not a torch.save file of tensors q, k, v (torch.load raised "
            f"{type(error).__name__}); save one with torch.save({{'q': q, 'k': k, 'v': v}}, path)"
        ) from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, expected a dict of q, k, v")
    missing = {"q", "k", "v"} - set(data)
    if missing:
        raise ValueError(f"{path} lacks tensors {sorted(missing)}: expected keys q, k, v")
    for name in ("q", "k", "v"):
        tensor = data[name]
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4 or 0 in tensor.shape:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor)
            raise ValueError(f"{path}: {name} must be a non-empty [B, H, L, D] tensor, got {shape}")
    available = data["k"].shape[2]
    if length > available:
        raise ValueError(f"{path} holds {available} positions, the benchmark asked for {length}")
    return tuple(data[n][:, :, :length].to(device=device, dtype=dtype) for n in ("q", "k", "v"))


def random_inputs(preset: BenchPreset, length: int, device, dtype, seed: int):
    generator = torch.Generator(device="cpu").manual_seed(seed + length)
    shapes = [
        (preset.batch, preset.q_heads, length, preset.head_dim),
        (preset.batch, preset.kv_heads, length, preset.head_dim),
        (preset.batch, preset.kv_heads, length, preset.head_dim),
    ]
    return tuple(torch.randn(s, generator=generator).to(device=device, dtype=dtype) for s in shapes)


def attended_pairs(layout: Layout | None, q: torch.Tensor, k_len: int) -> int:
    """Query-key pairs computed, over all query heads and batch."""
    batch, q_heads, q_len = q.shape[:3]
    if layout is None:
        position = torch.arange(k_len - q_len, k_len) + 1
        return int(position.sum()) * batch * q_heads
    group = q_heads // layout.kv_heads
    return int(layout.num_selected().sum()) * group


def run_bench(
    preset: BenchPreset,
    *,
    out_path: str | Path,
    command: str,
    backend: str = "auto",
    inputs_path: str | Path | None = None,
    config: DHSAConfig | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Measure every contender of ``preset``; return (and keep writing) the JSON document.

    Sparse contenders run with ``config`` (default ``DHSAConfig()``) at each budget, with the dense
    fallback disabled so the sparse path itself is measured. A speedup over the fastest dense
    contender at the same length is recorded only when the sparse output passed the spot check.
    """
    device = resolve_device(preset.device)
    dtype = getattr(torch, preset.dtype)
    base = (config or DHSAConfig()).replace(min_length=0)
    contenders = [get_contender(name) for name in preset.contenders]
    resolve_backend(backend, device)
    if inputs_path:
        load_inputs(inputs_path, max(preset.lengths), device, dtype)  # checked before any run
    dense = [c for c in contenders if c.dense]
    sparse = [c for c in contenders if not c.dense]
    document = {
        **record_header(command, device),
        "backend": backend,
        "inputs": str(inputs_path) if inputs_path else "random",
        "preset": asdict(preset),
        # The budget of each record is its own (`budget`); the rest is shared by all records.
        "config": {**asdict(base), "budget": None, "budgets": list(preset.budgets)},
        "records": [],
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    total = len(preset.lengths) * (len(dense) + len(sparse) * len(preset.budgets))
    bar = tqdm(total=total, desc="dhsa bench", unit="case", disable=not progress)
    for length in preset.lengths:
        if inputs_path:
            q, k, v = load_inputs(inputs_path, length, device, dtype)
        else:
            q, k, v = random_inputs(preset, length, device, dtype, seed)
        baseline = None
        cases = [(c, None) for c in dense] + [(c, b) for b in preset.budgets for c in sparse]
        for contender, budget in cases:
            bar.set_postfix_str(f"L={length} {contender.name} budget={budget}")
            cfg = base if budget is None else base.replace(budget=budget)
            record = measure_case(contender, q, k, v, cfg, backend, preset, device)
            record.update(length=length, budget=budget)
            if contender.dense:
                time_ms = record["median_ms"]
                baseline = time_ms if baseline is None else min(baseline, time_ms)
            document["records"].append(record)
            bar.update(1)
        for record in document["records"]:
            if record["length"] == length and not record["dense"] and baseline is not None:
                add_ratios(record, baseline)
        out_path.write_text(json.dumps(document, indent=1))
    bar.close()
    return document


def measure_case(contender, q, k, v, config, backend, preset, device) -> dict:
    prepared = contender.prepare(q, k, v, config, backend)
    out = prepared.run()
    error = spot_check(q, k, v, out, prepared.layout)
    passed = error <= tolerance(q.dtype)
    if not passed:
        logger.warning("%s failed the correctness check (rel. error %.3g)", contender.name, error)
    del out
    timing = time_call(prepared.run, device, preset.repeats, preset.warmup)
    record = {
        "contender": contender.name,
        "dense": contender.dense,
        "median_ms": timing["median_ms"],
        "min_ms": timing["min_ms"],
        "check_rel_error": error,
        "check_passed": passed,
        "peak_extra_mb": peak_extra_memory(prepared.run, device) / 2**20,
    }
    pairs = attended_pairs(prepared.layout, q, k.shape[2])
    record["tflops"] = 4 * q.shape[-1] * pairs / (timing["median_ms"] * 1e-3) / 1e12
    if prepared.layout is not None:
        record["density"] = prepared.layout.density()
    else:
        record["density"] = 1.0
    if prepared.select_only is not None:
        select_timing = time_call(prepared.select_only, device, preset.repeats, 0)
        record["select_ms"] = select_timing["median_ms"]
        record["select_share"] = select_timing["median_ms"] / timing["median_ms"]
    if prepared.attend_only is not None:
        record["attend_ms"] = time_call(prepared.attend_only, device, preset.repeats, 1)[
            "median_ms"
        ]
    return record


def add_ratios(record: dict, dense_ms: float) -> None:
    """Speedup and fraction of ideal (``dense_time * density / sparse_time``), only if correct."""
    record["dense_ms"] = dense_ms
    if record["check_passed"]:
        record["speedup"] = dense_ms / record["median_ms"]
        record["fraction_of_ideal"] = dense_ms * record["density"] / record["median_ms"]
    else:
        record["speedup"] = None
        record["fraction_of_ideal"] = None
