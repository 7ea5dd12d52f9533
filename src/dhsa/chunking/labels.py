"""Boundary labels for the learned chunker, from a dense attention run of a real model.

The cut ``t`` (between positions ``t`` and ``t + 1``) is a boundary when the later queries (those
after both windows, positions ``> t + w``) put at least ``ratio`` times as much attention mass on
the ``w`` keys on one side of the cut as on the ``w`` keys on the other. Attention is the dense
causal softmax averaged over query heads. Only cuts with full windows on both sides and at least
one later query are labelled.

The mass that later queries give key ``j`` is its column sum minus the first few entries of its
column, so one pass over query tiles (``colsum`` plus a band of ``2w`` diagonals) is enough: no
``L x L`` matrix is kept.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _column_mass(q: Tensor, k: Tensor, band: int, scale: float, query_tile: int):
    """Head-averaged causal attention ``A``: column sums ``[B, L]`` and ``A[j + e, j]``
    ``[B, L, band]`` (0 past the end)."""
    batch, q_heads, length, dim = q.shape
    group = q_heads // k.shape[1]
    keys = k.float().repeat_interleave(group, dim=1)
    colsum = torch.zeros(batch, length, dtype=torch.float64, device=q.device)
    diagonals = torch.zeros(batch, length, band, dtype=torch.float64, device=q.device)
    k_pos = torch.arange(length, device=q.device)
    for i0 in range(0, length, query_tile):
        i1 = min(i0 + query_tile, length)
        q_pos = torch.arange(i0, i1, device=q.device)
        logits = (q[:, :, i0:i1].float() @ keys.transpose(-1, -2)) * scale
        logits = logits.masked_fill(k_pos[None, :] > q_pos[:, None], -torch.inf)
        probs = logits.softmax(dim=-1).mean(dim=1).double()
        colsum += probs.sum(dim=1)
        for e in range(band):
            rows = q_pos[q_pos >= e]
            diagonals[:, rows - e, e] = probs[:, rows - i0, rows - e]
    return colsum, diagonals


def boundary_labels(
    q: Tensor,
    k: Tensor,
    *,
    window: int = 4,
    ratio: float = 2.0,
    scale: float | None = None,
    query_tile: int = 512,
) -> tuple[Tensor, Tensor]:
    """Labels of the cuts of one layer: bool ``labels [B, L - 1]`` and bool ``valid [L - 1]``.

    ``q [B, Hq, L, D]`` and ``k [B, Hkv, L, D]`` are the layer's queries and keys after RoPE
    (queries at every position). See the module docstring for the rule.
    """
    length, dim = k.shape[2], k.shape[3]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    colsum, diagonals = _column_mass(q, k, 2 * window, scale, query_tile)
    # seen[j, m]: mass key j gets from queries j .. j + m.
    seen = diagonals.cumsum(dim=-1)
    cuts = torch.arange(length - 1, device=k.device)
    valid = (cuts >= window - 1) & (cuts + window + 1 <= length - 1)
    t = cuts.clamp(window - 1, max(length - window - 2, window - 1))
    left = torch.zeros(k.shape[0], length - 1, dtype=torch.float64, device=k.device)
    right = torch.zeros_like(left)
    for d in range(window):
        j = (t - d).clamp(0, length - 1)
        left += colsum[:, j] - seen[:, j, window + d]
        j = (t + 1 + d).clamp(0, length - 1)
        right += colsum[:, j] - seen[:, j, window - 1 - d]
    low = torch.minimum(left, right)
    high = torch.maximum(left, right)
    labels = (high >= ratio * low) & valid
    return labels, valid


def capture_keys_and_labels(
    model, input_ids: Tensor, layers: list[int], *, window: int = 4, ratio: float = 2.0
) -> dict[int, tuple[Tensor, Tensor, Tensor]]:
    """One dense prefill of ``input_ids [1, L]``; for each layer in ``layers``: keys averaged over
    KV heads ``[L, D]`` (float32, after RoPE), ``labels [L - 1]`` and ``valid [L - 1]``.

    Uses an attention function registered with transformers' ``AttentionInterface`` that runs the
    usual SDPA and labels the layer on the side; the model's own implementation is restored.
    """
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    wanted, captured = set(layers), {}

    def capture(module, query, key, value, attention_mask, **kwargs):
        if module.layer_idx in wanted:
            labels, valid = boundary_labels(
                query, key, window=window, ratio=ratio, scale=kwargs.get("scaling")
            )
            captured[module.layer_idx] = (key[0].float().mean(dim=0), labels[0], valid)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("dhsa_label_capture", capture)
    ALL_MASK_ATTENTION_FUNCTIONS.register("dhsa_label_capture", sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation("dhsa_label_capture")
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    missing = wanted - set(captured)
    if missing:
        raise ValueError(f"layers {sorted(missing)} do not exist in this model")
    return captured


__all__ = ["boundary_labels", "capture_keys_and_labels"]
