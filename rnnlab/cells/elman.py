"""Elman RNN as torch.nn.RNN: ``h' = phi(W_ih x + b_ih + W_hh h + b_hh)``, phi in {tanh, relu}."""
from __future__ import annotations

import torch

from ..checks import check_choice
from .base import Dense
from .registry import register
from .torch_style import TorchStyleCell

_NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}
# phi' from phi's output y, as autograd takes it (relu: 0 where y == 0, the kink included)
_SLOPES = {"tanh": lambda y: 1 - y * y, "relu": lambda y: (y > 0).to(y.dtype)}


@register("rnn_relu", nonlinearity="relu")
@register("rnn_tanh", nonlinearity="tanh")
class Elman(TorchStyleCell):
    """Elman cell. State ``h: (B, H)``; ``u_t: (B, H)`` (the projected input). Registered as
    ``rnn_tanh`` and ``rnn_relu``.

    Paper: Elman, "Finding Structure in Time", Cognitive Science 14(2), 1990,
    https://doi.org/10.1016/0364-0213(90)90002-E

    Example:

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("rnn_relu", input_size=3, hidden_size=8)
    >>> y, h = layer(torch.randn(2, 5, 3))  # x: (B, T, D)
    >>> y.shape, h.shape, bool((y >= 0).all())
    (torch.Size([2, 5, 8]), torch.Size([2, 8]), True)
    """

    structure = Dense()
    gates = 1

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh",
                 bias: bool = True, device=None, dtype=None):
        check_choice("Elman", "nonlinearity", nonlinearity, sorted(_NONLINEARITIES))
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity
        self.reset_parameters()

    def step(self, u_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return _NONLINEARITIES[self.nonlinearity](u_t + self.recur(h))

    def quasi_jacobian(self, u_t: torch.Tensor, h: torch.Tensor):
        """``(step(u_t, h), (d,))`` with ``d: (B, 1, H)`` the diagonal of the step Jacobian,
        ``d h'[c] / d h[c] = phi'(.)[c] W_hh[c, c]``."""
        new = self.step(u_t, h)
        d = _SLOPES[self.nonlinearity](new) * self.weight_hh.diagonal()
        return new, (d.unsqueeze(1),)  # (B, H) -> (B, 1, H)
