"""The public entry points: :func:`select` (which keys) and :func:`sparse_attention` (attend)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import DHSAConfig
from .kernels import resolve_backend, run_backend
from .layout import Layout
from .methods import Method, get_method
from .methods.fixed_windows import select_dense
from .validation import (
    check_finite,
    check_qk,
    check_qkv,
    check_scale,
    check_sliding_window,
    check_softcap,
)


def select(
    q: Tensor,
    k: Tensor,
    config: DHSAConfig | None = None,
    *,
    method: str = "dhsa",
    sliding_window: int | None = None,
    boundaries: Tensor | None = None,
    scale: float | None = None,
) -> Layout:
    """The key spans each query block of ``q [B, Hq, Lq, D]`` attends in ``k [B, Hkv, Lk, D]``.

    Queries are the last ``Lq`` of the ``Lk`` key positions. ``method`` is one of
    ``dhsa.methods.METHODS`` (``dense``, ``dhsa``, ``block_sparse``, ``streaming``,
    ``oracle_topk``, ...). ``boundaries`` (int64 ``[B, N + 1]``) reuses precomputed chunk
    boundaries for ``dhsa``. Raises :class:`dhsa.NonFiniteInputError` when q or k hold NaN/Inf,
    whatever the method (the policy is stated there).
    """
    config = _check_config(config)
    check_qk(q, k)
    sliding_window = check_sliding_window(sliding_window)
    chosen = get_method(method)
    scale = check_scale(scale, q.shape[-1])
    check_finite(q, k)
    return _select(
        chosen, q, k, config, sliding_window=sliding_window, boundaries=boundaries, scale=scale
    )


def _select(method: Method, q, k, config, *, sliding_window, boundaries, scale) -> Layout:
    """``method``'s layout for inputs a public entry point has checked."""
    with torch.no_grad():
        return method.select(
            q, k, config, sliding_window=sliding_window, boundaries=boundaries, scale=scale
        )


def runs_dense(
    method: Method,
    config: DHSAConfig,
    *,
    q_len: int,
    k_len: int,
    device: torch.device,
    sliding_window: int | None,
) -> bool:
    """Whether ``q_len`` queries over ``k_len`` keys on ``device`` run dense attention instead of
    selecting: the one rule of :func:`sparse_attention` (``backend="auto"``) and of models.

    Dense when ``method`` is dense; when the keys are fewer than ``config.dense_below(device)``
    (selection cannot pay for itself there); for a decode step (one query) with
    ``config.sparse_decode`` off; and on a sliding window of at most ``config.budget`` keys with a
    method that fills the budget (it would keep about every visible key anyway; dense keeps each
    query's whole window, at most ``budget`` keys).
    """
    if method.dense or k_len < config.dense_below(device):
        return True
    if q_len == 1 and not config.sparse_decode:
        return True
    short_window = sliding_window is not None and sliding_window <= config.budget
    return short_window and method.fills_budget


def _check_config(config: object) -> DHSAConfig:
    if config is None:
        return DHSAConfig()
    if isinstance(config, dict):
        raise TypeError(
            "config must be a DHSAConfig, got a dict: pass dhsa.DHSAConfig(**that_dict) instead"
        )
    if not isinstance(config, DHSAConfig):
        raise TypeError(f"config must be a DHSAConfig or None, got {type(config).__name__}")
    return config


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    query_block: int = 64,
) -> Tensor:
    """Dense causal attention (queries = last ``Lq`` positions): SDPA when it can express the
    call, otherwise the tiled torch backend on a dense layout (memory stays bounded)."""
    check_qkv(q, k, v)
    return _dense(
        q,
        k,
        v,
        scale=check_scale(scale, q.shape[-1]),
        sliding_window=check_sliding_window(sliding_window),
        softcap=check_softcap(softcap),
        query_block=query_block,
    )


def _dense(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    sliding_window: int | None,
    softcap: float | None,
    query_block: int,
    tile_elements: int = DHSAConfig.tile_elements,
) -> Tensor:
    """:func:`dense_attention` on inputs a public entry point has checked."""
    q_len, k_len = q.shape[2], k.shape[2]
    window_matters = sliding_window is not None and sliding_window < k_len
    # SDPA's causal mask is aligned to the top left: it expresses queries at every key position,
    # or one query (a decode step) that sees every key, and nothing in between.
    if softcap is None and not window_matters and q_len in (1, k_len):
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=q_len > 1, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
    layout = select_dense(
        q,
        k,
        DHSAConfig(query_block=query_block, sink=0, local=0, budget=query_block),
        sliding_window=sliding_window,
    )
    backend = resolve_backend("auto", q.device)
    return run_backend(
        backend, q, k, v, layout, scale=scale, softcap=softcap, tile_elements=tile_elements
    )


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    config: DHSAConfig | None = None,
    *,
    method: str = "dhsa",
    scale: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    backend: str = "auto",
    boundaries: Tensor | None = None,
) -> Tensor:
    """Causal sparse attention: each query attends exactly to the keys ``method`` selects.

    Args:
        q: ``[B, Hq, Lq, D]`` queries, the last ``Lq`` positions of the sequence (after RoPE).
        k, v: ``[B, Hkv, Lk, D]`` keys and values; ``Hq = G * Hkv`` (GQA, K/V never repeated).
        config: budget, sink, local window, chunking; ``DHSAConfig()`` when None.
        method: a selection method (see :func:`select`).
        scale: softmax scale, default ``1 / sqrt(D)``.
        sliding_window: keys older than this many positions are invisible (Mistral/Gemma layers).
        softcap: logit soft-capping ``softcap * tanh(logit / softcap)`` (Gemma 2).
        backend: ``"auto"`` (Triton on CUDA when available, else torch), ``"torch"``,
            ``"reference"`` or ``"triton"``.
        boundaries: precomputed chunk boundaries ``[B, N + 1]`` to reuse (``dhsa``).

    Returns ``[B, Hq, Lq, D]`` in ``q.dtype``. With ``backend="auto"`` the calls that
    :func:`runs_dense` names (short sequences, ``method="dense"``, windows that fit the budget)
    run dense attention directly; a named backend always runs the selection.
    Raises :class:`dhsa.NonFiniteInputError` when q or k hold NaN/Inf, on every path.
    """
    config = _check_config(config)
    check_qkv(q, k, v)
    scale = check_scale(scale, q.shape[-1])
    softcap = check_softcap(softcap)
    sliding_window = check_sliding_window(sliding_window)
    chosen = get_method(method)
    name = resolve_backend(backend, q.device)
    check_finite(q, k)
    dense = backend == "auto" and runs_dense(
        chosen,
        config,
        q_len=q.shape[2],
        k_len=k.shape[2],
        device=k.device,
        sliding_window=sliding_window,
    )
    if dense:
        return _dense(
            q,
            k,
            v,
            scale=scale,
            sliding_window=sliding_window,
            softcap=softcap,
            query_block=config.query_block,
            tile_elements=config.tile_elements,
        )
    layout = _select(
        chosen, q, k, config, sliding_window=sliding_window, boundaries=boundaries, scale=scale
    )
    return run_backend(
        name, q, k, v, layout, scale=scale, softcap=softcap, tile_elements=config.tile_elements
    )
