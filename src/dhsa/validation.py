"""Input checks shared by the public entry points: errors name the problem and what is allowed."""

from __future__ import annotations

import math

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D [B, H, L, D], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor {FLOAT_DTYPES}, got {x.dtype}")
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
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})"
        )
    if k.shape[2] == 0 or q.shape[2] == 0:
        raise ValueError(f"empty sequence: q has {q.shape[2]} positions, k has {k.shape[2]}")
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


def check_scale(scale: float | None, dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return float(scale)


def check_softcap(softcap: float | None) -> float | None:
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
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
