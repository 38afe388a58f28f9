"""PV-RNN (Ahmadi & Tani 2019): a predictive-coding-inspired variational RNN.

A stack of MTRNN layers (leaky integrators, one time constant τ per layer; layer 0 is the
fastest, next to the output, the last layer is the slowest, at the top). Each layer carries a
stochastic latent z per step:

- MTRNN unit: ``u_t = (1 − 1/τ) u_{t−1} + (1/τ)(W_dd d_{t−1} + W_zd z_t + W_top d^{l+1}_t + b)``,
  ``d_t = tanh(u_t)``; the top-down input ``d^{l+1}_t`` is the layer above at the same step
  (so a step runs the layers from the top down), absent in the top layer.
- Prior: ``N(tanh(W_μ d_{t−1}), exp(W_σ d_{t−1}))``, and ``N(0, I)`` at the first step.
- Posterior: ``N(tanh(A^μ_t), exp(A^σ_t))``. The A are free *adaptive variables*, one set per
  sequence and step (``AdaptiveVariables``); there is no encoder: the observations reach the
  latents only through the gradient of the loss.
- Output: ``x̂_t = W_out d^0_t`` (linear; the trajectories are positions).
- Loss: mean over batch and steps of ``‖x_t − x̂_t‖² + Σ_l w_l KL(q‖p)_l / dim z_l`` (``loss``).
  The meta-prior w trades fitting each sequence through its own posterior (small w) against
  keeping the posterior on the prior, so the prior must carry the structure (large w).

Error regression (inference of the posterior on a sliding window with frozen weights) lives in
``pvrnn_regression``.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..checks import check_choice, check_int, check_number

Window = List[Tuple[torch.Tensor, torch.Tensor]]  # per layer (A^μ, A^σ), each (B, T, Z_l)
NOISE = ("sample", "mean")


class PVState(NamedTuple):
    """The deterministic state after a step: per layer ``u`` and ``d = tanh(u)``, each (B, H_l).
    ``None`` in its place means "the sequence starts here" (zero state, prior N(0, I))."""
    u: Tuple[torch.Tensor, ...]
    d: Tuple[torch.Tensor, ...]


class PVRun(NamedTuple):
    out: torch.Tensor  # (B, T, O) predicted observations
    kl: List[torch.Tensor]  # per layer (B, T): KL(q‖p) / dim z (zeros when run on the prior)
    prior_mu: List[torch.Tensor]  # per layer (B, T, Z_l): the prior's mean at each step
    prior_sigma: List[torch.Tensor]  # per layer (B, T, Z_l): the prior's std at each step
    state: PVState  # the state after the last step


def gaussian_kl(mu_q: torch.Tensor, sigma_q: torch.Tensor, mu_p: torch.Tensor,
                sigma_p: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(μq, σq²) ‖ N(μp, σp²)) = log(σp/σq) + (σq² + (μq − μp)²)/(2σp²) − ½."""
    return (torch.log(sigma_p) - torch.log(sigma_q)
            + (sigma_q ** 2 + (mu_q - mu_p) ** 2) / (2 * sigma_p ** 2) - 0.5)


