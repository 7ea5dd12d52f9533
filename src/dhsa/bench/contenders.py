"""What a benchmark runs: dense references and sparse methods, in one registry.

A contender's ``prepare(q, k, v, config)`` returns a :class:`Prepared`: the timed call (which
includes selection for sparse methods, as a user pays it) and, for sparse contenders, the layout it
attends over, so density and correctness can be checked. Dense contenders serve as the speed
reference: the fastest one measured in the same run is the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from ..attention import dense_attention, select
from ..config import DHSAConfig
from ..kernels import attend
from ..layout import Layout
from ..methods import SELECTORS


@dataclass
class Prepared:
    """``run()`` computes the output; ``select_only()`` (sparse) times the selection alone."""

    run: Callable[[], Tensor]
    layout: Layout | None = None
    select_only: Callable[[], object] | None = None


@dataclass(frozen=True)
class Contender:
    name: str
    dense: bool
    prepare: Callable[[Tensor, Tensor, Tensor, DHSAConfig, str], Prepared]


CONTENDERS: dict[str, Contender] = {}


def register_contender(contender: Contender) -> None:
    """Add a contender (e.g. a device-specific dense kernel or a peer library's sparse kernel)."""
    CONTENDERS[contender.name] = contender


def _prepare_dense(q: Tensor, k: Tensor, v: Tensor, config: DHSAConfig, backend: str) -> Prepared:
    return Prepared(run=lambda: dense_attention(q, k, v))


def _sparse_preparer(method: str):
    def prepare(q: Tensor, k: Tensor, v: Tensor, config: DHSAConfig, backend: str) -> Prepared:
        def selection() -> Layout:
            return select(q, k, config, method=method)

        def run() -> Tensor:
            return attend(
                q, k, v, selection(), backend=backend, tile_elements=config.tile_elements
            )

        return Prepared(run=run, layout=selection(), select_only=selection)

    return prepare


def get_contender(name: str) -> Contender:
    """A registered contender, or a sparse one for any selection method in ``SELECTORS``."""
    if name in CONTENDERS:
        return CONTENDERS[name]
    if name in SELECTORS:
        return Contender(name=name, dense=False, prepare=_sparse_preparer(name))
    allowed = sorted(set(CONTENDERS) | set(SELECTORS) - {"dense"})
    raise ValueError(f"unknown bench contender {name!r}: allowed {allowed}")


register_contender(Contender(name="dense", dense=True, prepare=_prepare_dense))
