"""Registers and spills of the fused RNN kernels compiled for a Hopper GPU, read on any machine.

Triton's wheel ships the NVIDIA back end (``ptxas``, ``cuobjdump``), so a kernel compiles to a
cubin for sm_90a without a GPU, and the cubin says how many registers a thread uses and how large
its stack frame is (where registers spill).
The fused RNN kernels keep each gate's recurrent block in registers (``ops/fused_rnn``), so this
is the first thing to read before timing them on a card (255 registers is the cap per thread).

    python bench/triton_registers.py [OUT.json]

Prints one line per (kernel, cell, head width) and writes the list as JSON (default
``bench/out/triton_registers.json``). Needs triton with its NVIDIA back end; must run with
``TRITON_INTERPRET`` unset (the interpreter replaces the compiler).
"""
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("bench/triton_registers.py compiles kernels: unset TRITON_INTERPRET")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from concurrent.futures.process import BrokenProcessPool  # noqa: E402

from rnnlab.ops.fused_rnn import triton_kernels as fk  # noqa: E402

SIZES = ("B", "T", "N", "D")  # the kernels' int arguments; lengths is int64, the rest fp32


def _signature(fn, constants: dict) -> dict:
    """Triton's type for each argument of the kernel ``fn``, read from its parameter names."""
    return {name: "constexpr" if name in constants else "i32" if name in SIZES
            else "*i64" if name == "lengths" else "*fp32" for name in fn.arg_names}


def resource_usage(kernel: str, constants: dict, num_warps: int) -> dict:
    """Compile ``ops/fused_rnn``'s ``kernel`` (its name) for sm_90a and read the cubin's
    resource usage (``cuobjdump``): registers per thread and the stack frame, where spilled
    registers go."""
    fn = getattr(fk, kernel)
    source = ASTSource(fn=fn, signature=_signature(fn, constants), constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=num_warps))
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        text = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(cubin)],
                              capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", text)
    if found is None:
        raise RuntimeError(f"cuobjdump said nothing about registers:\n{text}")
    return dict(registers=int(found.group(1)), stack_bytes=int(found.group(2)),
                shared_bytes=int(found.group(3)))


def _isolated(*args) -> dict:
    """``resource_usage`` in a child process: a compiler that aborts (an LLVM assertion) ends
    the child, not the table."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        try:
            return pool.submit(resource_usage, *args).result()
        except BrokenProcessPool:
            return dict(error="the compiler process aborted")


def main(out: str = "bench/out/triton_registers.json") -> None:
    rows = []
    for cell, code in fk.CODES.items():
        for width in (16, 32, 64):
            kw = fk.launch_sizes(width)
            constants = dict(CELL=code, G=fk.CELLS[cell][0], A=fk.AUX[cell], BB=kw["BB"],
                             BD=kw["BD"], PREC=kw["PREC"])
            for name in ("forward", "backward"):
                row = dict(kernel=name, cell=cell, head_width=width, num_warps=kw["num_warps"],
                           **_isolated(f"_{name}_kernel", constants, kw["num_warps"]))
                print(json.dumps(row), flush=True)
                rows.append(row)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(dict(triton=triton.__version__, target="sm_90a",
                                         rows=rows), indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:2])
