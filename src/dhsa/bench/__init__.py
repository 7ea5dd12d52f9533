"""Latency and memory harness behind ``dhsa bench``: shapes in a registry, contenders in a
registry, correctness checked before any speedup is reported."""

from . import flex  # noqa: F401  (registers the FlexAttention contenders)
from .contenders import CONTENDERS, Contender, Prepared, register_contender
from .presets import PRESETS, BenchPreset
from .runner import run_bench

__all__ = [
    "CONTENDERS",
    "PRESETS",
    "BenchPreset",
    "Contender",
    "Prepared",
    "register_contender",
    "run_bench",
]
