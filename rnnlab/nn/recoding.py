"""``Recoding(cell, head)``: a recurrent cell whose state is corrected by a gradient step after
every time step (Ulmer, Hupkes & Bruni, "Recoding latent sentence representations: dynamic
gradient-based activation modification in RNNs", arXiv 2101.00674).

After the step ``h_t = cell.step(u_t, h_{t-1})`` the wrapper predicts ``logits_t =
head(cell.readout(h_t, u_t))``, measures an error signal ``delta_t`` (one number per sequence)
and recodes the state, ``h_t <- h_t - step_size * d delta_t / d h_t`` (``steps`` times), before
the recurrence continues from the recoded state. Error signals (``SIGNALS``):

- ``"entropy"``: the predictive entropy ``-sum_v p_v log p_v`` (needs no label);
- ``"surprisal"``: the gold surprisal ``-log p(target_t)`` (needs ``targets``);
- ``"mc_dropout"``: the predictive variance under MC dropout, ``sum_v Var_k p_v^(k)`` over
  ``samples`` dropout masks on the readout (needs no label; stochastic).

Every state tensor is recoded (an LSTM's ``h`` and ``c``), each by the gradient that flows into it
in the step's graph: a tensor that feeds another one (``h = o * tanh(c)``) gets the total
derivative, as the paper's hooks do (on a second step of ``steps > 1`` the recoded tensors are
separate, and ``c`` gets only its direct gradient). Which logits the step returns: with a
label-free signal and ``redecode=True`` (the paper's code) those of the recoded state; with
``"surprisal"`` always those of the state before recoding (the label has to stay unseen by the
prediction it scores), so in a language model the gold character only reaches the state after
it was predicted.

Training through recoding: the recoded state is in the graph. With ``create_graph=True`` the
recoding gradient is itself differentiated (second order), so the loss sees how the weights
move ``d delta/d h``; ``create_graph=False`` treats the recoding gradient as a constant
(first order, cheaper). In ``torch.no_grad()`` the wrapper still computes its gradient (under
``enable_grad``) and returns detached tensors: recoding at inference.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from ..cells.base import State, as_tuple
from ..checks import check_bool, check_choice, check_int, check_number

SIGNALS = ("entropy", "surprisal", "mc_dropout")
CELL_METHODS = ("project", "step", "readout", "init_state")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Predictive entropy in nats of ``logits (B, V)``: ``(B,)``."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def surprisal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-log p(target)`` in nats, ``logits (B, V)``, ``target (B,)``: ``(B,)``."""
    return -torch.log_softmax(logits, dim=-1).gather(-1, target[:, None])[:, 0]


def mc_variance(head: nn.Module, y: torch.Tensor, samples: int, p: float) -> torch.Tensor:
    """Predictive variance under MC dropout: ``sum_v Var_k softmax(head(dropout_k(y)))_v``
    over ``samples`` masks of rate ``p`` on ``y (B, H)``: ``(B,)``."""
    ys = y.unsqueeze(0).expand(samples, *y.shape)  # (B, H) -> (K, B, H)
    probs = torch.softmax(head(nn.functional.dropout(ys, p, training=True)), dim=-1)  # (K, B, V)
    return probs.var(dim=0, unbiased=False).sum(-1)


