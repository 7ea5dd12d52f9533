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

Padded batches and static caches: the mask builder hands the attention a 2-D bool key mask instead
of a 4-D one, False for left padding and for the slots of a static cache
(``cache_implementation="static"``) past the current position. The attention reads each row's
keys ``[first, end)`` from that mask, once per forward pass (one device-to-host copy, shared by
the layers that get the same mask), and runs on them alone: a static cache's unwritten slots are
ignored by position, a padded row's sink is its first real token and no pad key is ever selected.
Padding must be on the left (as ``generate`` needs).

Non-finite inputs: a prefill call checks its queries and new keys at once; decode steps gather
the check on the device and read it once per token, at the model's last layer, so a step costs
no device-to-host synchronization per layer for it.

``torch.compile`` (e.g. transformers' static cache with ``compile_config``): a decode step that
runs dense whatever the written length (dense layers, windows within the budget, caches shorter
than ``min_length``) attends under the mask and compiles with the model, with no graph break; the
sparse selection keeps Python state per layer and runs eagerly, the graph breaking around it.
The tokens are those of the eager model.

Not honoured, and refused with a ValueError: dropout, ``output_attentions``, non-causal or custom
masks (packed sequences, bidirectional or block overlays), 4-D masks, right or inner padding,
attention sinks/biases.
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
from .validation import NonFiniteInputError, check_finite

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
    _extents: tuple | None = None
    _non_finite: Tensor | None = None

    def row_extents(self, mask: Tensor) -> list[tuple[int, int]]:
        """Per row of the bool key mask ``[B, Lk]``, the written keys ``[first, end)``: one
        device-to-host copy per mask, and the layers of a forward pass share their mask.

        ValueError unless each row's keys are contiguous and all rows end together (left padding).
        """
        if self._extents is not None and self._extents[0] is mask:
            return self._extents[1]
        count = mask.sum(dim=1)
        first = mask.int().argmax(dim=1)
        positions = torch.arange(mask.shape[1], device=mask.device)
        runs = (positions >= first[:, None]) & (positions < (first + count)[:, None])
        contiguous = (runs == mask).all(dim=1)
        rows = torch.stack([first, first + count, contiguous.long()], dim=1).tolist()
        end = max(row[1] for row in rows)
        if not all(ok and (row_end == end or row_end == first) for first, row_end, ok in rows):
            raise ValueError("dhsa attention supports left padding only (pads before the tokens)")
        extents = [(first, row_end) for first, row_end, _ in rows]
        self._extents = (mask, extents)
        return extents

    def note_non_finite(self, q: Tensor, k: Tensor) -> None:
        """Gather on the device whether a decode step's ``q`` or new keys ``k`` hold NaN or Inf."""
        bad = ~(torch.isfinite(q).all() & torch.isfinite(k).all())
        self._non_finite = bad if self._non_finite is None else self._non_finite | bad

    def raise_if_non_finite(self) -> None:
        """:class:`dhsa.NonFiniteInputError` when a decode step noted NaN or Inf: one
        synchronization per token, read at the model's last layer."""
        bad, self._non_finite = self._non_finite, None
        if bad is not None and bool(bad):
            raise NonFiniteInputError("q or k contains NaN or Inf: refusing to select keys")

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
    q_offset: int | Tensor = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: Tensor | None = None,
    **kwargs,
) -> Tensor | None:
    """The ``AttentionMaskInterface`` entry: bool ``[B, kv_length]`` key mask, or None.

    A key is True when it holds a real token written by now: not left padding, and not a slot of a
    static cache beyond the last query ``q_offset + q_length`` (a static cache passes ``q_offset``
    as a device tensor, read here without a synchronization). None when every key is. The attention
    pattern itself (causal, sliding window) is applied by the attention function; this checks the
    model asks for nothing else.
    """
    if kwargs.get("use_vmap"):
        raise ValueError(
            "dhsa attention supports causal (optionally sliding-window) masks only; this model "
            "adds a custom mask function (e.g. image-token or block overlays): use 'sdpa'"
        )
    kv_offset = int(kv_offset)
    end = q_offset + q_length  # the keys written once this call's queries are
    static = isinstance(end, Tensor) or end < kv_offset + kv_length
    if not isinstance(end, Tensor) and end > kv_offset + kv_length:
        raise ValueError(
            f"dhsa attention got keys [{kv_offset}, {kv_offset + kv_length}) that end before the "
            f"last query at {end - 1}"
        )
    if mask_function is not None and not torch.compiler.is_compiling():
        # A compiled decode step reuses the pattern its eager prefill already checked.
        _check_pattern(mask_function, batch_size, q_length, kv_length, q_offset, kv_offset, kwargs)
    if attention_mask is None and not static:
        return None
    device = kwargs.get("device", attention_mask.device if attention_mask is not None else "cpu")
    positions = torch.arange(kv_offset, kv_offset + kv_length, device=device)
    mask = (positions < end).expand(batch_size, kv_length)
    if attention_mask is not None:
        given = attention_mask.bool()
        if given.shape[-1] < kv_offset + kv_length:
            given = F.pad(given, (0, kv_offset + kv_length - given.shape[-1]), value=True)
        mask = mask & given[:, kv_offset : kv_offset + kv_length]
    if static:
        return mask
    return None if bool(mask.all()) else mask


