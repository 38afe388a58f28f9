"""Training-free architecture scoring: the hidden-covariance score (Serianni & Kalita, ACL 2023).

An untrained network in eval mode reads one minibatch; one recurrent layer's outputs over all
steps form ``X`` of shape ``(H, B·T)`` (rows are units, columns are (sample, time) pairs). With
``C = corrcoef(X)`` and its eigenvalues ``λ``::

    score = -Σ_i [log(λ_i + k) + 1/(λ_i + k)],   k = 1e-5.   Higher is better.

Each term ``log(λ + k) + 1/(λ + k)`` is smallest (≈ 1) at ``λ = 1``, so the score is at most
about ``-H`` and is highest when the units are uncorrelated; a collapsed direction (``λ → 0``)
costs about ``1/k = 1e5``. Because every unit adds a term, scores compare models of one width;
``per_unit`` (score / H) is the width-free form.

What "hidden states" means here: the per-step output ``y: (B, T, H_out)`` of the chosen
``rnnlab.Recurrent`` layer, caught by a forward hook. For most cells ``y`` is the state itself
(GRU, Elman, IndRNN) or its visible half (LSTM: ``h``, not ``c``, as the paper hooks
``h_t``); for cells with a readout (Mamba's ``C_t·h_t + D·x_t``, linear attention's
``q_t·S_t``) it is that readout, the layer's only per-step output of width ``H``.

Zero-variance rows (a dead unit: constant over every sample and step) have no correlation; the
guard gives such a unit the identity row and column of ``C`` (1 on the diagonal, 0 elsewhere),
i.e. it is counted as one uncorrelated unit (a term of ≈ -1), keeping ``C`` ``H × H`` so that
models of one width stay comparable. ``hidden_covariance_details`` reports how many there were.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

import torch
from torch import nn

from ..checks import check_int, check_number
from ..nn.recurrent import Recurrent

K = 1e-5  # the paper's regulariser of each eigenvalue
# a row whose variance is below this fraction of the largest row's is taken as constant: float
# rounding leaves ~1e-16 relative variance in a row that is constant in exact arithmetic
DEAD_RTOL = 1e-12


@dataclass(frozen=True)
class CovarianceScore:
    """What ``hidden_covariance_details`` measured.

    - ``score``: ``-Σ[log(λ+k) + 1/(λ+k)]`` (higher is better).
    - ``per_unit``: ``score / H`` (comparable across widths; at most ≈ -1).
    - ``eigenvalues``: the eigenvalues of the correlation matrix, ascending, ``(H,)`` float64.
    - ``units``: ``H``; ``samples``: the columns ``B·T``; ``dead_units``: zero-variance rows.
    """
    score: float
    per_unit: float
    eigenvalues: torch.Tensor
    units: int
    samples: int
    dead_units: int


def correlation_matrix(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``corrcoef`` of the rows of ``states: (H, N)`` in float64, with zero-variance rows
    guarded (identity row and column, module docstring). Returns ``(C: (H, H), dead: (H,))``."""
    X = states.detach().to(torch.float64)
    X = X - X.mean(dim=1, keepdim=True)  # (H, N), each row centred
    var = (X * X).sum(dim=1)  # (H,)
    dead = var <= DEAD_RTOL * var.max().clamp_min(torch.finfo(torch.float64).tiny)
    std = torch.where(dead, torch.ones_like(var), var).sqrt()  # (H,); dead rows divided by 1
    Z = torch.where(dead[:, None], torch.zeros_like(X), X / std[:, None])  # (H, N), unit rows
    C = Z @ Z.T  # (H, H)
    C = C + torch.diag(dead.to(C.dtype))  # a dead unit's diagonal 1: the identity row
    return C, dead


def _check_states(states) -> None:
    owner = "hidden_covariance_of_states"
    if not isinstance(states, torch.Tensor):
        raise TypeError(f"{owner}: states must be a torch.Tensor (H, B*T), got "
                        f"{type(states).__name__}")
    if states.dim() != 2 or states.shape[0] < 1 or states.shape[1] < 2:
        raise ValueError(f"{owner}: states must have shape (H, B*T) with H >= 1 units and "
                         f"B*T >= 2 columns (a correlation needs two samples), got "
                         f"{tuple(states.shape)}")
    if not states.is_floating_point():
        raise TypeError(f"{owner}: states must be a real floating tensor, got {states.dtype}")
    if not bool(torch.isfinite(states).all()):
        raise ValueError(f"{owner}: states must be finite, got NaN or inf (the model diverged "
                         f"on this batch)")


def hidden_covariance_details(states: torch.Tensor, k: float = K) -> CovarianceScore:
    """The score of ``states: (H, B·T)`` with everything behind it (``CovarianceScore``)."""
    _check_states(states)
    check_number("hidden_covariance_of_states", "k", k, 0, low_open=True)
    C, dead = correlation_matrix(states)
    lam = torch.linalg.eigvalsh(C)  # (H,), ascending; C is symmetric PSD
    # eigvalsh may return -1e-16 for an exact 0: clamp so log(λ + k) stays finite for tiny k
    lam = lam.clamp_min(0.0)
    score = -float((torch.log(lam + k) + 1.0 / (lam + k)).sum())
    H, N = states.shape
    return CovarianceScore(score, score / H, lam, H, N, int(dead.sum()))


