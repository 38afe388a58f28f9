"""GPU benchmark of the fused Newton sweeps (``rnnlab/ops/newton_fused``) on ParaGRU at the
issue's size, B16 T4096 H256 fp32, forward and forward+backward, beside the Newton engine's
current path (eager: ``linear_scan`` over the whole sequence, linearization in torch ops) and
cuDNN GRU (torch.nn.GRU), in the same call, timed with CUDA events (warm-up runs, then the median
of timed runs). Every timing includes the input projection (``cell.project``), as cuDNN's does.

A short parity check (the kernels vs the torch reference solve, T=256) runs first so wrong
numbers are never timed silently; the kernels' tile / feature-block sizes are swept over a few
configurations (``CONFIGS``) and each reported, the best one also as ``fused``.

``run() -> dict`` is what ``bench/gpu.py`` calls (it raises RuntimeError without CUDA);
``python bench/gpu_newton_fused.py [OUT.json]`` runs it alone.
Anchors (shared/anchors, one H200): cuDNN GRU 64 ms forward, 118 ms forward+backward here; a
naive GRUCell loop ~1280 ms; the target for ParaGRU on fused Newton sweeps: <= 2 ms fwd+bwd.
"""
import json
import sys

import torch

from rnnlab.benchmarks import timing

B, T, H, WARMUP, RUNS = 16, 4096, 256, 3, 10
CONFIGS = ((32, 32), (16, 32), (64, 32), (32, 16), (32, 64))  # (TILE, BLOCK)


def _fwd_and_fwdbwd(forward, x, params) -> dict:
    return timing.cuda_fwd_and_fwdbwd(forward, x, params, WARMUP, RUNS)


def _fused(cell, stats: dict):
    from rnnlab.ops import newton_fused as nf

    def forward(x):
        z, _, info = nf.newton_fused("paragru", cell.project(x), x.new_zeros(x.shape[0], H),
                                     nf.cell_params(cell))
        stats.update(iterations=info["iterations"], residual=info["residual"])
        return z

    return forward


def _parity(cell) -> float:
    """Largest |kernels - torch reference| over z and the gradients, at T=256."""
    from rnnlab.ops import newton_fused as nf

    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(4, 256, H, device="cuda", generator=g)
    outs = []
    for path in (True, False):
        nf.USE_TRITON = path
        xg = x.clone().requires_grad_()
        z = _fused(cell, {})(xg)
        grads = torch.autograd.grad(z.square().sum(), (xg, cell.a))
        outs.append([z, *grads])
    nf.USE_TRITON = True
    return max(float((a - b).abs().max()) for a, b in zip(*outs))


def run(configs=CONFIGS) -> dict:
    """``{parity_max_abs_err, fused_<TILE>x<BLOCK>: {fwd_ms, fwd_bwd_ms}, fused (the best),
    newton_engine, cudnn_gru, speedup_vs_*}``; a failed path gives ``{"error": ...}``."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench/gpu_newton_fused.py needs CUDA (torch.cuda.is_available() is "
                           "False)")
    import rnnlab
    from rnnlab.engines import Newton
    from rnnlab.ops.newton_fused import backend
    from rnnlab.ops.newton_fused import triton_kernels as tk

    if backend("cuda") != "triton":
        raise RuntimeError("bench/gpu_newton_fused.py needs triton (ops.newton_fused.backend "
                           "says 'torch')")
    torch.manual_seed(0)
    dev = "cuda"
    cell = rnnlab.cells.get("paragru", H, H).to(dev)
    x = torch.randn(B, T, H, device=dev)
    out = dict(B=B, T=T, H=H, dtype="float32", device=torch.cuda.get_device_name(),
               parity_max_abs_err=_parity(cell))
    stats = {}
    best = None
    for tile, block in configs:
        tk.TILE, tk.BLOCK = tile, block
        key = f"fused_{tile}x{block}"
        try:
            out[key] = _fwd_and_fwdbwd(_fused(cell, stats), x, list(cell.parameters()))
        except Exception as error:  # one failed configuration must not lose the others
            out[key] = dict(error=repr(error)[:500])
            continue
        if best is None or out[key]["fwd_bwd_ms"] < out[best]["fwd_bwd_ms"]:
            best = key
    if best is not None:
        out["fused"] = dict(out[best], config=best, **stats)
        tk.TILE, tk.BLOCK = (int(v) for v in best.split("_")[1].split("x"))
    layer = rnnlab.Recurrent(cell, engine=Newton(compile=False))
    gru = torch.nn.GRU(H, H, batch_first=True).to(dev)
    peers = dict(newton_engine=(lambda x: layer(x)[0], list(cell.parameters())),
                 cudnn_gru=(lambda x: gru(x)[0], list(gru.parameters())))
    for name, (fn, params) in peers.items():
        try:
            out[name] = _fwd_and_fwdbwd(fn, x, params)
        except Exception as error:
            out[name] = dict(error=repr(error)[:500])
    for peer in peers:
        if "fwd_ms" in out.get("fused", {}) and "fwd_ms" in out[peer]:
            out[f"speedup_vs_{peer}"] = {p: round(out[peer][f"{p}_ms"] / out["fused"][f"{p}_ms"],
                                                  2) for p in ("fwd", "fwd_bwd")}
    return out


if __name__ == "__main__":
    result = run()
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 1:
        from rnnlab.benchmarks.timing import write_json
        write_json(result, sys.argv[1])
