"""The method registry: one :class:`Method` record per selection method.

A record holds the selector and every fact the rest of dhsa needs about the method (how a model
decodes with it, when attention may run dense instead), so that the attention op and the
transformers integration ask the record and never name a method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from ..config import CHUNKERS, DHSAConfig
from ..layout import Layout
from .scoring import NORMS

Selector = Callable[..., Layout]

# Chunk normalizations of the decode state (dhsa.decode.ChunkSums): the scoring ones plus ``peak``,
# which stores plain means and rescores the best candidates by their best single key.
DECODE_NORMS = (*NORMS, "peak")


@dataclass(frozen=True)
class IncrementalDecode:
    """Decode steps extend per-layer state instead of selecting afresh (METHOD.md section 2).

    The state (:class:`dhsa.decode.DecodeSession`) tracks chunk boundaries token by token with
    ``chunker`` (None: the config's own ``chunker``) and keeps running chunk sums normalized by
    ``norm``: one of :data:`DECODE_NORMS`, or a function of the config naming one.
    """

    norm: str | Callable[[DHSAConfig], str]
    chunker: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.norm, str) and self.norm not in DECODE_NORMS:
            raise ValueError(f"unknown decode norm {self.norm!r}: allowed {DECODE_NORMS}")
        if not (isinstance(self.norm, str) or callable(self.norm)):
            raise TypeError(f"norm must be a str or a callable, got {type(self.norm).__name__}")
        if self.chunker is not None and self.chunker not in CHUNKERS:
            raise ValueError(f"unknown decode chunker {self.chunker!r}: allowed {CHUNKERS}")

    def norm_for(self, config: DHSAConfig) -> str:
        """The chunk normalization decode steps score with under ``config``."""
        norm = self.norm(config) if callable(self.norm) else self.norm
        if norm not in DECODE_NORMS:
            raise ValueError(f"decode norm {norm!r} is unknown: allowed {DECODE_NORMS}")
        return norm

    def config_for(self, config: DHSAConfig) -> DHSAConfig:
        """``config`` with the chunker the decode state tracks boundaries with."""
        if self.chunker is None or self.chunker == config.chunker:
            return config
        return config.replace(chunker=self.chunker)

    def keeps_probe(self, config: DHSAConfig) -> bool:
        """Whether decode scoring reads the prompt's last queries (the ``peak`` scoring does):
        a prefill then hands them to the decode state."""
        return self.norm_for(config) == "peak"


@dataclass(frozen=True)
class Method:
    """A selection method and what callers must know about it beyond its selector.

    Attributes:
        name: the ``method=`` name.
        select: ``fn(q, k, config, *, sliding_window=None, boundaries=None, scale=None) -> Layout``
            (see :mod:`dhsa.methods`).
        decode: how a model decodes with it: :class:`IncrementalDecode`, or None when each decode
            step runs ``select`` afresh on its one query.
        fills_budget: a query keeps all the keys it can see when they are at most ``budget``
            (up to the granularity of its query block); on a sliding window of at most
            ``budget`` keys attention then runs dense: each query attends its whole window.
        dense: it selects every causal key; attention runs dense wherever it is routed.
        shares_boundaries: ``select`` chunks the keys with ``config.chunker`` and accepts those
            boundaries precomputed, so a model may compute them once per forward pass
            (``DHSAConfig.share_boundaries``).
    """

    name: str
    select: Selector
    decode: IncrementalDecode | None = None
    fills_budget: bool = False
    dense: bool = False
    shares_boundaries: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"method name must be an identifier, got {self.name!r}")
        if not callable(self.select):
            raise TypeError(f"selector of {self.name!r} must be callable, got {self.select!r}")
        if self.decode is not None and not isinstance(self.decode, IncrementalDecode):
            raise TypeError(
                f"decode of {self.name!r} must be an IncrementalDecode or None, "
                f"got {type(self.decode).__name__}"
            )
        for flag in ("fills_budget", "dense", "shares_boundaries"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} of {self.name!r} must be a bool")


METHODS: dict[str, Method] = {}


def register_method(
    name: str,
    selector: Selector,
    *,
    decode: IncrementalDecode | None = None,
    fills_budget: bool = False,
    dense: bool = False,
    shares_boundaries: bool = False,
) -> Method:
    """Make ``selector`` available as ``method=name`` everywhere (select, attention, models,
    bench), with the traits of :class:`Method`; returns the record. A name registered again is
    replaced."""
    method = Method(
        name=name,
        select=selector,
        decode=decode,
        fills_budget=fills_budget,
        dense=dense,
        shares_boundaries=shares_boundaries,
    )
    METHODS[name] = method
    return method


def get_method(name: str) -> Method:
    """The record registered as ``name``; ValueError naming the known methods otherwise."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown method {name!r}: allowed {sorted(METHODS)}")
    return METHODS[name]


class SelectorView(Mapping[str, Selector]):
    """Read-only ``name -> selector`` view of :data:`METHODS` (register with
    :func:`register_method`)."""

    def __getitem__(self, name: str) -> Selector:
        return METHODS[name].select

    def __iter__(self) -> Iterator[str]:
        return iter(METHODS)

    def __len__(self) -> int:
        return len(METHODS)

    def __repr__(self) -> str:
        return f"SELECTORS({sorted(METHODS)})"


SELECTORS = SelectorView()