class MTRNNLayer(nn.Module):
    """One layer's weights: the leaky-integrator update and the prior's two heads."""

    def __init__(self, d_size: int, z_size: int, top_size: int, tau: float):
        super().__init__()
        self.d_size, self.z_size, self.tau = d_size, z_size, float(tau)
        self.w_dd = nn.Linear(d_size, d_size)  # recurrent weights and the bias b
        self.w_zd = nn.Linear(z_size, d_size, bias=False)
        self.w_top = nn.Linear(top_size, d_size, bias=False) if top_size else None
        self.prior_mu = nn.Linear(d_size, z_size)
        self.prior_sigma = nn.Linear(d_size, z_size)

    def external(self, z: torch.Tensor, top: Optional[torch.Tensor]) -> torch.Tensor:
        """The drive from outside the layer, ``W_zd z + W_top d^{l+1} + b``: (..., H), for one
        step (B, ·) or a whole sequence (B, T, ·) at once."""
        drive = self.w_zd(z) + self.w_dd.bias
        return drive if self.w_top is None else drive + self.w_top(top)

    def update(self, u: torch.Tensor, d: torch.Tensor, drive: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One MTRNN step from ``external``'s drive -> (u_t, d_t), each (B, H); with τ = 1 a
        plain tanh RNN step."""
        return self.leak(u, d, drive / self.tau, self.w_dd.weight.t() / self.tau)

    def leak(self, u, d, drive_over_tau, w_over_tau) -> Tuple[torch.Tensor, torch.Tensor]:
        """``update`` with the 1/τ already folded into the drive and ``W_dd^T`` (a sequence
        folds them once): ``u_t = (1 − 1/τ) u + d W_dd^T/τ + drive/τ`` in two fused ops."""
        u = torch.add(torch.addmm(drive_over_tau, d, w_over_tau), u, alpha=1 - 1 / self.tau)
        return u, torch.tanh(u)

    def prior(self, d: Optional[torch.Tensor], batch: int, like: torch.Tensor
              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(μp, σp), each (B, Z), from the previous ``d``; N(0, I) at the first step (d None)."""
        if d is None:
            zeros = like.new_zeros(batch, self.z_size)
            return zeros, torch.ones_like(zeros)
        return torch.tanh(self.prior_mu(d)), torch.exp(self.prior_sigma(d))


class PVRNN(nn.Module):
    """PV-RNN generator: ``forward(posterior, ...) -> PVRun``.

    Args:
        output_size: O, the width of an observation.
        d_sizes: H_l, deterministic units per layer, bottom (fast) to top (slow).
        z_sizes: Z_l, latent units per layer.
        taus: τ_l ≥ 1, time constants per layer (1: a plain RNN; larger: slower).
    """

    def __init__(self, output_size: int, d_sizes: Sequence[int] = (32, 16),
                 z_sizes: Sequence[int] = (3, 2), taus: Sequence[float] = (2.0, 8.0)):
        super().__init__()
        owner = "PVRNN"
        check_int(owner, "output_size", output_size, 1)
        d_sizes, z_sizes, taus = list(d_sizes), list(z_sizes), list(taus)
        if not d_sizes or len(z_sizes) != len(d_sizes) or len(taus) != len(d_sizes):
            raise ValueError(f"{owner}: d_sizes, z_sizes and taus must be non-empty and of one "
                             f"length (one entry per layer), got {len(d_sizes)}, "
                             f"{len(z_sizes)} and {len(taus)}")
        for name, values in (("d_sizes", d_sizes), ("z_sizes", z_sizes)):
            for v in values:
                check_int(owner, name, v, 1)
        for tau in taus:
            check_number(owner, "taus", tau, 1.0)
        tops = d_sizes[1:] + [0]
        self.layers = nn.ModuleList(MTRNNLayer(d, z, top, tau)
                                    for d, z, top, tau in zip(d_sizes, z_sizes, tops, taus))
        self.readout = nn.Linear(d_sizes[0], output_size)
        self.output_size = output_size

    @property
    def z_sizes(self) -> List[int]:
        return [layer.z_size for layer in self.layers]

    def forward(self, posterior: Optional[Window] = None, steps: Optional[int] = None,
                state: Optional[PVState] = None, noise: str = "sample",
                generator: Optional[torch.Generator] = None, batch: int = 1) -> PVRun:
        """Run ``T`` steps from ``state`` (None: the sequence start).

        ``posterior``: per layer (A^μ, A^σ), each (B, T, Z_l): z comes from the posterior and
        the KL is measured; None: z comes from the prior for ``steps`` steps (``batch`` rows).
        ``noise``: "sample" draws z = μ + σ ε (reparameterised; ε from ``generator``), "mean"
        takes z = μ."""
        check_choice("PVRNN.forward", "noise", noise, NOISE)
        batch, steps = self._sizes(posterior, steps, state, batch)
        if posterior is None:
            return self._prior_run(steps, state, noise, generator, batch)
        return self._posterior_run(posterior, state, noise, generator)

    def _zeros(self, batch: int, i: int) -> torch.Tensor:
        return self.readout.weight.new_zeros(batch, self.layers[i].d_size)

    def _noise(self, mu, sigma, noise, generator) -> torch.Tensor:
        if noise == "mean":
            return mu
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        return mu + sigma * eps.to(mu.device)

    def _posterior_run(self, posterior: Window, state, noise, generator) -> PVRun:
        """With the posterior known in advance, z needs no state: each layer runs its whole
        sequence at once, from the top down (a layer only hears the layer above), and the
        priors and KL are computed afterwards from the stacked states."""
        batch, steps = posterior[0][0].shape[:2]
        ds, us = [None] * len(self.layers), [None] * len(self.layers)
        kls, mus, sigmas = [], [], []
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            mu, sigma = torch.tanh(posterior[i][0]), torch.exp(posterior[i][1])  # (B, T, Z)
            top = ds[i + 1] if i + 1 < len(self.layers) else None
            drive = layer.external(self._noise(mu, sigma, noise, generator), top)  # (B, T, H)
            drive, weight = drive / layer.tau, layer.w_dd.weight.t() / layer.tau
            u = self._zeros(batch, i) if state is None else state.u[i]
            d0 = self._zeros(batch, i) if state is None else state.d[i]
            d, seq = d0, []
            for t in range(steps):
                u, d = layer.leak(u, d, drive[:, t], weight)
                seq.append(d)
            ds[i], us[i] = torch.stack(seq, 1), u  # (B, T, H)
            previous = torch.cat([d0.unsqueeze(1), ds[i][:, :-1]], 1)  # d_{t-1}: (B, T, H)
            mu_p, sigma_p = torch.tanh(layer.prior_mu(previous)), \
                torch.exp(layer.prior_sigma(previous))
            if state is None:  # the first step's prior is N(0, I)
                first = torch.zeros_like(mu_p[:, :1])
                mu_p = torch.cat([first, mu_p[:, 1:]], 1)
                sigma_p = torch.cat([torch.ones_like(first), sigma_p[:, 1:]], 1)
            kls.insert(0, gaussian_kl(mu, sigma, mu_p, sigma_p).sum(-1) / layer.z_size)
            mus.insert(0, mu_p)
            sigmas.insert(0, sigma_p)
        return PVRun(out=self.readout(ds[0]), kl=kls, prior_mu=mus, prior_sigma=sigmas,
                     state=PVState(tuple(us), tuple(d[:, -1] for d in ds)))

    def _prior_run(self, steps: int, state, noise, generator, batch: int) -> PVRun:
        """Generation: z comes from the prior, which needs the previous state, so this runs
        step by step with the layers from the top down within each step."""
        n = len(self.layers)
        u = [self._zeros(batch, i) for i in range(n)] if state is None else list(state.u)
        d = None if state is None else list(state.d)
        outs, mus, sigmas = [], [[] for _ in range(n)], [[] for _ in range(n)]
        for _ in range(steps):
            d_new = [None] * n
            for i in reversed(range(n)):
                layer = self.layers[i]
                mu_p, sigma_p = layer.prior(None if d is None else d[i], batch,
                                            self.readout.weight)
                z = self._noise(mu_p, sigma_p, noise, generator)
                top = d_new[i + 1] if i + 1 < n else None
                d_prev = self._zeros(batch, i) if d is None else d[i]
                u[i], d_new[i] = layer.update(u[i], d_prev, layer.external(z, top))
                mus[i].append(mu_p)
                sigmas[i].append(sigma_p)
            d = d_new
            outs.append(self.readout(d[0]))
        zeros = self.readout.weight.new_zeros(batch, steps)
        return PVRun(out=torch.stack(outs, 1), kl=[zeros] * n,
                     prior_mu=[torch.stack(m, 1) for m in mus],
                     prior_sigma=[torch.stack(s, 1) for s in sigmas],
                     state=PVState(tuple(u), tuple(d)))

    def _sizes(self, posterior, steps, state, batch) -> Tuple[int, int]:
        owner = "PVRNN.forward"
        if posterior is None:
            check_int(owner, "steps", steps, 1)
            check_int(owner, "batch", batch, 1)
            return (state.d[0].shape[0] if state is not None else batch), steps
        if len(posterior) != len(self.layers):
            raise ValueError(f"{owner}: posterior must hold one (A_mu, A_sigma) pair per layer "
                             f"({len(self.layers)}), got {len(posterior)}")
        b, t = posterior[0][0].shape[:2]
        for i, (a_mu, a_sigma) in enumerate(posterior):
            want = (b, t, self.layers[i].z_size)
            if tuple(a_mu.shape) != want or tuple(a_sigma.shape) != want:
                raise ValueError(f"{owner}: posterior[{i}] must be two tensors of shape (B, T, "
                                 f"Z)={want}, got {tuple(a_mu.shape)} and "
                                 f"{tuple(a_sigma.shape)}")
        return b, t


class AdaptiveVariables(nn.Module):
    """The posterior's free parameters A^μ, A^σ: one (n, T, Z_l) pair per layer, one row per
    training sequence (zero: the posterior starts at N(0, I))."""

    def __init__(self, z_sizes: Sequence[int], n: int, steps: int):
        super().__init__()
        check_int("AdaptiveVariables", "n", n, 1)
        check_int("AdaptiveVariables", "steps", steps, 1)
        self.a_mu = nn.ParameterList(nn.Parameter(torch.zeros(n, steps, z)) for z in z_sizes)
        self.a_sigma = nn.ParameterList(nn.Parameter(torch.zeros(n, steps, z)) for z in z_sizes)

    def window(self, rows: Optional[torch.Tensor] = None) -> Window:
        """Per layer (A^μ, A^σ) for the sequences ``rows`` (all when None), each (B, T, Z)."""
        if rows is None:
            return list(zip(self.a_mu, self.a_sigma))
        return [(m[rows], s[rows]) for m, s in zip(self.a_mu, self.a_sigma)]


def meta_prior(w: Union[float, Sequence[float]], n_layers: int) -> List[float]:
    """``w`` as one non-negative weight per layer (a number applies to every layer)."""
    ws = [w] * n_layers if not isinstance(w, (list, tuple)) else list(w)
    if len(ws) != n_layers:
        raise ValueError(f"loss: w must be a number or one weight per layer ({n_layers}), "
                         f"got {len(ws)} weights")
    for v in ws:
        check_number("loss", "w", v, 0)
    return ws


def loss(run: PVRun, target: torch.Tensor, w: Union[float, Sequence[float]]
         ) -> Tuple[torch.Tensor, dict]:
    """Prediction error + meta-prior-weighted KL -> (loss, {"prediction", "kl": per layer}).

    ``target``: (B, T, O) the observations; the prediction error is ``‖x_t − x̂_t‖²`` summed over
    O, and it and each layer's KL / dim z are averaged over batch and steps."""
    if tuple(target.shape) != tuple(run.out.shape):
        raise ValueError(f"loss: target must have the output's shape (B, T, O)="
                         f"{tuple(run.out.shape)}, got {tuple(target.shape)}")
    ws = meta_prior(w, len(run.kl))
    prediction = ((run.out - target) ** 2).sum(-1).mean()
    kls = [k.mean() for k in run.kl]
    total = prediction + sum(wl * k for wl, k in zip(ws, kls))
    return total, {"prediction": prediction.detach(), "kl": [k.detach() for k in kls]}
