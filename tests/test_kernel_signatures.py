"""Every Triton kernel of the package can be launched by the compiled launcher.

Triton's launcher binds a kernel's arguments inside a generated function whose own locals are
``params``, ``specialization``, ``options`` and ``backend``: a kernel parameter of one of those
names is shadowed there and fails to specialize on a GPU ("failed to specialize argument of type:
dict"), while the interpreter, which CI runs, never builds that function.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

triton = pytest.importorskip("triton")

import dhsa  # noqa: E402

RESERVED = {"params", "specialization", "options", "backend"}


def kernels():
    found = []
    for info in pkgutil.walk_packages(dhsa.__path__, "dhsa."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            continue
        for name, value in vars(module).items():
            fn = getattr(value, "fn", value)  # the interpreter wraps the JIT function
            names = getattr(value, "arg_names", None)
            if names is not None and getattr(fn, "__module__", None) == info.name:
                found.append((f"{info.name}.{name}", names))
    return found


def test_the_package_has_triton_kernels():
    names = [name for name, _ in kernels()]
    assert "dhsa.kernels.triton_decode_step._absorb_kernel" in names
    assert len(names) >= 10


@pytest.mark.parametrize(("kernel", "arg_names"), kernels())
def test_no_kernel_parameter_is_shadowed_by_the_launcher(kernel, arg_names):
    assert not RESERVED & set(arg_names), kernel
