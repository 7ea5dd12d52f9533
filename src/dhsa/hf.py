"""Hugging Face transformers integration: the ``"dhsa"`` attention implementation.

``register()`` adds ``"dhsa"`` to transformers' ``AttentionInterface`` (the attention function) and
``AttentionMaskInterface`` (the mask builder); nothing of transformers is patched. Then::

    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="dhsa")
    dhsa.configure(model, DHSAConfig(budget=1024), layers={0: "dense", 1: "dense"})

Per attention call (``module`` is the model's attention layer):
  - prefill (several queries; also chunked prefill against a cache) runs
    :func:`dhsa.sparse_attention` with the layer's method; chunk boundaries are computed once per
    forward pass and shared by all layers when ``config.share_boundaries``;
  - decode (one query) keeps incremental selection state per ``module.layer_idx``
    (:class:`dhsa.decode.DecodeSession`) for the methods whose record declares it
    (:class:`dhsa.methods.IncrementalDecode`: ``dhsa``, ``block_sparse``); other methods select
    afresh per token;
  - the calls :func:`dhsa.attention.runs_dense` names run dense attention: sequences shorter
    than ``config.dense_below(device)`` keys, dense methods, and sliding-window layers whose
    window fits the budget (e.g. Gemma's 512 keys) with a budget-filling method, which would keep
    every visible key anyway.

Padded batches: the mask builder hands the attention a 2-D key padding mask instead of a 4-D one.
Padding must be on the left (as ``generate`` needs); each padded row is then run on its own
unpadded keys, so its sink is its first real token and no pad key is ever selected.

Not honoured, and refused with a ValueError: dropout, ``output_attentions``, non-causal or custom
masks (packed sequences, bidirectional or block overlays), 4-D masks, right or inner padding,
caches whose keys do not end at the current query (static caches), attention sinks/biases.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import dense_attention, runs_dense, sparse_attention
from .chunking import compute_boundaries
from .config import DHSAConfig
from .decode import DecodeSession
from .kernels import BACKENDS, attend_decode
from .methods import get_method
from .validation import check_finite

logger = logging.getLogger(__name__)

NAME = "dhsa"
UNSUPPORTED_KWARGS = ("s_aux", "sinks", "position_bias", "cu_seq_lens_q", "cu_seq_lens_k")


@dataclass
class ModelBinding:
    """The dhsa settings of one model and its selection state.

    ``layers`` overrides ``(method, config)`` per ``layer_idx``; the rest use ``method`` and
    ``config``.
    """

    config: DHSAConfig
    method: str
    backend: str = "auto"
    layers: dict[int, tuple[str, DHSAConfig]] = field(default_factory=dict)
    session: DecodeSession = field(default_factory=DecodeSession)
    _prefill: dict = field(default_factory=dict)

    def plan(self, layer: int) -> tuple[str, DHSAConfig]:
        return self.layers.get(layer, (self.method, self.config))

    def prefill_boundaries(self, layer: int, row: int | None, k: Tensor, config: DHSAConfig):
        """Boundaries of ``k`` shared by the layers of one forward pass.

        The first layer of a pass (a layer index not above the previous owner's starts a new pass)
        computes them from its keys; later layers of the pass reuse them.
        """
        entry = self._prefill.get(row)
        if entry is not None and entry[0] < layer and entry[1].shape[0] == k.shape[0]:
            if int(entry[1][0, -1]) == k.shape[2]:
                return entry[1]
        bounds = compute_boundaries(k, config)
        self._prefill[row] = (layer, bounds)
        return bounds


_DEFAULT_BINDINGS: dict[int, tuple[weakref.ref, ModelBinding]] = {}


def register() -> None:
    """Add ``"dhsa"`` to transformers' attention and attention-mask interfaces (idempotent)."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, padding_mask)


def _layer_override(layer: int, value, config: DHSAConfig, method: str) -> tuple[str, DHSAConfig]:
    if isinstance(value, str):
        value = (value, config)
    elif isinstance(value, DHSAConfig):
        value = (method, value)
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], DHSAConfig)
    ):
        raise TypeError(
            f"layers[{layer}] must be a method name, a DHSAConfig or a (method, DHSAConfig) "
            f"tuple, got {value!r}"
        )
    get_method(value[0])
    return value


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The attention layers of ``model``: modules with ``layer_idx``, ``num_key_value_groups``."""
    return [
        m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")
    ]


def configure(
    model: torch.nn.Module,
    config: DHSAConfig | None = None,
    *,
    method: str = "dhsa",
    layers: Mapping[int, object] | None = None,
    backend: str = "auto",
) -> torch.nn.Module:
    """Use dhsa attention in ``model`` with ``config`` and ``method``; returns ``model``.

    ``layers`` overrides single layers by ``layer_idx``: a method name (``{0: "dense"}`` keeps the
    first layer dense), a :class:`DHSAConfig`, or a ``(method, DHSAConfig)`` tuple. Switches the
    model to ``attn_implementation="dhsa"`` if it uses another one, and drops any decode state.
    """
    config = DHSAConfig() if config is None else config
    if not isinstance(config, DHSAConfig):
        raise TypeError(f"config must be a DHSAConfig, got {type(config).__name__}")
    get_method(method)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: allowed {BACKENDS}")
    modules = attention_modules(model)
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no attention layers with layer_idx and "
            "num_key_value_groups: not a supported transformers decoder"
        )
    known = {m.layer_idx for m in modules}
    overrides = {}
    for layer, value in (layers or {}).items():
        if layer not in known:
            raise ValueError(f"layers has layer {layer}, the model has layers 0..{max(known)}")
        overrides[layer] = _layer_override(layer, value, config, method)
    binding = ModelBinding(config=config, method=method, backend=backend, layers=overrides)
    for module in modules:
        module._dhsa_binding = binding
    register()
    if getattr(model.config, "_attn_implementation", None) != NAME:
        model.set_attn_implementation(NAME)
    return model


def use_attention(
    model: torch.nn.Module, method: str, config: DHSAConfig | None = None
) -> torch.nn.Module:
    """Switch ``model`` to ``method``; returns ``model``. A dense method (the reference) runs
    transformers' own ``"sdpa"`` attention, any other method dhsa's (:func:`configure` with
    ``config``). The one switch of the evaluation, generation and benchmark commands."""
    if get_method(method).dense:
        model.set_attn_implementation("sdpa")
        return model
    return configure(model, config, method=method)


def binding_of(module: torch.nn.Module) -> ModelBinding:
    """The settings :func:`configure` gave ``module``, or per-model defaults without it."""
    binding = getattr(module, "_dhsa_binding", None)
    if binding is not None:
        return binding
    owner = module.config
    entry = _DEFAULT_BINDINGS.get(id(owner))
    if entry is None or entry[0]() is not owner:
        entry = (weakref.ref(owner), ModelBinding(config=DHSAConfig(), method="dhsa"))
        _DEFAULT_BINDINGS[id(owner)] = entry
    return entry[1]


def padding_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: Tensor | None = None,
    **kwargs,
) -> Tensor | None:
    """The ``AttentionMaskInterface`` entry: bool ``[B, kv_length]`` key padding mask, or None.

    The attention pattern itself (causal, sliding window) is applied by the attention function;
    this checks the model asks for nothing else and that the keys end at the last query.
    """
    q_offset, kv_offset = int(q_offset), int(kv_offset)
    if kwargs.get("use_vmap"):
        raise ValueError(
            "dhsa attention supports causal (optionally sliding-window) masks only; this model "
            "adds a custom mask function (e.g. image-token or block overlays): use 'sdpa'"
        )
    if q_offset + q_length != kv_offset + kv_length:
        raise ValueError(
            f"dhsa attention needs a cache whose keys end at the current query (DynamicCache); "
            f"got keys [{kv_offset}, {kv_offset + kv_length}) for queries ending at "
            f"{q_offset + q_length} (a static cache?)"
        )
    if mask_function is not None:
        _check_pattern(mask_function, batch_size, q_length, kv_length, q_offset, kv_offset, kwargs)
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    if mask.shape[-1] < kv_offset + kv_length:
        mask = F.pad(mask, (0, kv_offset + kv_length - mask.shape[-1]), value=True)
    mask = mask[:, kv_offset : kv_offset + kv_length]
    return None if bool(mask.all()) else mask


def _check_pattern(mask_function, batch, q_length, kv_length, q_offset, kv_offset, kwargs):
    """ValueError unless ``mask_function`` is causal (or causal sliding-window) on the first and
    last query rows: cheap (two rows), and enough to catch packed or bidirectional patterns."""
    device = kwargs.get("device", "cpu")
    q_idx = torch.tensor([q_offset, q_offset + q_length - 1], device=device)[None, None, :, None]
    kv_idx = torch.arange(kv_offset, kv_offset + kv_length, device=device)[None, None, None, :]
    b_idx = torch.arange(batch, device=device)[:, None, None, None]
    h_idx = torch.zeros(1, dtype=torch.long, device=device)[None, :, None, None]
    got = mask_function(b_idx, h_idx, q_idx, kv_idx).expand(batch, 1, 2, kv_length)
    causal = kv_idx <= q_idx
    accepted = [causal]
    window = getattr(kwargs.get("config"), "sliding_window", None)
    if window is not None:
        accepted.append(causal & (q_idx - kv_idx < window))
    if not any(bool((got == want).all()) for want in accepted):
        raise ValueError(
            "dhsa attention supports causal (optionally sliding-window) masks only; this call "
            "builds another pattern (packed sequences or bidirectional attention): use 'sdpa'"
        )


def _check_call(module, query, key, attention_mask, dropout, kwargs) -> None:
    if dropout:
        raise ValueError(
            f"dhsa attention is for inference: dropout must be 0, got {dropout} (call model.eval())"
        )
    if kwargs.get("output_attentions"):
        raise ValueError("dhsa attention cannot return attention weights (output_attentions)")
    if kwargs.get("is_causal") is False:
        raise ValueError("dhsa attention is causal only; got is_causal=False")
    for name in UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise ValueError(f"dhsa attention does not support {name!r}")
    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[1] != groups * key.shape[1]:
        raise ValueError(
            f"query heads ({query.shape[1]}) != num_key_value_groups ({groups}) x key/value "
            f"heads ({key.shape[1]})"
        )
    if attention_mask is not None and (
        attention_mask.dim() != 2
        or attention_mask.dtype != torch.bool
        or attention_mask.shape != (key.shape[0], key.shape[2])
    ):
        raise ValueError(
            "dhsa attention takes a 2-D bool key padding mask [B, Lk] built by its mask "
            f"interface; got {attention_mask.dtype} {tuple(attention_mask.shape)} (a custom "
            "4-D mask? use 'sdpa' for those)"
        )


def attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """The ``AttentionInterface`` entry.

    ``query [B, Hq, Lq, D]``, ``key, value [B, Hkv, Lk, D]`` (GQA: ``Hq = G * Hkv`` with
    ``G = module.num_key_value_groups``), queries being the last ``Lq`` of the ``Lk`` positions;
    ``attention_mask`` is None or the bool ``[B, Lk]`` left-padding mask from :func:`padding_mask`.
    Returns ``([B, Lq, Hq, D], None)``.
    """
    _check_call(module, query, key, attention_mask, dropout, kwargs)
    binding = binding_of(module)
    layer = module.layer_idx
    args = (binding, layer, scaling, sliding_window, softcap)
    if attention_mask is None:
        out = _attend(query, key, value, *args, row=None)
    else:
        out = _attend_padded(query, key, value, attention_mask, *args)
    return out.transpose(1, 2).contiguous(), None


def _attend_padded(q, k, v, mask, binding, layer, scaling, window, softcap) -> Tensor:
    """Each row on its own keys with the left padding cut off; pad queries output zeros."""
    pads = (~mask).sum(dim=1)
    if bool((mask.int().diff(dim=1) < 0).any()):
        raise ValueError("dhsa attention supports left padding only (pads before the tokens)")
    q_offset = k.shape[2] - q.shape[2]
    out = torch.zeros_like(q)
    for row, pad in enumerate(pads.tolist()):
        first = max(pad - q_offset, 0)
        if first >= q.shape[2]:
            continue
        out[row : row + 1, :, first:] = _attend(
            q[row : row + 1, :, first:],
            k[row : row + 1, :, pad:],
            v[row : row + 1, :, pad:],
            binding,
            layer,
            scaling,
            window,
            softcap,
            row=row,
        )
    return out


def _attend(q, k, v, binding, layer, scale, window, softcap, *, row) -> Tensor:
    """Causal attention of the unpadded ``q [B, Hq, Lq, D]`` over ``k, v [B, Hkv, Lk, D]``.

    :class:`dhsa.NonFiniteInputError` when the queries or the keys this call adds (the last
    ``Lq``) hold NaN or Inf, on the dense paths too: each key is checked once, when it enters.
    """
    check_finite(q, k[:, :, -q.shape[2] :])
    name, config = binding.plan(layer)
    method = get_method(name)
    q_len, k_len = q.shape[2], k.shape[2]
    clipped = window if window is not None and window < k_len else None
    if runs_dense(method, config, q_len=q_len, k_len=k_len, device=k.device, sliding_window=window):
        return dense_attention(q, k, v, scale=scale, sliding_window=clipped, softcap=softcap)
    if window is not None:
        # Sliding-window layers may get a cache that itself slides (only the last `window` keys),
        # so incremental decode state and boundaries shared with full layers never apply: a
        # single query selects afresh among the keys it can see.
        if q_len == 1:
            k, v, clipped = k[:, :, -window:], v[:, :, -window:], None
        return sparse_attention(
            q,
            k,
            v,
            config,
            method=name,
            scale=scale,
            sliding_window=clipped,
            softcap=softcap,
            backend=binding.backend,
        )
    decode = method.decode
    if q_len == 1 and decode is not None:
        starts, ends = binding.session.select_spans(
            q,
            k,
            decode.config_for(config),
            layer=layer,
            row=row,
            norm=decode.norm_for(config),
            scale=scale,
        )
        return attend_decode(
            q, k, v, starts, ends, scale=scale, softcap=softcap, backend=binding.backend
        )
    boundaries = None
    if q_len > 1:
        binding.session.forget(layer, row)
        if method.shares_boundaries and config.share_boundaries:
            boundaries = binding.prefill_boundaries(layer, row, k, config)
        if decode is not None and decode.keeps_probe(config):
            binding.session.remember_probe(layer, row, q[:, :, -config.query_block :])
    return sparse_attention(
        q,
        k,
        v,
        config,
        method=name,
        scale=scale,
        softcap=softcap,
        backend=binding.backend,
        boundaries=boundaries,
    )
