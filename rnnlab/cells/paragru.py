"""ParaGRU (ParaRNN, apple/ml-pararnn): a GRU whose recurrent matrices are diagonal vectors, so
each channel recurs only on itself and the step Jacobian is diagonal.

    z  = sigmoid(a_z * h + B_z x + b_z)
    r  = sigmoid(a_r * h + B_r x + b_r)
    h^ = tanh(a_h * (h * r) + B_h x + b_h)
    h' = (1 - z) * h + z * h^

    dh'/dh = (1 - z) + (h^ - h) z' a_z + z h^' a_h (r + h r' a_r)     (diagonal; ' = derivative)

B is a multi-head, block-diagonal input projection: x is split into ``heads`` groups of D/heads
features and each group is projected to its own H/heads channels of every gate (B never enters
the Jacobian). ``heads`` defaults to 2 (ParaRNN's default) when 2 divides both D and H, else 1;
an explicit ``heads`` that does not divide both is a ``ValueError``.

Init (ParaRNN names, with the concrete reading used here):

- ``xlstm`` for the recurrent vectors a: N(0, std) with std = sqrt(2 / (5 H)), i.e. the notes'
  "N(0, 2/sqrt(5D))" read as xLSTM's small-init standard deviation sqrt(2 / (5 * width)), with
  the width of the recurrence, H.
- ``xavier_uniform`` for B: each (gate, head) block (H/heads x D/heads) gets
  U(-s, s), s = sqrt(6 / (D/heads + H/heads)).
- ``bias_minus_linspace``: the write gate z gets b_z = -linspace(1, 4) over the H/heads channels
  of each head (so the retention 1 - z starts between sigmoid(1) = 0.73 and sigmoid(4) = 0.98,
  a spread of timescales inside every head); b_r = b_h = 0.

``a_max`` (default None): clamp |a| <= a_max inside the step, ParaRNN's stability recipe (the
paper uses 0.5; 0.9 on synthetic tasks). The clamp is applied to the parameters each step, so the
stored parameters are free and the step stays pure.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import check_int, check_number
from .base import Cell, Diagonal, NewtonWins
from .registry import register

# bias_minus_linspace: the write gate's bias is -linspace(*GATE_BIAS_RANGE) within each head.
GATE_BIAS_RANGE = (1.0, 4.0)


def resolve_heads(cell: str, heads, input_size: int, hidden_size: int, default: int = 2) -> int:
    """The head count of a block-diagonal input projection: ``heads``, or ``default`` when it
    divides both sizes (else 1) when ``heads`` is None. Raises ``ValueError`` naming ``heads``."""
    if heads is None:
        fits = input_size % default == 0 and hidden_size % default == 0
        return default if fits else 1
    check_int(cell, "heads", heads, 1, optional=True)  # "or None" in the error: it is allowed
    if input_size % heads or hidden_size % heads:
        raise ValueError(f"{cell}: heads must divide input_size={input_size} and "
                         f"hidden_size={hidden_size}, got heads={heads}")
    return heads


def check_a_max(cell: str, a_max):
    """``a_max`` must be None or a number > 0."""
    check_number(cell, "a_max", a_max, 0, low_open=True, optional=True)
    return None if a_max is None else float(a_max)


def xlstm_normal_(t: torch.Tensor, width: int) -> torch.Tensor:
    """ParaRNN's ``xlstm`` init, read as N(0, std = sqrt(2 / (5 width))), in place."""
    return nn.init.normal_(t, 0.0, math.sqrt(2.0 / (5.0 * width)))


