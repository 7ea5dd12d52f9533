"""Shared test helpers: fresh random inputs and an independent float64 dense attention."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture
def rng():
    """A fresh generator per test, seeded from the test's own randomness source."""
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return torch.Generator().manual_seed(seed)


def make_qkv(batch, q_heads, kv_heads, q_len, k_len, dim, generator, dtype=torch.float32):
    q = torch.randn(batch, q_heads, q_len, dim, generator=generator).to(dtype)
    k = torch.randn(batch, kv_heads, k_len, dim, generator=generator).to(dtype)
    v = torch.randn(batch, kv_heads, k_len, dim, generator=generator).to(dtype)
    return q, k, v


def naive_attention(q, k, v, *, mask=None, scale=None, window=None, softcap=None):
    """Float64 dense attention written from the definition (queries = last Lq positions).

    ``mask``: optional bool ``[B, Hkv, Lq, Lk]`` restricting keys further. Rows with no key give
    zeros.
    """
    batch, q_heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    qd, kd, vd = q.double(), k.double(), v.double()
    kd = kd.repeat_interleave(group, dim=1)
    vd = vd.repeat_interleave(group, dim=1)
    logits = qd @ kd.transpose(-1, -2) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    q_pos = torch.arange(k_len - q_len, k_len)[:, None]
    k_pos = torch.arange(k_len)[None, :]
    allowed = (k_pos <= q_pos).expand(batch, q_heads, q_len, k_len)
    if window is not None:
        allowed = allowed & (q_pos - k_pos < window)
    if mask is not None:
        allowed = allowed & mask.repeat_interleave(group, dim=1)
    logits = logits.masked_fill(~allowed, -torch.inf)
    has_key = allowed.any(-1, keepdim=True)
    probs = torch.softmax(logits.masked_fill(~has_key, 0.0), dim=-1) * has_key
    return probs @ vd


def rel_error(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
