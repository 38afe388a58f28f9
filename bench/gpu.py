"""Every GPU check and benchmark in one call, for a lent GPU machine's short time:

1. the CUDA suite (``tests/gpu``: every cell x engine on CUDA == CPU, the kernels compiled for
   the card) by pytest in a subprocess (its summary goes in the JSON; the interpreter tests
   ``tests/test_triton_*.py`` are for CPU machines);
2. the diagonal scan at the issue's size (B16 T16384 D1024 fp32): the Triton kernels and the
   torch chunked path, forward and forward+backward, beside the card's copy bandwidth, in the
   same process, with CUDA events (warm-up, then the median of timed runs);
3. ``bench/gpu_fused_rnn.py`` (the fused Elman/GRU/LSTM/sLSTM kernels vs cuDNN);
4. ``bench/gpu_gla.py`` (chunked GLA / SSD kernels vs the torch path and fla's chunk_gla);
5. ``bench/gpu_newton_fused.py`` (the fused Newton sweeps: ParaGRU vs the eager Newton path and
   cuDNN GRU);
6. ``bench/gpu_newton.py`` (ParaGRU on Newton vs cuDNN GRU and a GRUCell loop).

Usage: python bench/gpu.py [OUT_DIR [SECTION ...]]   (default bench/out/gpu, every section; writes
gpu.json, newton.json). Naming sections runs only those, e.g. ``suite`` alone while the card
trains something else, then the benchmarks alone on an idle card.
The peers' figures on an H200 (../shared/anchors/h200-2026-11-26.jsonl): fla chunk_hgrn 1.85 ms
forward, 7.38 ms forward+backward at this size; targets: >= 80% of copy bandwidth forward,
<= 4 ms forward+backward.
"""
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from rnnlab.benchmarks.timing import cuda_ms, write_json
from rnnlab.ops import diagonal

ROOT = Path(__file__).resolve().parent.parent


def suite(out: Path) -> dict:
    """pytest on the CUDA suite and the kernels' parity tests; the summary line and exit code
    (pytest's whole output in ``out/suite.log``)."""
    start = time.time()
    # pytest-xdist (where installed) runs the cases in parallel: 74 tests took 44 s with 8
    # workers on an H200 machine, most of it Triton compiling
    workers = ["-n", "8"] if importlib.util.find_spec("xdist") is not None else []
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *workers, "tests/gpu"],
                          cwd=ROOT, capture_output=True, text=True)
    (out / "suite.log").write_text(done.stdout + done.stderr)
    lines = done.stdout.strip().splitlines()
    return dict(exit_code=done.returncode, summary=lines[-1] if lines else "",
                failures=[ln for ln in lines if ln.startswith("FAILED")][:50],
                seconds=round(time.time() - start, 1))


def copy_bandwidth(size: int = 1 << 30) -> float:
    """GB/s of a device-to-device copy of ``size`` bytes (read + write)."""
    x = torch.empty(size, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    return 2 * size / cuda_ms(lambda: y.copy_(x)) / 1e6


def diagonal_scan(B: int = 16, T: int = 16384, D: int = 1024) -> dict:
    """Triton vs torch path for ``linear_scan``, forward and forward+backward, and copy speed."""
    dev = "cuda"
    a = torch.rand(B, T, D, device=dev) * 0.5 + 0.5
    b = torch.randn(B, T, D, device=dev)
    copy_gbps = copy_bandwidth()
    out = dict(B=B, T=T, D=D, dtype="float32", copy_GBps=round(copy_gbps, 1))
    for path in ("triton", "torch"):
        diagonal.USE_TRITON = path == "triton"
        if diagonal.backend(dev) != path:
            out[path] = "unavailable"
            continue
        a_g, b_g = a.clone().requires_grad_(), b.clone().requires_grad_()

        def fwd():
            diagonal.linear_scan(a, b)

        def fwd_bwd():
            h, _ = diagonal.linear_scan(a_g, b_g)
            h.backward(torch.ones_like(h))

        fwd_ms, fb_ms = cuda_ms(fwd), cuda_ms(fwd_bwd)
        moved = 3 * a.numel() * a.element_size()  # forward: read a, b; write h
        out[path] = dict(fwd_ms=round(fwd_ms, 3), fwd_bwd_ms=round(fb_ms, 3),
                         fwd_share_of_copy_bw=round(moved / fwd_ms / 1e6 / copy_gbps, 3))
    diagonal.USE_TRITON = True
    return out


def _load(name: str):
    """A sibling benchmark script as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def newton(out_dir: Path) -> dict:
    path = out_dir / "newton.json"
    _load("gpu_newton").main(str(path))
    return json.loads(path.read_text())


SECTIONS = ("suite", "diagonal_scan", "fused_rnn", "gla", "newton_fused", "newton")


def main(out_dir: str = "bench/out/gpu", *only: str) -> None:
    unknown = set(only) - set(SECTIONS)
    if unknown:
        sys.exit(f"bench/gpu.py: SECTION must be among {list(SECTIONS)}, got {sorted(unknown)}")
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs CUDA (torch.cuda.is_available() is False)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    result = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__,
                  triton=triton_version)
    sections = (("suite", lambda: suite(out)), ("diagonal_scan", diagonal_scan),
                ("fused_rnn", lambda: _load("gpu_fused_rnn").run()),
                ("gla", lambda: _load("gpu_gla").run()),
                ("newton_fused", lambda: _load("gpu_newton_fused").run()),
                ("newton", lambda: newton(out)))
    for name, step in sections:
        if only and name not in only:
            continue
        start = time.time()
        try:
            result[name] = step()
        except Exception as error:  # one failed section must not lose the others' figures
            result[name] = dict(error=repr(error)[:500])
        print(name, round(time.time() - start, 1), "s:", json.dumps(result[name])[:400],
              flush=True)
        write_json(result, out / "gpu.json")  # after every section: a timeout keeps the rest


if __name__ == "__main__":
    main(*sys.argv[1:])