def minus_linspace(hidden_size: int, heads: int, device=None, dtype=None) -> torch.Tensor:
    """``-linspace(*GATE_BIAS_RANGE)`` over the channels of each head, repeated over heads: (H,)."""
    ramp = torch.linspace(*GATE_BIAS_RANGE, hidden_size // heads, device=device, dtype=dtype)
    return -ramp.repeat(heads)  # (H/heads,) -> (H,)


class HeadwiseLinear(nn.Module):
    """Block-diagonal input projection with G gates: ``(..., D) -> (..., G * H)``.

    The input is split into ``heads`` groups of D/heads features; group n feeds only channels
    ``n * H/heads ... (n+1) * H/heads - 1`` of each gate. Output layout: gate-major, then the H
    channels head-major (what a cell's ``chunk(G)`` expects). ``weight: (heads, G, H/heads,
    D/heads)``, ``bias: (G * H)``.
    """

    def __init__(self, input_size: int, hidden_size: int, gates: int, heads: int,
                 device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.heads, self.gates = heads, gates
        self.weight = nn.Parameter(torch.empty(heads, gates, hidden_size // heads,
                                               input_size // heads, **kw))
        self.bias = nn.Parameter(torch.zeros(gates * hidden_size, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """xavier_uniform per (gate, head) block; zero bias (cells set their gate biases)."""
        fan_out, fan_in = self.weight.shape[-2:]
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _HeadwiseProjection.apply(x, self.weight, self.bias)  # (..., D) -> (..., G * H)

    def full_weight(self) -> torch.Tensor:
        """The projection as one dense (G * H, D) block-diagonal matrix (for tests, export)."""
        blocks = [torch.block_diag(*self.weight[:, g]) for g in range(self.gates)]  # (H, D) each
        return torch.cat(blocks, dim=0)  # G x (H, D) -> (G * H, D)


class _HeadwiseProjection(torch.autograd.Function):
    """``y[..., g, n, k] = sum_d x[..., n, d] W[n, g, k, d] + b`` as one batched matmul per
    head and one pass that both moves heads into the gate-major layout and adds the bias (the
    einsum it replaces made a copy and then a second pass for the bias); the backward makes one
    head-major copy of the gradient and reuses it for the input, weight and bias gradients.
    Same products and sums as the einsum, so the same numbers."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        n, G, k, d = weight.shape
        rows = x.reshape(-1, n, d).transpose(0, 1)  # (heads, N, D/heads), a view
        y = torch.bmm(rows, weight.reshape(n, G * k, d).transpose(1, 2))  # (heads, N, G*k)
        out = x.new_empty(rows.shape[1], G, n, k)
        torch.add(y.view(n, -1, G, k).permute(1, 2, 0, 3), bias.view(G, n, k), out=out)
        ctx.save_for_backward(x, weight)
        return out.view(*x.shape[:-1], G * n * k)  # (N, G, heads, H/heads) -> (..., G * H)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        n, G, k, d = weight.shape
        g = grad.reshape(-1, G, n, k).permute(2, 0, 1, 3).reshape(n, -1, G * k)  # one copy
        grad_x = torch.bmm(g, weight.reshape(n, G * k, d)).transpose(0, 1).reshape(x.shape)
        rows = x.reshape(-1, n, d).transpose(0, 1)  # (heads, N, D/heads)
        grad_w = torch.bmm(g.transpose(1, 2), rows).view(n, G, k, d)
        grad_b = g.sum(1).view(n, G, k).transpose(0, 1).reshape(-1)  # (G * H,) gate-major
        return grad_x, grad_w, grad_b


@register("paragru")
class ParaGRU(Cell):
    """ParaRNN's diagonal GRU. State ``h: (B, H)``; ``u_t: (B, 3H)`` = [B_z x + b_z, B_r x + b_r,
    B_h x + b_h].

    Paper: Danieli, Rodriguez, Sarabia, Suau, Zappella, "ParaRNN: Unlocking Parallel Training of
    Nonlinear RNNs for Large Language Models", 2025, https://arxiv.org/abs/2510.21450

    Example (Newton over the whole sequence gives the sequential outputs):

    >>> import torch, rnnlab
    >>> cell = rnnlab.cells.get("paragru", 4, 8, a_max=0.5)
    >>> x = torch.randn(2, 16, 4)  # (B, T, D)
    >>> y, h = rnnlab.Recurrent(cell, engine="newton")(x)
    >>> y.shape, cell.heads  # 2 heads: 2 divides D and H
    (torch.Size([2, 16, 8]), 2)
    >>> torch.allclose(y, rnnlab.Recurrent(cell, engine="sequential")(x)[0], atol=1e-5)
    True
    """

    structure = Diagonal()
    # fwd+bwd: 3.5-12.8x the sequential engine up to B*S = 1024 from T = 256, ~1x at 2048;
    # fwd only: 3.5-9.9x at B*S = 64-128, 1.1x at 512 (H = 64; rnnlab bench cells)
    newton_wins = NewtonWins(min_steps=256, train=1024, infer=128)

    def __init__(self, input_size: int, hidden_size: int, heads: int | None = None,
                 a_max: float | None = None, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        self.heads = resolve_heads("ParaGRU", heads, input_size, hidden_size)
        self.a_max = check_a_max("ParaGRU", a_max)
        kw = dict(device=device, dtype=dtype)
        self.proj = HeadwiseLinear(input_size, hidden_size, 3, self.heads, **kw)
        self.a = nn.Parameter(torch.empty(3, hidden_size, **kw))  # rows a_z, a_r, a_h
        self.reset_parameters()

    def reset_parameters(self) -> None:
        H = self.hidden_size
        self.proj.reset_parameters()
        xlstm_normal_(self.a, H)
        with torch.no_grad():
            self.proj.bias[:H].copy_(minus_linspace(H, self.heads, self.a.device, self.a.dtype))

    def recurrent(self) -> torch.Tensor:
        """The diagonal recurrent vectors ``(3, H)`` as the step uses them (clamped to a_max)."""
        return self.a if self.a_max is None else self.a.clamp(-self.a_max, self.a_max)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, T, D) -> (B, T, 3H)

    def step(self, u_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        a_z, a_r, a_h = self.recurrent()  # 3 x (H,)
        u_z, u_r, u_h = u_t.chunk(3, dim=-1)  # 3 x (B, H)
        z = torch.sigmoid(a_z * h + u_z)
        r = torch.sigmoid(a_r * h + u_r)
        h_hat = torch.tanh(a_h * (h * r) + u_h)
        return h + z * (h_hat - h)  # = (1 - z) * h + z * h^

    def jacobian(self, u_t: torch.Tensor, h: torch.Tensor):
        """``step`` and its diagonal Jacobian (the formula above) in closed form, in
        ``linearize``'s column layout for ``Diagonal``: ``(h', (B, 1, H))``."""
        a_z, a_r, a_h = self.recurrent()  # 3 x (H,)
        u_z, u_r, u_h = u_t.chunk(3, dim=-1)  # 3 x (B, H)
        z = torch.sigmoid(a_z * h + u_z)
        r = torch.sigmoid(a_r * h + u_r)
        h_hat = torch.tanh(a_h * (h * r) + u_h)
        gap = h_hat - h
        d_hat = (1 - h_hat * h_hat) * a_h * (r + h * r * (1 - r) * a_r)  # d h^ / d h
        jac = (1 - z) + gap * z * (1 - z) * a_z + z * d_hat
        return h + z * gap, jac.unsqueeze(1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}, a_max={self.a_max}"
