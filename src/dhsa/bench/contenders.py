"""What a benchmark runs: dense references and sparse methods, in one registry.

A contender's ``prepare(q, k, v, config)`` returns a :class:`Prepared`: the timed call (which
includes selection for sparse methods, as a user pays it) and, for sparse contenders, the layout it
attends over, so density and correctness can be checked. Dense contenders serve as the speed
reference: the fastest one measured in the same run is the baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..attention import dense_attention, select
from ..config import DHSAConfig
from ..kernels import attend
from ..layout import Layout
from ..methods import SELECTORS


@dataclass
class Prepared:
    """``run()`` computes the output; for sparse contenders ``select_only()`` times the selection
    alone and ``attend_only()`` the attention over a selection made beforehand."""

    run: Callable[[], Tensor]
    layout: Layout | None = None
    select_only: Callable[[], object] | None = None
    attend_only: Callable[[], Tensor] | None = None


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

        def run_on(layout: Layout) -> Tensor:
            return attend(
                q, k, v, layout, backend=backend, tile_elements=config.backend.attention_tile
            )

        layout = selection()
        return Prepared(
            run=lambda: run_on(selection()),
            layout=layout,
            select_only=selection,
            attend_only=lambda: run_on(layout),
        )

    return prepare


def get_contender(name: str) -> Contender:
    """A registered contender, or a sparse one for any selection method in ``SELECTORS``."""
    if name in CONTENDERS:
        return CONTENDERS[name]
    if name in SELECTORS:
        return Contender(name=name, dense=False, prepare=_sparse_preparer(name))
    allowed = sorted(set(CONTENDERS) | set(SELECTORS) - {"dense"})
    raise ValueError(f"unknown bench contender {name!r}: allowed {allowed}")


def _sdpa_backend_preparer(backend_name: str):
    """Dense causal SDPA pinned to one CUDA kernel (``CUDNN_ATTENTION`` or ``FLASH_ATTENTION``).

    GQA goes through ``enable_gqa`` where the kernel takes it; otherwise K/V are repeated to the
    query heads once, outside the timed call, which only favours the dense reference.
    """

    def prepare(q: Tensor, k: Tensor, v: Tensor, config: DHSAConfig, backend: str) -> Prepared:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if q.device.type != "cuda":
            raise ValueError(f"contender dense_{backend_name.lower()} needs CUDA tensors")
        kernel = getattr(SDPBackend, backend_name)
        group = q.shape[1] // k.shape[1]

        def call(keys: Tensor, values: Tensor, gqa: bool) -> Tensor:
            with sdpa_kernel(kernel):
                return F.scaled_dot_product_attention(
                    q, keys, values, is_causal=True, enable_gqa=gqa
                )

        try:
            call(k, v, group > 1)
            return Prepared(run=lambda: call(k, v, group > 1))
        except RuntimeError:
            k_full = k.repeat_interleave(group, dim=1)
            v_full = v.repeat_interleave(group, dim=1)
            return Prepared(run=lambda: call(k_full, v_full, False))

    return prepare


register_contender(Contender(name="dense", dense=True, prepare=_prepare_dense))
register_contender(
    Contender(name="dense_cudnn", dense=True, prepare=_sdpa_backend_preparer("CUDNN_ATTENTION"))
)
register_contender(
    Contender(name="dense_flash", dense=True, prepare=_sdpa_backend_preparer("FLASH_ATTENTION"))
)
