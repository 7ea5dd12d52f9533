"""dhsa: Dynamic Hierarchical Sparse Attention for long-context inference.

Keys are split into variable-length chunks where their content shifts; each query block keeps the
attention sink, its local window and the best-scoring chunks within a token budget, and attends to
exactly those keys. Peer methods (block-sparse, StreamingLLM, ...) emit the same span layout and
run on the same backends.
"""

from .attention import dense_attention, select, sparse_attention
from .config import PRESETS, DHSAConfig
from .kernels import BACKENDS, attend
from .layout import Layout
from .methods import SELECTORS, NonFiniteInputError, register_method

__version__ = "0.1.0"

# Hugging Face glue, imported on first use so that transformers stays optional.
_LAZY = {"register": "dhsa.hf", "configure": "dhsa.hf", "load_model": "dhsa.models"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dhsa' has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "PRESETS",
    "SELECTORS",
    "DHSAConfig",
    "Layout",
    "NonFiniteInputError",
    "attend",
    "configure",
    "dense_attention",
    "load_model",
    "register",
    "register_method",
    "select",
    "sparse_attention",
]