def hidden_covariance_of_states(states: torch.Tensor, k: float = K) -> float:
    """``-Σ_i [log(λ_i + k) + 1/(λ_i + k)]`` for the eigenvalues ``λ`` of the correlation matrix
    of the rows of ``states: (H, B·T)`` (units × (sample, time) pairs); float64 throughout."""
    return hidden_covariance_details(states, k).score


# ---- models -------------------------------------------------------------------------------------

def recurrent_layers(model: nn.Module) -> List[Recurrent]:
    """The ``rnnlab.Recurrent`` layers of ``model`` in definition order (the model itself if it
    is one): the layers ``layer=`` counts (a bidirectional block holds two, forward first)."""
    return [m for m in model.modules() if isinstance(m, Recurrent)]


def _inputs(batch) -> torch.Tensor:
    """The inputs of ``batch``: a tensor, or the first entry of ``task.sample``'s triple."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"hidden_covariance: batch must be the model's input tensor or a "
                        f"(inputs, targets, mask) tuple, got {type(batch).__name__}")
    return batch


def hidden_states(model: nn.Module, batch, layer: int = 0) -> torch.Tensor:
    """Layer ``layer``'s per-step outputs ``(B, T, H_out)`` on ``batch``, with ``model`` in
    eval mode and no gradients (each module's train/eval mode is restored afterwards). A layer
    called more than once in one forward (a shared block) gives its first call."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"hidden_covariance: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    inputs = _inputs(batch)
    layers = recurrent_layers(model)
    if not layers:
        raise ValueError(f"hidden_covariance: model {type(model).__name__} has no "
                         f"rnnlab.Recurrent layer whose hidden states could be read (an "
                         f"attention-only model has none)")
    check_int("hidden_covariance", "layer", layer, 0, len(layers) - 1)
    caught: list = []

    def hook(module, args, output):
        if not caught:
            caught.append(output[0] if isinstance(output, tuple) else output)

    modes = [(m, m.training) for m in model.modules()]
    handle = layers[layer].register_forward_hook(hook)
    try:
        model.eval()
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
        for m, training in modes:
            m.training = training
    return caught[0]


def hidden_covariance(model: nn.Module, batch, layer: int = 0, k: float = K) -> float:
    """The hidden-covariance score of ``model`` at its current weights (at initialisation for
    architecture search) on ``batch`` (``(B, T)`` tokens or ``(B, T, D)`` reals, or a
    ``task.sample`` triple): layer ``layer``'s outputs ``(B, T, H)`` reshaped to ``(H, B·T)``,
    then ``hidden_covariance_of_states``. Higher is better."""
    return hidden_covariance_details(states_matrix(hidden_states(model, batch, layer)), k).score


def states_matrix(y: torch.Tensor) -> torch.Tensor:
    """``(B, T, H)`` per-step outputs -> ``(H, B·T)``: rows are units, columns (sample, time)."""
    return y.reshape(-1, y.shape[-1]).T  # (B, T, H) -> (B*T, H) -> (H, B*T)


# ---- statistics for the search study ------------------------------------------------------------

def kendall_tau_bootstrap(x: Sequence[float], y: Sequence[float], resamples: int = 1000,
                          seed: int = 0, level: float = 0.95) -> dict:
    """Kendall's τ-b of ``x`` and ``y`` (``scipy.stats.kendalltau``) with its p-value and a
    percentile bootstrap interval over ``resamples`` resamplings of the pairs (architectures).
    Resamples in which either side is constant have no τ and are skipped (``used`` counts the
    rest)."""
    import numpy as np
    from scipy.stats import kendalltau
    owner = "kendall_tau_bootstrap"
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.ndim != 1 or a.shape != b.shape or a.size < 3:
        raise ValueError(f"{owner}: x and y must be 1-D of one length >= 3, got shapes "
                         f"{a.shape} and {b.shape}")
    check_int(owner, "resamples", resamples, 1)
    check_number(owner, "level", level, 0, 1, low_open=True, high_open=True)
    tau, p = kendalltau(a, b)
    rng = np.random.default_rng(seed)
    taus = []
    for _ in range(resamples):
        idx = rng.integers(0, a.size, a.size)
        t = kendalltau(a[idx], b[idx])[0]
        if not math.isnan(t):
            taus.append(t)
    lo, hi = (np.quantile(taus, [(1 - level) / 2, (1 + level) / 2]).tolist()
              if taus else (math.nan, math.nan))
    return {"tau": float(tau), "p_value": float(p), "ci": [lo, hi], "level": level,
            "resamples": resamples, "used": len(taus), "n": int(a.size)}

