"""The largest Lyapunov exponent (LLE) of a cell's state dynamics, and what it predicts for Newton.

The state map ``h_t = step(u_t, h_{t-1})`` (``u = cell.project(x)``) has Jacobians
``J_t = dh_t/dh_{t-1}``. Along the trajectory driven by ``x``, the LLE is the growth rate of a
generic tangent vector, ``lambda = lim (1/T) log ||J_T ... J_1 v||``: below 0 the cell forgets
perturbations (predictable), above 0 it amplifies them (chaotic). ParaRNN/DEER-style Newton solvers
converge in a few iterations in the first case and need more and more as T grows in the second
(Gonzalez et al., "Predictability enables parallelization of nonlinear state space models",
NeurIPS 2025). ``largest_lyapunov_exponent`` measures lambda by Benettin's method;
``predicted_newton_iterations`` turns it into an expected iteration count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.func import jvp

from ..cells.base import Cell, State, as_tuple
from ..checks import check_int, check_number, is_number
from ..errors import OptionTypeError

Leaves = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class LyapunovEstimate:
    """What ``largest_lyapunov_exponent`` measured.

    - ``exponent``: the LLE per time step, natural log, averaged over the batch (``-inf`` when a
      tangent vector was mapped to exactly zero, e.g. a zero Jacobian).
    - ``per_sequence``: the estimate for each sequence, ``(B,)`` (float64; float32 on MPS).
    - ``steps``: the number of steps averaged over, ``T - burn_in``.
    """
    exponent: float
    per_sequence: torch.Tensor
    steps: int


def _check_args(cell, x, burn_in, renorm_every) -> None:
    """Validate the public arguments; ``x: (B, T, D)``."""
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be an rnnlab Cell (rnnlab.cells.get(...)), "
                        f"got {type(cell).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor (B, T, D), got {type(x).__name__}")
    if x.dim() != 3 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must have shape (B, T, D) with B, T >= 1, got {tuple(x.shape)}")
    if x.shape[2] != cell.input_size:
        raise ValueError(f"x must have shape (B, T, D) with D = cell.input_size = "
                         f"{cell.input_size}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a real floating tensor, got dtype {x.dtype}")
    T = x.shape[1]
    owner = "largest_lyapunov_exponent"
    check_int(owner, "burn_in", burn_in, 0)
    if burn_in >= T:
        raise ValueError(f"{owner}: burn_in must be < T = x.shape[1] = {T} (at least one step "
                         f"must be averaged), got {burn_in!r}")
    check_int(owner, "renorm_every", renorm_every, 1)


def _initial_leaves(cell: Cell, initial_state, batch: int, dtype, device) -> tuple[Leaves, bool]:
    """The initial state as a tuple of leaves ``(B, ...)`` and whether the cell's state is a
    tuple; the zero state (``cell.init_state``) when ``initial_state`` is None."""
    state = cell.init_state(batch, dtype, device) if initial_state is None else initial_state
    is_tuple = isinstance(state, tuple)
    leaves = as_tuple(state)
    if len(leaves) == 0:
        raise ValueError("initial_state must be a tensor or a non-empty tuple of tensors")
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"initial_state must be a tensor or a tuple of tensors; leaf {i} is "
                            f"a {type(leaf).__name__}")
        if leaf.dim() < 1 or leaf.shape[0] != batch:
            raise ValueError(f"initial_state leaf {i} must have shape (B, ...) with B = "
                             f"x.shape[0] = {batch}, got {tuple(leaf.shape)}")
        if not (leaf.is_floating_point() or leaf.is_complex()):
            raise TypeError(f"initial_state leaf {i} must be a real or complex floating tensor, "
                            f"got dtype {leaf.dtype}")
    return tuple(leaf.detach() for leaf in leaves), is_tuple


def _sq_norm(vs: Leaves, acc: torch.dtype) -> torch.Tensor:
    """Squared norm of each sample's tangent over all leaves, ``(B,)``. A complex leaf counts its
    real and imaginary parts as separate real coordinates: ``|re|^2 + |im|^2``."""
    total = None
    for v in vs:
        r = torch.view_as_real(v) if v.is_complex() else v
        s = r.to(acc).pow(2).flatten(1).sum(1)  # (B, ...) -> (B,)
        total = s if total is None else total + s
    return total


def _renormalize(vs: Leaves, acc: torch.dtype) -> tuple[torch.Tensor, Leaves]:
    """Log norm of each sample's tangent ``(B,)``, and the tangent scaled to unit norm. A zero
    tangent gives ``-inf`` and stays zero (no NaN)."""
    norm = _sq_norm(vs, acc).sqrt()  # (B,)
    scale = torch.where(norm > 0, 1.0 / norm, torch.zeros_like(norm))  # (B,), in acc
    out = tuple((v.to(torch.promote_types(v.dtype, acc)) * scale.view(-1, *([1] * (v.dim() - 1))))
                .to(v.dtype) for v in vs)
    return norm.log(), out


def _random_unit_tangent(leaves: Leaves, acc: torch.dtype, generator) -> Leaves:
    """A random direction for each sample, unit norm over all leaves, same layout as the state."""
    vs = tuple(torch.randn(leaf.shape, dtype=leaf.dtype, device=leaf.device, generator=generator)
               for leaf in leaves)
    return _renormalize(vs, acc)[1]


def _tangent_step(cell: Cell, u_t: torch.Tensor, leaves: Leaves, vs: Leaves,
                  is_tuple: bool) -> tuple[Leaves, Leaves]:
    """One step of the state and of its tangent: ``h_t = step(u_t, h_{t-1})`` and
    ``v_t = J_t v_{t-1}`` by a forward-mode JVP; ``u_t: (B, P)``, leaves and tangents ``(B, ...)``.
    """
    def f(*hs):
        return as_tuple(cell.step(u_t, hs if is_tuple else hs[0]))
    new, tangent = jvp(f, leaves, vs)
    if len(new) != len(leaves) or any(a.shape != b.shape for a, b in zip(new, leaves)):
        raise ValueError(f"cell.step must return a state of the input's layout "
                         f"{[tuple(h.shape) for h in leaves]}, got {[tuple(h.shape) for h in new]}")
    return new, tangent


def _check_finite(per_sequence: torch.Tensor, leaves: Leaves, renorm_every: int) -> None:
    """Raise if the estimate is NaN or +inf, saying whether the state or the tangent broke."""
    if not bool(torch.isnan(per_sequence).any() | torch.isposinf(per_sequence).any()):
        return
    if not all(bool(torch.isfinite(h).all()) for h in leaves):
        raise FloatingPointError("largest_lyapunov_exponent: the state trajectory became "
                                 "non-finite (the cell overflowed on x); the exponent is undefined")
    raise FloatingPointError(f"largest_lyapunov_exponent: the tangent vector overflowed between "
                             f"renormalizations; lower renorm_every (got {renorm_every})")


def largest_lyapunov_exponent(cell: Cell, x: torch.Tensor, initial_state: State | None = None,
                              burn_in: int = 0, renorm_every: int = 1, *,
                              generator: torch.Generator | None = None) -> LyapunovEstimate:
    """Estimate the LLE of ``h_t = cell.step(u_t, h_{t-1})`` along the trajectory driven by x.

    Benettin's method: run the trajectory (no autograd graph), push a random unit tangent vector
    through the step Jacobians with ``torch.func.jvp`` (w.r.t. the state only; the state is one
    flat vector per sample over all its leaves, so LSTM's ``(h, c)`` is one 2H-vector), renormalize
    it every ``renorm_every`` steps and add up the log norms; the first ``burn_in`` steps (which
    turn the random vector towards the most expanding direction) are run but not counted.
    Complex states are supported: real and imaginary parts count as separate real coordinates (a
    JVP through a non-holomorphic step is the real-linear map, so this is exact).

    Args:
        cell: an rnnlab ``Cell``; its ``project`` and ``step`` are used, nothing else.
        x: inputs ``(B, T, D)``, ``D = cell.input_size``, in the cell's dtype.
        initial_state: ``h_0`` (a tensor ``(B, H)`` or a tuple of ``(B, ...)``); default the zero
            state ``cell.init_state(B, ...)``.
        burn_in: steps run before averaging, ``0 <= burn_in < T``.
        renorm_every: steps between renormalizations (1 is safest; larger saves a little work but
            the tangent norm may over/underflow in between).
        generator: optional ``torch.Generator`` for the random initial tangent.

    Returns:
        ``LyapunovEstimate(exponent, per_sequence (B,), steps = T - burn_in)``, per step, natural
        log. The finite-T bias is about ``log(cosine of v_0 with the expanding direction) / steps``;
        a ``burn_in`` of a few dozen steps removes most of it.

    Raises:
        TypeError / ValueError naming ``cell``, ``x``, ``initial_state``, ``burn_in`` or
        ``renorm_every``; FloatingPointError if the state or the tangent becomes non-finite.
    """
    _check_args(cell, x, burn_in, renorm_every)
    B, T, _ = x.shape
    acc = torch.float32 if x.device.type == "mps" else torch.float64
    with torch.no_grad():
        u = cell.project(x)  # (B, T, D) -> (B, T, P)
        state_dtype = u.dtype if u.is_floating_point() else x.dtype
        leaves, is_tuple = _initial_leaves(cell, initial_state, B, state_dtype, x.device)
        vs = _random_unit_tangent(leaves, acc, generator)
        log_sum = torch.zeros(B, dtype=acc, device=x.device)  # (B,)
        since = 0
        for t in range(T):
            leaves, vs = _tangent_step(cell, u[:, t], leaves, vs, is_tuple)
            since += 1
            if since == renorm_every or t + 1 == burn_in or t + 1 == T:
                log_norm, vs = _renormalize(vs, acc)  # (B,)
                if t + 1 > burn_in:
                    log_sum = log_sum + log_norm
                since = 0
    steps = T - burn_in
    per_sequence = log_sum / steps  # (B,)
    _check_finite(per_sequence, leaves, renorm_every)
    return LyapunovEstimate(exponent=float(per_sequence.mean()), per_sequence=per_sequence,
                            steps=steps)


def _quadratic_iterations(tol: float) -> int:
    """Newton iterations from an O(1) error to ``tol`` at a quadratic rate: errors
    ``e_k = exp(-2^k)`` reach tol once ``2^k >= log(1/tol)``."""
    return max(1, math.ceil(math.log2(math.log(1.0 / tol))))


def _check_predictor_args(exponent, steps, tol) -> None:
    """Validate ``predicted_newton_iterations``'s arguments."""
    owner = "predicted_newton_iterations"
    # -inf is an exponent (a tangent vector mapped to zero), which check_number's open infinite
    # bounds would refuse; +inf and NaN are not
    if not is_number(exponent) or math.isnan(exponent) or exponent == math.inf:
        error = ValueError if is_number(exponent) else OptionTypeError  # a wrong type: both
        raise error(f"{owner}: exponent must be a real number < +inf (the LLE per step), "
                    f"got {exponent!r}")
    check_int(owner, "steps", steps, 1)
    check_number(owner, "tol", tol, 0, 1, low_open=True, high_open=True)


def predicted_newton_iterations(exponent, steps: int, tol: float = 1e-5) -> int:
    """A heuristic prediction of the Newton (DEER/ParaRNN) iteration count for a cell whose LLE is
    ``exponent`` on sequences of ``steps`` (T) steps, stopping at tolerance ``tol``.

    ``k = min(T, k0)`` when LLE <= 0 and ``k = min(T, ceil(k0 exp(LLE T)))`` when LLE > 0, with
    ``k0 = ceil(log2(log(1/tol)))``. Non-decreasing in T and in LLE; at most ``k0`` for LLE <= 0.
    A predictor of the order of magnitude, not a guarantee. Reasoning:

    - Exact arithmetic caps the count at T: after k iterations the first k states are exact.
    - Quadratic phase: where the linearization is good, Newton squares the error each iteration;
      from an O(1) error, errors ``exp(-2^k)`` reach tol after ``k0`` iterations (4 at
      tol = 1e-5, 5 at 1e-8; ParaRNN reports 3-4).
    - LLE <= 0 (predictable): an error at step s is damped by ``exp(LLE (t - s))`` by step t, so
      the linearization is good everywhere at once and the count is ``k0``, whatever T.
    - LLE > 0 (chaotic): Newton's linear solves carry each step's error forward through products
      of Jacobians whose norms grow like ``exp(LLE (t - s))``, so the whole sequence amplifies by
      up to ``exp(LLE T)``; the merit function's conditioning degrades like ``exp(2 LLE T)``
      (Gonzalez et al. 2025). We inflate the quadratic count by the amplification,
      ``k0 exp(LLE T)``, which reaches the cap T once ``LLE T >~ log(T / k0)``.

    The inflation is an empirical choice, checked on rnnlab's Newton engine (fp32, tol 1e-5,
    ``f(0, u)`` guess; ``rnn_tanh`` H = 32 with ``weight_hh`` x3, x5, x20, LLE 0.06, 0.23, 0.59,
    T = 8..128): measured counts were 0.4-1x this prediction, never above it. A gentler "window"
    model (each iteration fixes the ``log(1/tol) / LLE`` steps over which a tol-sized error grows
    to O(1)) predicted 4 where 26-50 were measured: Newton's Jacobians are taken along its
    iterates, where saturating cells expand more than along the true trajectory. Known
    optimism: an LLE just below 0 can still need a count growing slowly with T (10 at
    LLE = -0.1, T = 512, vs k0 = 4). Initial guess, damping, quasi-Newton (diagonal) Jacobians
    and the stopping rule all move the real count.

    Args:
        exponent: the LLE per step (a float, ``-inf`` allowed, or a ``LyapunovEstimate``).
        steps: sequence length T, an int >= 1.
        tol: the solver's tolerance, ``0 < tol < 1``.
    """
    if isinstance(exponent, LyapunovEstimate):
        exponent = exponent.exponent
    _check_predictor_args(exponent, steps, tol)
    k0 = _quadratic_iterations(tol)
    if exponent <= 0:
        return min(steps, k0)
    if exponent * steps >= math.log(steps / k0):  # k0 exp(LLE T) >= T: the cap (no overflow)
        return steps
    return min(steps, math.ceil(k0 * math.exp(exponent * steps)))
