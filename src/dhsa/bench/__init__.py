"""Latency and memory harness behind ``dhsa bench``: shapes in a registry, contenders in a
registry, correctness checked before any speedup is reported.

The names below are imported on first use (the shape registry, :mod:`dhsa.bench.presets`, needs no
torch, so the command line can offer its choices without loading torch).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CONTENDERS": "contenders",
    "Contender": "contenders",
    "Prepared": "contenders",
    "register_contender": "contenders",
    "PRESETS": "presets",
    "BenchPreset": "presets",
    "run_bench": "runner",
}


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(f"module 'dhsa.bench' has no attribute {name!r}")
    importlib.import_module(".flex", __name__)  # registers the FlexAttention contenders
    if name not in _LAZY:
        try:  # a module, as `dhsa.bench.measure` after a plain `import dhsa.bench`
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
        raise AttributeError(f"module 'dhsa.bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = sorted(_LAZY)
