"""Selection methods: each turns ``q, k`` into the common span :class:`~dhsa.layout.Layout`.

A selector is ``fn(q, k, config, *, sliding_window=None, boundaries=None, scale=None) -> Layout``
with ``q [B, Hq, Lq, D]`` and ``k [B, Hkv, Lk, D]``. ``boundaries`` (int64 ``[B, N + 1]``) lets a
caller reuse chunk boundaries across layers; ``scale`` is the attention's softmax scale.

Each method is registered as a :class:`Method` record (:mod:`dhsa.methods.registry`) that also
says how it decodes and when attention may run dense instead; built-in methods are registered
below exactly as an outside one would be, with :func:`register_method`.
"""

from __future__ import annotations

from ..config import DHSAConfig
from .chunked import select_block_sparse, select_dhsa
from .dash import select_dash
from .fixed_windows import select_dense, select_streaming
from .greedy import NonFiniteInputError
from .hip import select_hip
from .oracle import select_oracle_topk
from .registry import (
    METHODS,
    SELECTORS,
    IncrementalDecode,
    Method,
    Selector,
    get_method,
    register_method,
)
from .vertical_slash import select_vertical_slash


def _dhsa_decode_norm(config: DHSAConfig) -> str:
    """``dhsa`` decodes with the chunk normalization of its prefill scoring."""
    return "peak" if config.scoring == "peak" else "sqrt"


register_method("dense", select_dense, dense=True)
register_method(
    "dhsa",
    select_dhsa,
    decode=IncrementalDecode(norm=_dhsa_decode_norm),
    fills_budget=True,
    shares_boundaries=True,
)
register_method(
    "block_sparse",
    select_block_sparse,
    decode=IncrementalDecode(norm="mean", chunker="fixed"),
    fills_budget=True,
)
register_method("streaming", select_streaming, fills_budget=True)
register_method("oracle_topk", select_oracle_topk, fills_budget=True)
register_method("dash", select_dash)
register_method("hip", select_hip)
register_method("vertical_slash", select_vertical_slash)


__all__ = [
    "METHODS",
    "SELECTORS",
    "IncrementalDecode",
    "Method",
    "NonFiniteInputError",
    "Selector",
    "get_method",
    "register_method",
]
