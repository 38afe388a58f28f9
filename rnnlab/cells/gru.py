"""GRU as torch.nn.GRU: gate order (r, z, n), two biases, reset applied after the matmul.

    r, z = sigmoid(W_i. x + b_i. + W_h. h + b_h.)
    n    = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h'   = (1 - z) * n + z * h

``reset_after=False`` gives Cho et al.'s original form,
``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Dense, NewtonWins
from .registry import register
from .torch_style import TorchStyleCell


@register("gru")
class GRU(TorchStyleCell):
    """GRU cell. State ``h: (B, H)``; ``u_t: (B, 3H)``.

    Paper: Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for
    Statistical Machine Translation", EMNLP 2014, https://arxiv.org/abs/1406.1078
    (``reset_after=False`` is the paper's form; torch's reset-after form is the default).

    Example:

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("gru", input_size=3, hidden_size=8)
    >>> y, h = layer(torch.randn(2, 5, 3))  # x: (B, T, D)
    >>> y.shape, h.shape
    (torch.Size([2, 5, 8]), torch.Size([2, 8]))
    >>> torch.equal(y[:, -1], h)  # the output of a step is its state
    True
    """

    structure = Dense()
    # quasi-Newton (8 iterations at init), fwd+bwd: 2.9-7.1x the sequential engine at B*S =
    # 64-128 from T = 1024, 1.3x at 512; fwd only: 3.5-4.2x at 64, 1.9-2.1x at 128 (H = 64)
    newton_wins = NewtonWins(min_steps=1024, train=128, infer=64, quasi=True)
    gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 reset_after: bool = True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.reset_after = reset_after
        self.reset_parameters()

    def step(self, u_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        _, z, n, _ = self._gates(u_t, h)
        return n + z * (h - n)  # = (1 - z) * n + z * h

    def _gates(self, u_t: torch.Tensor, h: torch.Tensor):
        """The step's gates r, z, n, each ``(B, H)``, and what r multiplies inside n
        (``W_hn h + b_hn``, or h when ``reset_after=False``)."""
        H = self.hidden_size
        if self.reset_after:
            g = self.recur(h)  # (B, 3H)
            r, z = torch.sigmoid(u_t[:, :2 * H] + g[:, :2 * H]).chunk(2, dim=-1)
            n = torch.tanh(u_t[:, 2 * H:] + r * g[:, 2 * H:])
            return r, z, n, g[:, 2 * H:]
        w_rz, w_n = self.weight_hh[:2 * H], self.weight_hh[2 * H:]
        b_rz, b_n = (None, None) if self.bias_hh is None else self.bias_hh.split(2 * H)
        r, z = torch.sigmoid(u_t[:, :2 * H] + F.linear(h, w_rz, b_rz)).chunk(2, dim=-1)
        n = torch.tanh(u_t[:, 2 * H:] + F.linear(r * h, w_n, b_n))
        return r, z, n, h

    def quasi_jacobian(self, u_t: torch.Tensor, h: torch.Tensor):
        """``(step(u_t, h), (d,))`` with ``d: (B, 1, H)`` the diagonal of the step Jacobian,
        ``d h'[c] / d h[c] = (1 - z)(1 - n^2) d a[c] + z + (h - n) z (1 - z) W_hz[c, c]`` for
        n = tanh(a). With ``reset_after``, ``d a[c] = r (1 - r) W_hr[c, c] (W_hn h + b_hn)[c]
        + r W_hn[c, c]``. Without, a = W_hn (r * h) and every r[k] moves with h[c] through
        W_hr[k, c], so ``d a[c] = r[c] W_hn[c, c] + sum_k W_hn[c, k] W_hr[k, c] h[k] r[k]
        (1 - r[k])``: one (H, H) matmul, a third of the step's own."""
        H = self.hidden_size
        r, z, n, rx = self._gates(u_t, h)
        w_r, w_z, w_n = self.weight_hh.unflatten(0, (3, H)).unbind(0)  # (3H, H) -> 3 x (H, H)
        if self.reset_after:
            da = r * (1 - r) * w_r.diagonal() * rx + r * w_n.diagonal()
        else:
            da = r * w_n.diagonal() + F.linear(h * r * (1 - r), w_n * w_r.T)
        d = (1 - z) * (1 - n * n) * da + z + (h - n) * z * (1 - z) * w_z.diagonal()
        return n + z * (h - n), (d.unsqueeze(1),)  # (B, H) -> (B, 1, H)
