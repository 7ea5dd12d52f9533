"""Attention fidelity on real activations: how much of dense attention each selection keeps.

Per layer and method, on the layer's own queries and keys (after RoPE):

- ``recall``: the fraction of the dense softmax mass that falls on the keys the method selects,
  averaged over query heads and evaluated queries (1 means nothing that mattered was dropped);
- ``output_error``: ``||O_method - O_dense|| / ||O_dense||`` over the evaluated queries;
- ``density``: the fraction of the causal query-key pairs the layout keeps (all queries);
- ``top8``, ``top32``, ``top128`` (*top-k key recall*): per query head, the share of each
  evaluated query's ``k`` largest dense logits that the layout keeps, averaged over the queries,
  then over the heads; ``top32_worst`` and ``top32_worst_head`` name the head with the lowest
  top-32 recall. Mean mass kept hides a few lost keys that one head needs (a needle); top-k key
  recall per head does not.

Only queries whose block starts at or after ``budget`` keys are evaluated (earlier ones see at
most the budget, so every method keeps all of their keys), at most ``max_query_blocks`` of those
blocks, evenly spaced. Activations come from a recording attention function registered through
transformers' ``AttentionInterface``: it computes the layer's usual SDPA output and measures
fidelity on the side, so no layer's tensors outlive its forward call.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ..attention import dense_attention, select
from ..chunking import compute_boundaries
from ..config import DHSAConfig
from ..kernels import attend
from ..layout import Layout, query_block_bounds
from .options import split_method
from .results import ResultStore, mean_by

logger = logging.getLogger(__name__)

FIDELITY_ATTENTION = "dhsa_fidelity"


def evaluated_blocks(q_len: int, k_len: int, config: DHSAConfig, max_blocks: int) -> Tensor:
    """Query blocks (int64 indices) whose first key position is at least ``config.budget``."""
    starts, _ = query_block_bounds(q_len, k_len, config.query_block, "cpu")
    num_blocks = starts.numel()
    candidates = torch.nonzero(starts >= config.budget).flatten()
    if candidates.numel() == 0:
        candidates = torch.arange(num_blocks)
    if candidates.numel() > max_blocks:
        picks = torch.linspace(0, candidates.numel() - 1, max_blocks).round().long()
        candidates = candidates[picks]
    return candidates


def _block_rows(x: Tensor, blocks: Tensor, query_block: int) -> Tensor:
    """The positions of ``x [B, H, L, D]`` inside ``blocks`` (along L), concatenated."""
    index = (blocks[:, None] * query_block + torch.arange(query_block)[None, :]).flatten()
    index = index[index < x.shape[2]].to(x.device)
    return x.index_select(2, index)


TOPK = (8, 32, 128)


def attention_recall(
    q: Tensor,
    k: Tensor,
    layouts: dict[str, Layout],
    blocks: Tensor,
    *,
    scale: float,
    softcap: float | None,
    sliding_window: int | None,
    query_block: int,
) -> dict[str, dict]:
    """Per layout: ``recall``, the mean dense softmax mass (fp32) inside its selection over query
    heads and the queries of ``blocks``, and the top-k key recall of every query head
    (``topk [Hq]`` per ``k`` of :data:`TOPK`, see the module docstring). ``q [B, Hq, Lq, D]``,
    ``k [B, Hkv, Lk, D]`` (GQA: head ``h`` reads KV head ``h // G``); one block's
    ``[B, Hq, query_block, Lk]`` probabilities exist at a time."""
    batch, q_heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    kf = k.float()
    k_pos = torch.arange(k_len, device=k.device)
    members = {
        name: layout.key_membership().view(batch, kv_heads, layout.num_q_blocks, k_len)
        for name, layout in layouts.items()
    }
    kept = dict.fromkeys(layouts, 0.0)
    hits = {name: {top: torch.zeros(q_heads) for top in TOPK} for name in layouts}
    queries = 0
    for qb in blocks.tolist():
        q0, q1 = qb * query_block, min((qb + 1) * query_block, q_len)
        qf = q[:, :, q0:q1].float().view(batch, kv_heads, group, q1 - q0, dim)
        logits = torch.einsum("bhgqd,bhkd->bhgqk", qf, kf) * scale
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        q_pos = (k_len - q_len) + torch.arange(q0, q1, device=k.device)
        allowed = k_pos[None, :] <= q_pos[:, None]
        if sliding_window is not None:
            allowed &= q_pos[:, None] - k_pos[None, :] < sliding_window
        logits = logits.masked_fill(~allowed, -torch.inf)
        probs = logits.softmax(dim=-1)
        visible = int(allowed.sum(-1).min())
        order = logits.topk(min(max(TOPK), visible), dim=-1).indices
        for name, member in members.items():
            inside = member[:, :, qb, None, None, :]
            kept[name] += float((probs * inside).sum())
            found = inside.expand(-1, -1, group, q1 - q0, -1).gather(-1, order).float()
            for top in TOPK:
                share = found[..., :top].mean(-1).sum(dim=(0, 3))  # [Hkv, G]
                hits[name][top] += share.reshape(-1).cpu()
        queries += q1 - q0
    out = {}
    for name, total in kept.items():
        out[name] = {"recall": total / (queries * batch * q_heads)}
        out[name].update({top: hits[name][top] / (queries * batch) for top in TOPK})
    return out


def layer_fidelity(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    config: DHSAConfig,
    methods: list[str],
    *,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    boundaries: Tensor | None = None,
    max_query_blocks: int = 32,
) -> list[dict]:
    """One record per method: ``{"method", "recall", "output_error", "density", "queries"}``.

    ``q [B, Hq, L, D]``, ``k, v [B, Hkv, L, D]``; computed in float32. ``boundaries`` are reused
    for ``dhsa`` (shared boundaries across layers), computed from ``k`` otherwise.
    """
    q, k, v = q.float(), k.float(), v.float()
    blocks = evaluated_blocks(q.shape[2], k.shape[2], config, max_query_blocks)
    bq = config.query_block
    layouts = {}
    for method in methods:
        name, scoring = split_method(method)
        layouts[method] = select(
            q,
            k,
            config if scoring is None else config.replace(scoring=scoring),
            method=name,
            sliding_window=sliding_window,
            scale=scale,
            boundaries=boundaries if name == "dhsa" else None,
        )
    recall = attention_recall(
        q,
        k,
        layouts,
        blocks,
        scale=scale,
        softcap=softcap,
        sliding_window=sliding_window,
        query_block=bq,
    )
    dense = _block_rows(
        dense_attention(q, k, v, scale=scale, sliding_window=sliding_window, softcap=softcap),
        blocks,
        bq,
    )
    records = []
    for method, layout in layouts.items():
        out = attend(q, k, v, layout, scale=scale, softcap=softcap, backend="torch")
        error = torch.linalg.vector_norm(_block_rows(out, blocks, bq) - dense)
        top = recall[method]
        worst = int(top[32].argmin())
        records.append(
            {
                "method": method,
                "recall": top["recall"],
                **{f"top{k}": float(top[k].mean()) for k in TOPK},
                "top32_worst": float(top[32][worst]),
                "top32_worst_head": worst,
                "output_error": float(error / torch.linalg.vector_norm(dense).clamp(min=1e-30)),
                "density": layout.density(),
                "queries": int(_block_rows(q[:, :1], blocks, bq).shape[2]),
            }
        )
    return records


class FidelityProbe:
    """A transformers attention function that returns SDPA's output and records fidelity.

    Register it with :func:`recording_attention`; after a forward pass ``records`` holds one
    entry per (layer, method) with the layer index and whether the layer slides a window.
    """

    def __init__(self, config: DHSAConfig, methods: list[str], max_query_blocks: int = 32):
        self.config = config
        self.methods = list(methods)
        self.max_query_blocks = max_query_blocks
        self.records: list[dict] = []
        self.boundaries: Tensor | None = None

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        output = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        scale = kwargs.get("scaling") or query.shape[-1] ** -0.5
        window = kwargs.get("sliding_window")
        if window is not None and window >= key.shape[2]:
            window = None
        if self.config.share_boundaries and self.boundaries is None:
            self.boundaries = compute_boundaries(key, self.config)
        layer = module.layer_idx
        with torch.no_grad():
            rows = layer_fidelity(
                query,
                key,
                value,
                self.config,
                self.methods,
                scale=scale,
                sliding_window=window,
                softcap=kwargs.get("softcap"),
                boundaries=self.boundaries if self.config.share_boundaries else None,
                max_query_blocks=self.max_query_blocks,
            )
        for row in rows:
            row.update(layer=layer, sliding_window=window)
            logger.info("layer %s %s recall %.4f", layer, row["method"], row["recall"])
        self.records.extend(rows)
        return output


def recording_attention(model, probe: FidelityProbe) -> str:
    """Make ``model`` run ``probe`` as its attention; returns the implementation it had before
    (restore it with ``model.set_attn_implementation(previous)``)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(FIDELITY_ATTENTION, probe)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FIDELITY_ATTENTION, sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(FIDELITY_ATTENTION)
    return previous


def run_fidelity(model, input_ids: Tensor, probe: FidelityProbe) -> list[dict]:
    """One prefill of ``input_ids [1, L]`` through ``model``, ``probe`` recording every layer."""
    previous = recording_attention(model, probe)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    return probe.records


def summarize_fidelity(records: list[dict]) -> list[dict]:
    """Per method: recall, output error and density averaged over layers, and the worst layer."""
    out = []
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method]
        worst = min(rows, key=lambda r: r["recall"])
        out.append(
            {
                "method": method,
                "recall": sum(r["recall"] for r in rows) / len(rows),
                "output_error": sum(r["output_error"] for r in rows) / len(rows),
                "density": sum(r["density"] for r in rows) / len(rows),
                **{
                    f"top{k}": sum(r[f"top{k}"] for r in rows) / len(rows)
                    for k in TOPK
                    if all(f"top{k}" in r for r in rows)
                },
                "worst_layer": worst["layer"],
                "worst_recall": worst["recall"],
                "layers": len(rows),
            }
        )
    return out


FIDELITY_VALUES = ("recall", "output_error", "density", "top8", "top32", "top128", "top32_worst")


def per_layer(cells: list[dict]) -> list[dict]:
    """Fidelity per (model, method, budget, length, layer), averaged over prompts (records made
    before the top-k key recall existed simply lack its values)."""
    fields = ["model", "method", "budget", "length", "layer"]
    merged: dict[tuple, dict] = {}
    for value in FIDELITY_VALUES:
        for row in mean_by([c for c in cells if value in c], fields, value):
            merged.setdefault(tuple(row[f] for f in fields), dict(row)).update({value: row[value]})
    return list(merged.values())


def fidelity_summary(store: ResultStore) -> dict:
    """Per-layer rows and, per (model, method, budget, length), the layer means and worst layer."""
    layers = per_layer(store.cells)
    groups: dict[tuple, list[dict]] = {}
    for row in layers:
        groups.setdefault((row["model"], row["budget"], row["length"]), []).append(row)
    overall = []
    for (model, budget, length), rows in groups.items():
        for summary in summarize_fidelity(rows):
            overall.append({"model": model, "budget": budget, "length": length, **summary})
    return {"kind": "fidelity", "runs": store.runs, "layers": layers, "overall": overall}
