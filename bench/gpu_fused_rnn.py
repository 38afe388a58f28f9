"""GPU benchmark of the fused head-wise cell kernels (``rnnlab/ops/fused_rnn``) beside cuDNN
(torch.nn.GRU / torch.nn.LSTM) at the issue's size, B16 T4096 H256 fp32, forward and
forward+backward, timed with CUDA events (warm-up runs, then the median of timed runs). Our
timings include the input projection (one matmul), as cuDNN's do.

The kernels keep one head's R on chip, so they take heads of at most ``MAX_HEAD_DIM`` (64)
channels: H256 runs as 4 x 64, 8 x 32 and 16 x 16 heads; dense H256 is reported as unsupported,
and a dense H64 pair (kernel vs cuDNN) gives the like-for-like dense figure. A short parity check
(kernels vs the fp32 loop, T=64) runs first so wrong numbers are never timed silently.

``run() -> dict`` is what ``bench/gpu.py`` calls (it raises RuntimeError without CUDA);
``python bench/gpu_fused_rnn.py [OUT.json]`` runs it alone.
Anchors (shared/anchors, one H200): cuDNN GRU 64 ms forward, 118 ms forward+backward here.
"""
import json
import sys

import torch
import torch.nn.functional as F

from rnnlab.benchmarks import timing
from rnnlab.ops import fused_rnn as fr

B, T, H, WARMUP, RUNS = 16, 4096, 256, 3, 10


def _fwd_and_fwdbwd(forward, x, params) -> dict:
    """``timing.cuda_fwd_and_fwdbwd`` plus forward microseconds per time step."""
    out = timing.cuda_fwd_and_fwdbwd(forward, x, params, WARMUP, RUNS)
    return dict(out, fwd_us_per_step=round(1000 * out["fwd_ms"] / x.shape[1], 2))


def _weights(cell: str, heads: int, width: int, dev: str):
    """W_ih, b_ih, R (G, N, D, D), b_hh as trainable fp32 tensors, torch's init scale."""
    G, _ = fr.CELLS[cell]
    D = width // heads
    scale = width ** -0.5
    w = [torch.empty(G * width, width, device=dev).uniform_(-scale, scale),
         torch.empty(G * width, device=dev).uniform_(-scale, scale),
         torch.empty(G, heads, D, D, device=dev).uniform_(-D ** -0.5, D ** -0.5),
         torch.empty(G * width, device=dev).uniform_(-scale, scale)]
    return [p.requires_grad_() for p in w]


def _kernel_forward(cell: str, weights, width: int):
    w_ih, b_ih, R, b_hh = weights
    S = fr.CELLS[cell][1]

    def forward(x):
        state = tuple(x.new_zeros(x.shape[0], width) for _ in range(S))
        wx = F.linear(x, w_ih, b_ih)  # (B, T, D) -> (B, T, G·H)
        return fr.fused_rnn(cell, wx, R, None if cell == "slstm" else b_hh, state)[0]

    return forward


def parity(dev: str = "cuda") -> dict:
    """Worst relative error ``max|kernel - loop| / max|loop|`` over y and every gradient, the
    fp32 loop as reference, at B=5, T=64, H=128 in 4 heads."""
    out = {}
    for cell in ("gru", "lstm", "rnn_tanh", "slstm"):
        w_ih, b_ih, R, b_hh = _weights(cell, 4, 128, dev)
        x = torch.randn(5, 64, 128, device=dev)
        res = []
        for fn in (fr.run_kernels, fr.fused_rnn_reference):
            state = tuple(torch.zeros(5, 128, device=dev, requires_grad=True)
                          for _ in range(fr.CELLS[cell][1]))
            y, _ = fn(cell, F.linear(x, w_ih, b_ih), R, b_hh, state)
            grads = torch.autograd.grad(y.square().sum(), [w_ih, b_ih, R, b_hh, *state])
            res.append([t.detach() for t in (y, *grads)])
        out[cell] = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))
                        for a, b in zip(*res))
    return out


def run() -> dict:
    """Parity, then the timings: {cell: {config: {fwd_ms, fwd_bwd_ms, fwd_us_per_step}}}."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench/gpu_fused_rnn.py needs CUDA (torch.cuda.is_available() is "
                           "False)")
    if fr.backend("cuda") != "triton":
        raise RuntimeError("bench/gpu_fused_rnn.py needs triton (rnnlab.ops.fused_rnn.backend"
                           "('cuda') is not 'triton')")
    dev = "cuda"
    torch.manual_seed(0)
    out = dict(B=B, T=T, H=H, dtype="float32", max_head_dim=fr.MAX_HEAD_DIM,
               tf32_cudnn=torch.backends.cudnn.allow_tf32, parity_max_rel_err=parity(dev))
    x = torch.randn(B, T, H, device=dev)
    x64 = torch.randn(B, T, 64, device=dev)
    for cell, peer in (("gru", torch.nn.GRU), ("lstm", torch.nn.LSTM),
                       ("rnn_tanh", torch.nn.RNN), ("slstm", None)):
        res = out[cell] = {}
        for width, xx in ((H, x), (64, x64)):
            if peer is not None:
                module = peer(width, width, batch_first=True).to(dev)
                res[f"cudnn_dense_H{width}"] = _fwd_and_fwdbwd(lambda v: module(v)[0], xx,
                                                                list(module.parameters()))
        for heads, width, xx in ((1, H, x), (1, 64, x64), (4, H, x), (8, H, x), (16, H, x)):
            name = f"kernel_{heads}x{width // heads}"
            if not fr.supported(cell, width // heads):
                res[name] = f"unsupported: head of {width // heads} > {fr.MAX_HEAD_DIM}"
                continue
            weights = _weights(cell, heads, width, dev)
            try:
                res[name] = _fwd_and_fwdbwd(_kernel_forward(cell, weights, width), xx, weights)
            except Exception as error:  # one config failing must not lose the others
                res[name] = dict(error=repr(error)[:300])
        print(cell, json.dumps(res), flush=True)
    return out


if __name__ == "__main__":
    result = run()
    text = json.dumps(result, indent=1)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.write(text)
    print(text)
