"""Backend choice and the one call every backend sits behind."""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from ..layout import Layout
from ..validation import check_qkv, check_scale, check_softcap
from .reference import attend_reference
from .torch_decode import attend_decode_torch, check_paged
from .torch_tiled import attend_torch

BACKENDS = ("auto", "reference", "torch", "triton")


def triton_available(device: torch.device) -> bool:
    """True when the Triton backend can run on ``device`` (CUDA, triton importable)."""
    if device.type != "cuda":
        return False
    try:
        importlib.import_module("dhsa.kernels.triton_prefill")
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for ``backend`` on ``device``; ValueError if it cannot run there."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: allowed {BACKENDS}")
    if backend == "auto":
        return "triton" if triton_available(device) else "torch"
    if backend == "triton" and not triton_available(device):
        raise ValueError(
            f"backend 'triton' needs CUDA tensors and an importable triton; got device {device}"
        )
    return backend


def check_layout(q: Tensor, k: Tensor, layout: Layout) -> None:
    """ValueError unless ``layout`` describes these tensors' geometry."""
    if not isinstance(layout, Layout):
        raise TypeError(
            f"layout must be a dhsa.Layout (from dhsa.select), got {type(layout).__name__}"
        )
    geometry = (q.shape[0], k.shape[1], q.shape[2], k.shape[2])
    expected = (layout.batch, layout.kv_heads, layout.q_len, layout.k_len)
    if geometry != expected:
        raise ValueError(f"layout is for (B, Hkv, Lq, Lk) = {expected}, tensors give {geometry}")
    if layout.device != q.device:
        raise ValueError(f"layout is on {layout.device}, tensors on {q.device}")


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Layout,
    *,
    scale: float | None = None,
    softcap: float | None = None,
    backend: str = "auto",
    tile_elements: int = 1 << 20,
) -> Tensor:
    """Exact softmax attention of every query over the keys its layout row selects.

    ``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]`` (GQA: query head ``h`` reads KV head
    ``h // (Hq // Hkv)``), queries being the last ``Lq`` key positions. ``scale`` defaults to
    ``1 / sqrt(D)``; ``softcap`` applies ``softcap * tanh(logit / softcap)``. Returns
    ``[B, Hq, Lq, D]`` in ``q.dtype``. ``tile_elements`` bounds the torch backend's logits tile.
    """
    check_qkv(q, k, v)
    check_layout(q, k, layout)
    scale = check_scale(scale, q.shape[-1])
    softcap = check_softcap(softcap)
    name = resolve_backend(backend, q.device)
    return run_backend(
        name, q, k, v, layout, scale=scale, softcap=softcap, tile_elements=tile_elements
    )


def run_backend(
    name: str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Layout,
    *,
    scale: float,
    softcap: float | None,
    tile_elements: int,
) -> Tensor:
    """:func:`attend` on inputs a public entry point has already checked: ``name`` a concrete
    backend from :func:`resolve_backend`, ``scale`` a float, the layout made for these tensors."""
    if name == "reference":
        return attend_reference(q, k, v, layout, scale=scale, softcap=softcap)
    if name == "torch":
        return attend_torch(
            q, k, v, layout, scale=scale, softcap=softcap, tile_elements=tile_elements
        )
    triton_prefill = importlib.import_module("dhsa.kernels.triton_prefill")
    return triton_prefill.attend_triton(q, k, v, layout, scale=scale, softcap=softcap)


def attend_decode(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    starts: Tensor,
    ends: Tensor,
    *,
    scale: float | None = None,
    softcap: float | None = None,
    backend: str = "auto",
    page_table: Tensor | None = None,
    max_keys: int | None = None,
) -> Tensor:
    """Attention of one query per sequence over padded key spans: the sparse decode step.

    ``q [B, Hq, 1, D]`` is the query at key position ``Lk - 1`` of ``k, v [B, Hkv, Lk, D]``;
    ``starts, ends`` (integer ``[B, Hkv, S]``) are disjoint spans of keys up to the query, empty
    where ``end <= start``: the fields of :class:`~dhsa.layout.DecodeSpans`, as
    :meth:`dhsa.decode.DecodeSession.select_spans` gives them (``attend_decode(q, k, v, *spans)``).
    The Triton backend reads the spans as they are, with no device-to-host synchronization; the
    torch backend gathers the spans' keys (:mod:`dhsa.kernels.torch_decode`), without reading the
    device when ``max_keys`` bounds a row's keys (the budget); the reference attends them as a
    layout.
    Returns ``[B, Hq, 1, D]`` in ``q.dtype``.

    Paged cache: with ``page_table`` (int32 ``[B, max_pages]``), ``k, v`` are pools
    ``[num_pages, page_size, Hkv, D]``, the page layout of vLLM and FlashInfer ("NHD"): positions
    ``[i * page_size, (i + 1) * page_size)`` of sequence ``b`` lie in page ``page_table[b, i]``.
    The spans must lie within each sequence's pages (not checked: that would synchronize).
    """
    if page_table is None:
        check_qkv(q, k, v)
        kv_shape = k.shape[:2]
    else:
        check_paged(q, k, v, page_table)
        if not (q.dtype == k.dtype == v.dtype):
            raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
        kv_shape = (q.shape[0], k.shape[2])
    if q.shape[2] != 1 or starts.shape != ends.shape or starts.shape[:2] != kv_shape:
        raise ValueError(
            f"decode attention takes q [B, Hq, 1, D] and spans [B, Hkv, S]; got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)}, starts {tuple(starts.shape)}, ends "
            f"{tuple(ends.shape)}"
        )
    scale = check_scale(scale, q.shape[-1])
    softcap = check_softcap(softcap)
    name = resolve_backend(backend, q.device)
    if name == "triton":
        triton_decode = importlib.import_module("dhsa.kernels.triton_decode")
        return triton_decode.attend_triton_decode_spans(
            q, k, v, starts, ends, scale=scale, softcap=softcap, page_table=page_table
        )
    if name == "torch":
        return attend_decode_torch(
            q,
            k,
            v,
            starts,
            ends,
            scale=scale,
            softcap=softcap,
            page_table=page_table,
            max_keys=max_keys,
        )
    if page_table is not None:
        raise ValueError("the reference backend takes a contiguous cache; use 'torch' for pages")
    layout = Layout.from_decode_spans(starts, ends, k.shape[2])
    return attend_reference(q, k, v, layout, scale=scale, softcap=softcap)
