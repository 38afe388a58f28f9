"""Every Triton kernel's argument names are safe for Triton's generated argument binder.

The interpreter (the CPU suite) calls a kernel as a plain function, but on a GPU Triton builds a
binder by ``exec``: a function of the kernel's arguments whose body has locals of its own
(``params``, ``specialization``, ``options``) and globals (``specialize_impl``, ``backend``,
``JITCallable``). A kernel argument with one of those names is shadowed, and the first launch on
a card fails ("failed to specialize argument of type: dict" for ``params``; seen with triton 3.6
on an H200). This test finds such a name on a CPU machine."""
from __future__ import annotations

import importlib
import inspect

import pytest

pytest.importorskip("triton")

MODULES = ["rnnlab.ops.diagonal.triton_kernels", "rnnlab.ops.fused_rnn.triton_kernels",
           "rnnlab.ops.gla_triton", "rnnlab.ops.newton_fused.triton_kernels",
           "rnnlab.ops.triton_math"]
BINDER_NAMES = {"params", "specialization", "options", "specialize_impl", "backend",
                "JITCallable", "dynamic_func"}


def _kernels(module_name: str):
    module = importlib.import_module(module_name)
    # @triton.jit gives a JITFunction, or an InterpretedFunction under TRITON_INTERPRET=1 (the
    # suite's conftest sets it); both keep the Python function as ``.fn``
    return [(name, obj.fn) for name, obj in vars(module).items()
            if type(obj).__name__ in ("JITFunction", "InterpretedFunction")
            and getattr(obj.fn, "__module__", None) == module.__name__]


@pytest.mark.parametrize("module_name", MODULES)
def test_no_kernel_argument_shadows_the_binder(module_name):
    kernels = _kernels(module_name)
    assert kernels, f"{module_name} has no @triton.jit functions: update MODULES"
    for name, fn in kernels:
        clash = BINDER_NAMES.intersection(inspect.signature(fn).parameters)
        assert not clash, f"{module_name}.{name}: argument(s) {sorted(clash)} shadow names of " \
                          f"Triton's generated binder; rename them"


def test_every_module_with_kernels_is_listed():
    from pathlib import Path

    import rnnlab
    root = Path(rnnlab.__file__).parent
    found = {".".join(("rnnlab", *p.relative_to(root).with_suffix("").parts))
             for p in root.rglob("*.py") if "@triton.jit" in p.read_text()}
    assert found == set(MODULES)
