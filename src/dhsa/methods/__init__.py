"""Selection methods: each turns ``q, k`` into the common span :class:`~dhsa.layout.Layout`.

A selector is ``fn(q, k, config, *, sliding_window=None, boundaries=None, scale=None) -> Layout``
with ``q [B, Hq, Lq, D]`` and ``k [B, Hkv, Lk, D]``. ``boundaries`` (int64 ``[B, N + 1]``) lets a
caller reuse chunk boundaries across layers; ``scale`` is the attention's softmax scale.
"""

from __future__ import annotations

from collections.abc import Callable

from ..layout import Layout
from .chunked import select_block_sparse, select_dhsa
from .dash import select_dash
from .fixed_windows import select_dense, select_streaming
from .greedy import NonFiniteInputError
from .hip import select_hip
from .oracle import select_oracle_topk
from .vertical_slash import select_vertical_slash

Selector = Callable[..., Layout]

SELECTORS: dict[str, Selector] = {
    "dense": select_dense,
    "dhsa": select_dhsa,
    "block_sparse": select_block_sparse,
    "streaming": select_streaming,
    "oracle_topk": select_oracle_topk,
    "dash": select_dash,
    "hip": select_hip,
    "vertical_slash": select_vertical_slash,
}


def register_method(name: str, selector: Selector) -> None:
    """Make ``selector`` available as ``method=name`` everywhere (select, attention, bench)."""
    if not name.isidentifier():
        raise ValueError(f"method name must be an identifier, got {name!r}")
    SELECTORS[name] = selector


def get_selector(name: str) -> Selector:
    """The selector registered as ``name``; ValueError naming the known methods otherwise."""
    if name not in SELECTORS:
        raise ValueError(f"unknown method {name!r}: allowed {sorted(SELECTORS)}")
    return SELECTORS[name]


__all__ = ["SELECTORS", "NonFiniteInputError", "get_selector", "register_method"]
