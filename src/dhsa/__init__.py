"""dhsa: Dynamic Hierarchical Sparse Attention for long-context inference.

Keys are split into variable-length chunks where their content shifts; each query block keeps the
attention sink, its local window and the best-scoring chunks within a token budget, and attends to
exactly those keys. Peer methods (block-sparse, StreamingLLM, ...) emit the same span layout and
run on the same backends.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Every public name is imported on first use, so that `dhsa --help` does not wait for torch and
# transformers stays optional.
_LAZY = {
    "dense_attention": "dhsa.attention",
    "select": "dhsa.attention",
    "sparse_attention": "dhsa.attention",
    "PRESETS": "dhsa.config",
    "BackendOptions": "dhsa.config",
    "DHSAConfig": "dhsa.config",
    "DashParams": "dhsa.config",
    "HipParams": "dhsa.config",
    "VerticalSlashParams": "dhsa.config",
    "BACKENDS": "dhsa.kernels",
    "attend": "dhsa.kernels",
    "DecodeSpans": "dhsa.layout",
    "Geometry": "dhsa.layout",
    "Layout": "dhsa.layout",
    "SELECTORS": "dhsa.methods",
    "IncrementalDecode": "dhsa.methods",
    "Method": "dhsa.methods",
    "NonFiniteInputError": "dhsa.methods",
    "get_method": "dhsa.methods",
    "register_method": "dhsa.methods",
    "register": "dhsa.hf",
    "configure": "dhsa.hf",
    "load_model": "dhsa.models",
}


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(f"module 'dhsa' has no attribute {name!r}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    try:  # a subpackage or module, as `dhsa.methods` after a plain `import dhsa`
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'dhsa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
