"""The public entry points: :func:`select` (which keys) and :func:`sparse_attention` (attend)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import DHSAConfig
from .kernels import attend, resolve_backend
from .layout import Layout
from .methods import get_selector, select_dense
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
    ``dhsa.methods.SELECTORS`` (``dense``, ``dhsa``, ``block_sparse``, ``streaming``,
    ``oracle_topk``, ...). ``boundaries`` (int64 ``[B, N + 1]``) reuses precomputed chunk
    boundaries for ``dhsa``. Raises :class:`dhsa.NonFiniteInputError` when q or k hold NaN/Inf,
    whatever the method (the policy is stated there).
    """
    config = _check_config(config)
    check_qk(q, k)
    sliding_window = check_sliding_window(sliding_window)
    selector = get_selector(method)
    check_finite(q, k)
    with torch.no_grad():
        return selector(
            q,
            k,
            config,
            sliding_window=sliding_window,
            boundaries=boundaries,
            scale=check_scale(scale, q.shape[-1]),
        )


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
    scale = check_scale(scale, q.shape[-1])
    softcap = check_softcap(softcap)
    sliding_window = check_sliding_window(sliding_window)
    window_matters = sliding_window is not None and sliding_window < k.shape[2]
    if softcap is None and not window_matters and q.shape[2] == k.shape[2]:
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
    layout = select_dense(
        q,
        k,
        DHSAConfig(query_block=query_block, sink=0, local=0, budget=query_block),
        sliding_window=sliding_window,
    )
    return attend(q, k, v, layout, scale=scale, softcap=softcap)


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

    Returns ``[B, Hq, Lq, D]`` in ``q.dtype``. With ``backend="auto"``, sequences shorter than
    ``config.dense_below(device)`` keys and ``method="dense"`` run dense attention directly.
    Raises :class:`dhsa.NonFiniteInputError` when q or k hold NaN/Inf, on every path.
    """
    config = _check_config(config)
    check_qkv(q, k, v)
    scale = check_scale(scale, q.shape[-1])
    softcap = check_softcap(softcap)
    sliding_window = check_sliding_window(sliding_window)
    get_selector(method)
    resolve_backend(backend, q.device)
    if backend == "auto" and (method == "dense" or k.shape[2] < config.dense_below(k.device)):
        check_finite(q, k)
        return dense_attention(
            q,
            k,
            v,
            scale=scale,
            sliding_window=sliding_window,
            softcap=softcap,
            query_block=config.query_block,
        )
    layout = select(
        q,
        k,
        config,
        method=method,
        sliding_window=sliding_window,
        boundaries=boundaries,
        scale=scale,
    )
    return attend(
        q,
        k,
        v,
        layout,
        scale=scale,
        softcap=softcap,
        backend=backend,
        tile_elements=config.tile_elements,
    )
