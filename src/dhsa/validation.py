"""Input checks shared by the public entry points: errors name the problem and what is allowed."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class NonFiniteInputError(ValueError):
    """Queries or keys hold NaN or Inf, so no selection can be trusted.

    The policy, the same for every method and backend: :func:`dhsa.select` and
    :func:`dhsa.sparse_attention` (sparse or dense, above or below ``min_length``) raise this
    error when ``q`` or ``k`` holds NaN or +-Inf, and selectors raise it when their scores
    overflow. In a Hugging Face model using ``attn_implementation="dhsa"`` every forward pass
    raises it for NaN/Inf in the queries or in the keys it adds to the cache (prefill and decode,
    dense and sparse layers), so each key is checked once: a prefill at the attention call that
    meets them, a decode step (checked on the device per layer) at its last layer. A compiled
    decode step is not checked. ``v`` is not checked (it does not
    decide which keys are kept): NaN there reaches the output, as in dense attention.
    :func:`dhsa.attend` and :func:`dhsa.dense_attention` compute exactly what they are given.
    """


def check_finite(q: Tensor, k: Tensor) -> None:
    """:class:`NonFiniteInputError` when ``q`` or ``k`` holds NaN or Inf."""
    if not bool(torch.isfinite(q).all() & torch.isfinite(k).all()):
        raise NonFiniteInputError("q or k contains NaN or Inf: refusing to select keys")


def check_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D [B, H, L, D], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor {FLOAT_DTYPES}, got {x.dtype}")
    if 0 in x.shape:
        raise ValueError(
            f"{name} has an empty dimension: shape {tuple(x.shape)} [B, H, L, D]; batch, heads, "
            "length and head dim must all be >= 1"
        )
    return x


def check_qk(q: Tensor, k: Tensor) -> None:
    """``q [B, Hq, Lq, D]`` and ``k [B, Hkv, Lk, D]`` with ``Hq % Hkv == 0`` and ``Lq <= Lk``."""
    check_tensor("q", q)
    check_tensor("k", k)
    if q.device != k.device:
        raise ValueError(f"q and k are on different devices: {q.device} and {k.device}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"batch sizes differ: q has {q.shape[0]}, k has {k.shape[0]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"head dims differ: q has {q.shape[-1]}, k has {k.shape[-1]}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})"
        )
    if q.shape[2] > k.shape[2]:
        raise ValueError(
            f"more queries ({q.shape[2]}) than keys ({k.shape[2]}): queries are the last Lq "
            "positions of the key sequence"
        )


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    check_qk(q, k)
    check_tensor("v", v)
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must match k in [B, Hkv, Lk]: k {tuple(k.shape)}, v {tuple(v.shape)}")
    if v.device != k.device:
        raise ValueError(f"k and v are on different devices: {k.device} and {v.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def _is_number(x: object) -> bool:
    """Python and NumPy ints and floats; not bools."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_scale(scale: float | None, dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(dim)
    if not _is_number(scale):
        raise TypeError(f"scale must be a number or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return float(scale)


def check_softcap(softcap: float | None) -> float | None:
    if softcap is None:
        return None
    if not _is_number(softcap):
        raise TypeError(f"softcap must be a number or None, got {type(softcap).__name__}")
    if not math.isfinite(softcap) or softcap <= 0:
        raise ValueError(f"softcap must be a positive finite number or None, got {softcap}")
    return float(softcap)


def check_sliding_window(window: int | None) -> int | None:
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"sliding_window must be an int or None, got {type(window).__name__}")
    if window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {window}")
    return window