class Recoding(nn.Module):
    """Recode the state of ``cell`` after each step (module docstring).

    Args:
        cell: a rnnlab cell (``project``, ``step``, ``readout``, ``init_state``) with
            floating-point state tensors.
        head: module from the readout ``(B, H_out)`` to logits ``(B, V)``.
        signal: one of ``SIGNALS``.
        step_size: the recoding step ``alpha >= 0`` (0: the plain cell, exactly).
        steps: gradient steps per time step (>= 1); each re-predicts from the recoded state.
        create_graph: differentiate through the recoding gradient when training (second
            order); False: first order.
        redecode: with ``"entropy"`` / ``"mc_dropout"``, return the logits of the recoded state.
        dropout, samples: MC-dropout rate in (0, 1) and number of masks (>= 2).

    Shapes: ``forward(x (B, T, ...), state=None, targets=None) -> (logits (B, T, V), state)``;
    ``step(u_t (B, P), h, target=None) -> (logits (B, V), h)``. ``last_delta``: the mean error
    signal of the last ``forward`` before recoding, and ``last_delta_after`` after it.
    """

    def __init__(self, cell: nn.Module, head: nn.Module, signal: str = "entropy",
                 step_size: float = 0.1, steps: int = 1, create_graph: bool = True,
                 redecode: bool = True, dropout: float = 0.3, samples: int = 8):
        super().__init__()
        missing = [m for m in CELL_METHODS if not callable(getattr(cell, m, None))]
        if not isinstance(cell, nn.Module) or missing:
            raise TypeError(f"Recoding: cell must be a rnnlab cell (an nn.Module with "
                            f"{', '.join(CELL_METHODS)}), got {type(cell).__name__}"
                            + (f" without {', '.join(missing)}" if missing else ""))
        if not callable(head):
            raise TypeError(f"Recoding: head must be a module from the readout (B, H_out) to "
                            f"logits (B, V), got {type(head).__name__}")
        check_choice("Recoding", "signal", signal, SIGNALS)
        check_number("Recoding", "step_size", step_size, 0, note=" (finite)")
        check_int("Recoding", "steps", steps, 1)
        check_bool("Recoding", "create_graph", create_graph)
        check_bool("Recoding", "redecode", redecode)
        check_number("Recoding", "dropout", dropout, 0, 1, low_open=True, high_open=True)
        check_int("Recoding", "samples", samples, 2)
        self.cell, self.head = cell, head
        self.signal, self.step_size, self.steps = signal, float(step_size), steps
        self.create_graph, self.redecode = create_graph, redecode
        self.dropout, self.samples = float(dropout), samples
        self.last_delta = self.last_delta_after = math.nan

    def error(self, h: State, u_t: torch.Tensor, logits: torch.Tensor,
              target: Optional[torch.Tensor]) -> torch.Tensor:
        """The error signal of state ``h`` whose prediction is ``logits``: ``(B,)``."""
        if self.signal == "entropy":
            return entropy(logits)
        if self.signal == "surprisal":
            return surprisal(logits, target)
        return mc_variance(self.head, self.cell.readout(h, u_t), self.samples, self.dropout)

    def _predict(self, h: State, u_t: torch.Tensor) -> torch.Tensor:
        return self.head(self.cell.readout(h, u_t))

    def _first(self, u_t: torch.Tensor, h: State) -> Tuple[State, torch.Tensor]:
        """The plain step and its logits (one pass for cells that share the work)."""
        both = getattr(self.cell, "step_readout", None)
        if callable(both):
            h, y = both(u_t, h)
        else:
            h = self.cell.step(u_t, h)
            y = self.cell.readout(h, u_t)
        return h, self.head(y)

    def step(self, u_t: torch.Tensor, h: State, target: Optional[torch.Tensor] = None
             ) -> Tuple[torch.Tensor, State]:
        """One step, then ``steps`` recoding steps: ``(logits (B, V), recoded state)``."""
        if self.signal == "surprisal" and target is None:
            raise ValueError("Recoding: signal='surprisal' needs the gold targets (B, T) "
                             "(target (B,) for step), got None")
        training = torch.is_grad_enabled()
        with torch.enable_grad():
            leaves = tuple(t if training and t.requires_grad else t.detach().requires_grad_()
                           for t in as_tuple(h))  # a graph to differentiate, even at inference
            h, logits = self._first(u_t, leaves if isinstance(h, tuple) else leaves[0])
            plain = logits
            for k in range(self.steps):
                delta = self.error(h, u_t, logits, target)  # (B,)
                if k == 0:
                    before = delta.detach()
                h = self._recode(h, delta, training)
                logits = self._predict(h, u_t)  # the next step's signal is of the new state
            after = (self.error(h, u_t, logits, target).detach() if self.signal != "mc_dropout"
                     else torch.full_like(before, math.nan))  # a noisy signal: not re-measured
        out = plain if self.signal == "surprisal" or not self.redecode else logits
        self._deltas = (before, after)
        if not training:
            out, h = out.detach(), _detach(h)
        return out, h

    def _recode(self, h: State, delta: torch.Tensor, training: bool) -> State:
        """``h - step_size * d sum(delta) / dh`` for every state tensor (the sequences of a
        batch are independent, so the gradient of the sum is each one's own)."""
        leaves = as_tuple(h)
        graph = training and self.create_graph
        grads = torch.autograd.grad(delta.sum(), leaves, create_graph=graph,
                                    retain_graph=training or None, allow_unused=True)
        new = tuple(t if g is None else t - self.step_size * g for t, g in zip(leaves, grads))
        return new if isinstance(h, tuple) else new[0]

    def forward(self, x: torch.Tensor, state: Optional[State] = None,
                targets: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, State]:
        """``x (B, T, ...)`` (what ``cell.project`` takes), ``targets (B, T)`` for
        ``"surprisal"`` -> ``(logits (B, T, V), final state)``."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or 0 in x.shape[:2]:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Recoding: x must be a tensor (B, T, ...) with B, T >= 1, "
                             f"got {got}")
        if targets is not None and tuple(targets.shape) != tuple(x.shape[:2]):
            raise ValueError(f"Recoding: targets must be (B, T) = {tuple(x.shape[:2])}, "
                             f"got {tuple(targets.shape)}")
        if state is None:
            state = self.cell.init_state(x.shape[0], torch.float32, x.device)
        us = self.cell.project(x).unbind(1)  # (B, T, P) -> T x (B, P)
        out, before, after = [], [], []
        for t, u_t in enumerate(us):
            logits, state = self.step(u_t, state, None if targets is None else targets[:, t])
            out.append(logits)
            before.append(self._deltas[0])
            after.append(self._deltas[1])
        self.last_delta = torch.stack(before).mean().item()
        self.last_delta_after = torch.stack(after).mean().item()
        return torch.stack(out, dim=1), state  # T x (B, V) -> (B, T, V)


def _detach(h: State) -> State:
    return tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach()
