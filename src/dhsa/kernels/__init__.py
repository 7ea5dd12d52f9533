"""Backends that run attention over a span layout: ``reference``, ``torch`` and ``triton``."""

from .dispatch import (
    BACKENDS,
    attend,
    attend_decode,
    resolve_backend,
    run_backend,
    triton_available,
)
from .reference import attend_reference
from .torch_tiled import attend_torch

__all__ = [
    "BACKENDS",
    "attend",
    "attend_decode",
    "attend_reference",
    "attend_torch",
    "resolve_backend",
    "run_backend",
    "triton_available",
]
