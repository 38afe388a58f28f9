"""GPU benchmark of chunked gated linear attention (issue 18, 2.3): rnnlab's Triton kernels
(``ops/gla_triton.py``), ``ops/gla.py``'s torch path and, where it imports, fla's ``chunk_gla``
(per-key g) / ``chunk_simple_gla`` (per-head g), at B8 T4096 H4 K64 V64 fp32, forward and
forward+backward, in the same process, with CUDA events (warm-up, then the median of timed
runs). Each path's output is compared with the torch path's (relative error) so a fast wrong
kernel cannot pass unnoticed.

``run() -> dict`` is what ``bench/gpu.py`` calls; it raises RuntimeError without CUDA.
Usage: python bench/gpu_gla.py [OUT.json]   (default bench/out/gpu/gla.json)
fla's README figure for chunk_gla (GB200, B1 T8192 H96 D128): 1.765 ms forward, 7.670 ms
forward+backward (../shared/reference/fla.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from rnnlab.benchmarks import timing

SHAPE = dict(B=8, T=4096, H=4, K=64, V=64)
WARMUP, RUNS = 5, 20


def cuda_ms(fn) -> float:
    return timing.cuda_ms(fn, WARMUP, RUNS)

def _torch_path():
    """``ops/gla.py``'s chunked torch path, whatever gla.py dispatches to on CUDA (its
    ``USE_TRITON`` switch, once it has one, is turned off for the call)."""
    from rnnlab.ops import gla

    def fn(q, k, v, g):
        saved = getattr(gla, "USE_TRITON", None)
        if saved is not None:
            gla.USE_TRITON = False
        try:
            return gla.gated_linear_attention(q, k, v, g)[0]
        finally:
            if saved is not None:
                gla.USE_TRITON = saved
    return fn


def _triton_path():
    from rnnlab.ops.gla_triton import gated_linear_attention_triton
    return lambda q, k, v, g: gated_linear_attention_triton(q, k, v, g)[0]


def _fla_path(per_key: bool):
    """fla's chunked kernel with scale 1 (rnnlab's convention), or None if fla does not import."""
    try:
        if per_key:
            from fla.ops.gla import chunk_gla as op
        else:
            from fla.ops.simple_gla import chunk_simple_gla as op
    except Exception:
        return None
    return lambda q, k, v, g: op(q, k, v, g=g, scale=1.0)[0]


def _inputs(per_key: bool, B: int, T: int, H: int, K: int, V: int):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k = (torch.randn(B, T, H, K, device="cuda", generator=gen) * K ** -0.5 for _ in "qk")
    v = torch.randn(B, T, H, V, device="cuda", generator=gen)
    g_shape = (B, T, H, K) if per_key else (B, T, H)
    g = torch.nn.functional.logsigmoid(torch.randn(g_shape, device="cuda", generator=gen)) / 16
    return q, k, v, g


def _time(fn, xs, want) -> dict:
    """fwd and fwd+bwd ms of ``fn`` and its output's relative error against ``want``."""
    with torch.no_grad():
        o = fn(*xs)
        err = float((o.double() - want.double()).norm() / want.double().norm())
        fwd = cuda_ms(lambda: fn(*xs))
    leaves = [x.detach().clone().requires_grad_() for x in xs]
    do = torch.randn_like(want)

    def fwd_bwd():
        fn(*leaves).backward(do)
        for x in leaves:
            x.grad = None
    return dict(fwd_ms=round(fwd, 3), fwd_bwd_ms=round(cuda_ms(fwd_bwd), 3),
                rel_err_vs_torch=float(f"{err:.3e}"))


def run(B: int = SHAPE["B"], T: int = SHAPE["T"], H: int = SHAPE["H"], K: int = SHAPE["K"],
        V: int = SHAPE["V"]) -> dict:
    """Both forms of g, each path: ``{form: {path: {fwd_ms, fwd_bwd_ms, rel_err_vs_torch}}}``
    (``"unavailable"`` where fla does not import, ``{"error": ...}`` where a path failed)."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench/gpu_gla.py needs CUDA (torch.cuda.is_available() is False)")
    out = dict(B=B, T=T, H=H, K=K, V=V, dtype="float32", scale=1.0)
    for form in ("per_key", "per_head"):
        per_key = form == "per_key"
        xs = _inputs(per_key, B, T, H, K, V)
        torch_fn = _torch_path()
        with torch.no_grad():
            want = torch_fn(*xs)
        paths = dict(triton=_triton_path(), torch=torch_fn, fla=_fla_path(per_key))
        result = {}
        for name, fn in paths.items():
            if fn is None:
                result[name] = "unavailable"
                continue
            try:
                result[name] = _time(fn, xs, want)
            except Exception as error:  # one failed path must not lose the others' figures
                result[name] = dict(error=repr(error)[:500])
        for peer in ("torch", "fla"):
            mine, theirs = result.get("triton"), result.get(peer)
            if isinstance(mine, dict) and isinstance(theirs, dict) and "fwd_ms" in mine \
                    and "fwd_ms" in theirs:
                result[f"speedup_vs_{peer}"] = {
                    p: round(theirs[f"{p}_ms"] / mine[f"{p}_ms"], 2) for p in ("fwd", "fwd_bwd")}
        out[form] = result
        torch.cuda.empty_cache()
    return out


def main(path: str = "bench/out/gpu/gla.json") -> None:
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_gla.py needs CUDA (torch.cuda.is_available() is False)")
    from rnnlab.benchmarks.timing import write_json
    result = run()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(result, Path(path))
    print(result)


if __name__ == "__main__":
    main(*sys.argv[1:2])