def _check_pattern(mask_function, batch, q_length, kv_length, q_offset, kv_offset, kwargs):
    """ValueError unless ``mask_function`` is causal (or causal sliding-window) on the first and
    last query rows: cheap (two rows), and enough to catch packed or bidirectional patterns."""
    device = kwargs.get("device", "cpu")
    q_idx = torch.tensor([0, q_length - 1], device=device) + q_offset
    q_idx = q_idx[None, None, :, None]
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
    ``G = module.num_key_value_groups``), queries being the last ``Lq`` of the keys that
    ``attention_mask`` marks written (all ``Lk`` without a mask); ``attention_mask`` is None or the
    bool ``[B, Lk]`` key mask from :func:`padding_mask`. Returns ``([B, Lq, Hq, D], None)``.

    A decode step that runs dense whatever the written length (a dense layer, a window within
    the budget, a cache shorter than ``min_length``) attends under the mask with no
    synchronization, and compiles; the rest runs eagerly (:func:`_attention_eager`).
    """
    _check_call(module, query, key, attention_mask, dropout, kwargs)
    binding = binding_of(module)
    layer = module.layer_idx
    name, config = binding.plan(layer)
    step = query.shape[2] == 1
    # The cache's length bounds the written keys': dense for it is dense for them.
    dense = runs_dense(
        get_method(name),
        config,
        q_len=1,
        k_len=key.shape[2],
        device=key.device,
        sliding_window=sliding_window,
    )
    if step and dense:
        out = _dense_step(
            binding, query, key, value, attention_mask, scaling, sliding_window, softcap
        )
    else:
        args = (binding, layer, scaling, sliding_window, softcap)
        checked = not torch.compiler.is_compiling()  # a compiled step cannot raise in its graph
        out = _eager()(query, key, value, attention_mask, *args, checked=checked)
    if step and layer == module.config.num_hidden_layers - 1 and not torch.compiler.is_compiling():
        binding.raise_if_non_finite()
    return out.transpose(1, 2).contiguous(), None


def _dense_step(binding, q, k, v, mask, scale, window, softcap) -> Tensor:
    """Dense attention of one query per row ``q [B, Hq, 1, D]`` at its row's last written key of
    ``k, v [B, Hkv, Lk, D]`` (``mask [B, Lk]`` or None: all written), within ``window``: the
    written keys chosen by the mask on the device, so nothing waits for it."""
    batch, kv_heads, length, dim = k.shape
    positions = torch.arange(length, device=k.device)
    visible = positions.expand(batch, length) >= 0 if mask is None else mask
    at = torch.where(visible, positions, -1).amax(dim=1)  # the query's own key
    if not torch.compiler.is_compiling():
        index = at.clamp(min=0)[:, None, None, None].expand(batch, kv_heads, 1, dim)
        binding.note_non_finite(q, k.gather(2, index))
    if window is not None:
        visible = visible & (positions > (at - window)[:, None])
    if softcap is None:
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=visible[:, None, None, :],
            scale=scale,
            enable_gqa=q.shape[1] != kv_heads,
        )
    scale = dim**-0.5 if scale is None else scale
    queries = q.view(batch, kv_heads, -1, dim).float()
    logits = softcap * torch.tanh(queries @ k.float().transpose(-1, -2) * (scale / softcap))
    logits = logits.masked_fill(~visible[:, None, None, :], -torch.inf)
    out = torch.softmax(logits, dim=-1) @ v.float()
    return out.view(q.shape).to(q.dtype)


_EAGER: list = []  # _attention_eager under torch.compiler.disable, made at the first call


def _eager():
    """:func:`_attention_eager` wrapped by ``torch.compiler.disable``, made once on first use:
    wrapping at import would import ``torch._dynamo`` (and triton) with ``import dhsa.hf``."""
    if not _EAGER:
        reason = "dhsa decode selection keeps Python state per layer"
        _EAGER.append(torch.compiler.disable(_attention_eager, reason=reason))
    return _EAGER[0]


def _attention_eager(q, k, v, mask, binding, layer, scaling, window, softcap, *, checked) -> Tensor:
    """Attention with the layer's method; under ``torch.compile`` it runs eagerly (see
    :func:`_eager`), the graph breaking around it."""
    args = (binding, layer, scaling, window, softcap)
    if mask is None:
        return _attend(q, k, v, *args, row=None, checked=checked)
    return _attend_masked(q, k, v, mask, *args, checked=checked)


def _attend_masked(q, k, v, mask, binding, layer, scaling, window, softcap, *, checked) -> Tensor:
    """Each row on its written keys: left padding and unwritten static-cache slots cut off; pad
    queries output zeros. A batch with no padding runs as a whole."""
    extents = binding.row_extents(mask)
    end = max(row_end for _, row_end in extents)
    args = (binding, layer, scaling, window, softcap)
    q_offset = end - q.shape[2]
    if q_offset < 0:
        raise ValueError("dhsa attention supports left padding only (pads before the tokens)")
    if all(first == 0 for first, _ in extents):
        return _attend(q, k[:, :, :end], v[:, :, :end], *args, row=None, checked=checked)
    out = torch.zeros_like(q)
    for row, (pad, _) in enumerate(extents):
        first = max(pad - q_offset, 0)
        if first >= q.shape[2]:
            continue
        out[row : row + 1, :, first:] = _attend(
            q[row : row + 1, :, first:],
            k[row : row + 1, :, pad:end],
            v[row : row + 1, :, pad:end],
            *args,
            row=row,
            checked=checked,
        )
    return out


def _attend(q, k, v, binding, layer, scale, window, softcap, *, row, checked=True) -> Tensor:
    """Causal attention of the unpadded ``q [B, Hq, Lq, D]`` over ``k, v [B, Hkv, Lk, D]``.

    :class:`dhsa.NonFiniteInputError` when the queries or the keys this call adds (the last
    ``Lq``) hold NaN or Inf, on the dense paths too: each key is checked once, when it enters.
    A prefill raises here; a decode step's check is read at the model's last layer
    (:meth:`ModelBinding.raise_if_non_finite`); a compiled one (``checked=False``) is not checked.
    """
    if q.shape[2] == 1:
        if checked:
            binding.note_non_finite(q, k[:, :, -1:])
    else:
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
            q,
            k,
            v,
            starts,
            ends,
            scale=scale,
            softcap=softcap,
            backend=binding.backend,
            max_keys=config.budget,
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
