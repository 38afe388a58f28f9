"""Error regression: PV-RNN's online inference at test time (Ahmadi & Tani 2019).

The weights stay frozen. At each time ``t`` the observations ``x_{t−W..t−1}`` of the last W steps
form a window; K gradient steps (Adam) on the window's adaptive variables A lower the window's
loss (prediction error + w·KL, the training loss); then the future ``x_t..x_{t+H−1}`` is
predicted by rolling the *prior* forward from the state at the window's end (z = the prior's
mean). The window then slides by ``stride`` steps: the state before the window advances through
the steps that leave it (with their inferred posterior), their A are dropped, and the new steps'
A start at the prior that just predicted them (A^μ = atanh μp, A^σ = log σp), so before any
regression the window's new part *is* the prediction; the first window starts at the prior
rolled from the sequence start.

Only the window's A receive gradients (``torch.autograd.grad`` on them alone), so the weights
and their ``.grad`` are untouched.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from ..checks import check_choice, check_int, check_number
from .pvrnn import PVRNN, PVState, Window, loss


def check_args(x: torch.Tensor, window: int, steps: int, lr: float, horizon: int,
               stride: int) -> None:
    owner = "error_regression"
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"{owner}: x must be a (B, T, O) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    check_int(owner, "window", window, 1)
    check_int(owner, "steps", steps, 0)
    check_number(owner, "lr", lr, 0, low_open=True)
    check_int(owner, "horizon", horizon, 1)
    check_int(owner, "stride", stride, 1, window)  # every step passes through a window
    if window + horizon > x.shape[1]:
        raise ValueError(f"{owner}: window + horizon must be <= the sequence length "
                         f"{x.shape[1]}, got {window} + {horizon}")


def prior_window(run, steps: int) -> Window:
    """Adaptive variables that reproduce a prior roll's first ``steps`` steps: A^μ = atanh μp,
    A^σ = log σp (posterior = prior), requiring grad."""
    limit = 1 - 1e-5  # tanh never reaches ±1; keep atanh finite
    return [(torch.atanh(m[:, :steps].clamp(-limit, limit)).detach().requires_grad_(),
             torch.log(s[:, :steps]).detach().requires_grad_())
            for m, s in zip(run.prior_mu, run.prior_sigma)]


def regress(model: PVRNN, a: Window, x: torch.Tensor, state: Optional[PVState],
            w: Union[float, Sequence[float]], steps: int, lr: float) -> List[float]:
    """K=``steps`` Adam steps on the window ``a`` (in place) against the observations x (B, W, O)
    from ``state``; returns the window's loss before each step and after the last (K + 1)."""
    params = [p for pair in a for p in pair]
    opt = torch.optim.Adam(params, lr=lr)
    history = []
    for _ in range(steps + 1):
        value, _ = loss(model(a, state=state, noise="mean"), x, w)
        history.append(value.item())
        if len(history) > steps:
            break
        grads = torch.autograd.grad(value, params)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    return history


@torch.no_grad()
def advance(model: PVRNN, a: Window, state: Optional[PVState], n: int) -> PVState:
    """The state after the window's first ``n`` steps, driven by their posterior mean."""
    head = [(m[:, :n], s[:, :n]) for m, s in a]
    return model(head, state=state, noise="mean").state


def slide(a: Window, n: int, new: Window) -> Window:
    """Drop the first ``n`` steps of A and append ``new`` (n steps)."""
    return [(torch.cat([m[:, n:], nm], 1).detach().requires_grad_(),
             torch.cat([s[:, n:], ns], 1).detach().requires_grad_())
            for (m, s), (nm, ns) in zip(a, new)]


def last_steps(a: Window, n: int) -> Window:
    """``n`` copies of A's last step."""
    return [(m[:, -1:].detach().expand(-1, n, -1), s[:, -1:].detach().expand(-1, n, -1))
            for m, s in a]


def error_regression(model: PVRNN, x: torch.Tensor, w: Union[float, Sequence[float]],
                     window: int = 20, steps: int = 100, lr: float = 0.03, horizon: int = 10,
                     stride: int = 10, new_steps: str = "prior") -> dict:
    """Slide a W-step window over x (B, T, O) and predict H steps past each window's end.

    ``new_steps``: how the adaptive variables of the steps entering the window start: "prior"
    (posterior = the prior that just predicted them), "last" (copies of the last step's).

    Returns ``{"times": [t, ...] (window ends), "predictions": (n_windows, B, H, O),
    "targets": same shape, "error": mean ‖x − x̂‖² per step over all windows, "window_loss":
    [[loss before, ..., after] per window]}``."""
    check_args(x, window, steps, lr, horizon, stride)
    check_choice("error_regression", "new_steps", new_steps, ("prior", "last"))
    batch, length = x.shape[:2]
    with torch.no_grad():
        a = prior_window(model(None, steps=window, batch=batch, noise="mean"), window)
    state: Optional[PVState] = None
    times, preds, targets, history = [], [], [], []
    t = window
    while t + horizon <= length:
        history.append(regress(model, a, x[:, t - window:t], state, w, steps, lr))
        with torch.no_grad():
            end = model(a, state=state, noise="mean").state
            roll = model(None, steps=max(horizon, stride), state=end, noise="mean")
        preds.append(roll.out[:, :horizon])
        targets.append(x[:, t:t + horizon])
        times.append(t)
        state = advance(model, a, state, stride)
        new = prior_window(roll, stride) if new_steps == "prior" else last_steps(a, stride)
        a = slide(a, stride, new)
        t += stride
    predictions, target = torch.stack(preds), torch.stack(targets)  # (n_windows, B, H, O)
    return {"times": times, "predictions": predictions, "targets": target,
            "error": ((predictions - target) ** 2).sum(-1).mean().item(),
            "window_loss": history}


@torch.no_grad()
def prior_prediction(model: PVRNN, x: torch.Tensor, times: Sequence[int], horizon: int) -> dict:
    """The baseline without inference: the prior rolled from the sequence start (z = the prior's
    mean), scored on the same targets as ``error_regression``."""
    out = model(None, steps=x.shape[1], batch=x.shape[0], noise="mean").out  # (B, T, O)
    predictions = torch.stack([out[:, t:t + horizon] for t in times])  # (n_windows, B, H, O)
    targets = torch.stack([x[:, t:t + horizon] for t in times])
    return {"predictions": predictions,
            "error": ((predictions - targets) ** 2).sum(-1).mean().item()}
