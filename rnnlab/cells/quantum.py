"""Quantum recurrent neural network (Bausch 2020): a statevector simulation in torch.

Registers (qubit order in the simulated tensor): ``order`` ancillas, the input register
(``input_qubits``, written afresh each step), the state register (``state_qubits``, carried
from step to step). One step, on the full register (ancillas and input start in |0>):

1. input stage: R_y(u_i) on input qubit i, ``u = W_in x + b_in`` (``project``);
2. work stage: one quantum neuron per state qubit j. Its angle is affine in the basis state of
   the other qubits, ``eta_j(z) = b_j + sum_k w_jk z_k`` over the input qubits and the state
   qubits k != j; a repeat-until-success circuit of degree ``order`` (Cao, Guerreschi &
   Aspuru-Guzik 2017) rotates qubit j by ``R_y(2 q(eta))``, ``q(eta) = arctan(tan(eta)^(2^order))``
   (a sigmoid-like step at eta = pi/4), on the outcome |0> of its ancillas: the post-selection
   that gives the polynomial nonlinearity. Degree k is: the degree-(k-1) circuit on ancilla a_k
   (degree 0: the multiplexed rotation R_y(2 eta) itself), a controlled -iY from a_k onto the
   target, the inverse of the degree-(k-1) circuit, post-selection of a_k on |0>. On the
   outcome |0...0> that leaves the target the block [[c, -s], [s, c]], c = cos(eta)^(2^order),
   s = sin(eta)^(2^order) (``ops/statevector.rus_block``), polynomial in cos and sin of eta;
   by default the step applies that block (no ancillas simulated), ``gates=True`` every gate;
3. the input stage undone (R_y(-u_i)) and the input register post-selected on |0> (exact, with
   probability 1, when the input was a basis state).

Every gate is unitary on the full register; only the projections are not. The state left is
renormalised; the probability that all of the step's post-selections succeeded
(``step_success``, ``trace``) is the cost a quantum device pays, in repetitions (or in rounds
of the amplitude amplification Bausch uses to make the neuron near-deterministic; this
simulation conditions on success directly). The read-out at each step is the Born-rule
distribution of measuring the first ``ceil(log2 H)`` state qubits, outcome k counted as class
``k mod H`` (H = 1: the probability of outcome 1); the carried state is the unmeasured one
(the distribution is that of a measurement at this step; sampling it on a device means
re-running the sequence up to it).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from ..checks import check_int
from ..ops import statevector as sv
from .base import Cell, Dense
from .registry import register

MAX_QUBITS = 16  # statevector memory: 2^16 complex amplitudes per sample
ORDER_MAX = 3  # 2^order multiplexed rotations per neuron


def output_qubits(hidden_size: int) -> int:
    """Qubits measured for an H-way read-out: ceil(log2 H), at least 1."""
    return max(1, math.ceil(math.log2(hidden_size)))


def admissible(amps: torch.Tensor) -> torch.Tensor:
    """The unit statevector that amplitudes ``(B, 2^N, 2)`` stand for: themselves, normalised,
    where their norm is >= 1 (every state this cell produces has norm 1); below, a weight
    (1 - |a|^2)^2 of |0...0> is added first, so that zero amplitudes stand for |0...0> (the
    step is then smooth everywhere, also at the zero state an engine may start from)."""
    r = (amps ** 2).sum((1, 2), keepdim=True)  # (B, 1, 1) squared norm
    lift = torch.where(r < 1, (1 - r) ** 2, torch.zeros_like(r))
    e0 = torch.zeros_like(amps[:1])
    e0[0, 0, 0] = 1
    amps = amps + lift * e0
    return amps / (amps ** 2).sum((1, 2), keepdim=True).sqrt()


@register("quantum_rnn")
class QuantumRNN(Cell):
    """Quantum RNN cell (statevector simulation). State ``amps: (B, 2^N, 2)``: the state
    register's complex amplitudes as (real, imaginary) pairs, N = ``state_qubits`` (default:
    the measured qubits, at least 2); zero amplitudes stand for |0...0> (``admissible``).
    ``u_t: (B, input_qubits)``: the input-stage angles. Read-out ``(B, H)``: the distribution
    of the measured qubits. ``step_success`` also gives each step's post-selection success,
    ``trace`` runs a sequence keeping it. ``gates=True`` simulates every gate of the neurons
    on their ancillas (the slow reference) instead of their post-selected blocks. Structure
    ``Dense`` (every amplitude depends on every other).

    Paper: Bausch, "Recurrent Quantum Neural Networks", NeurIPS 2020,
    https://arxiv.org/abs/2006.14619

    Example:

    >>> import torch, rnnlab
    >>> cell = rnnlab.cells.get("quantum_rnn", 1, 2, state_qubits=3)
    >>> y, amps = rnnlab.Recurrent(cell, engine="sequential")(torch.rand(4, 5, 1))  # (B, T, D)
    >>> y.shape, amps.shape, bool(torch.allclose(y.sum(-1), torch.ones(4, 5)))
    (torch.Size([4, 5, 2]), torch.Size([4, 8, 2]), True)
    >>> _, _, success = cell.trace(torch.rand(4, 5, 1))
    >>> success.shape, bool(((0 < success) & (success <= 1)).all())
    (torch.Size([4, 5]), True)
    """

    structure = Dense()
    # Only the sequential engine runs it: Newton's iterates leave the unit sphere (the step
    # renormalises) and overflow on long sequences; Newton.supports reads this flag.
    sequential_only = True

    def __init__(self, input_size: int, hidden_size: int, input_qubits: int = 2,
                 state_qubits: Optional[int] = None, order: int = 2, gates: bool = False,
                 device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        owner = type(self).__name__
        n_out = output_qubits(hidden_size)
        check_int(owner, "input_qubits", input_qubits, 1, MAX_QUBITS)
        check_int(owner, "order", order, 0, ORDER_MAX)
        check_int(owner, "state_qubits", state_qubits, max(n_out, 1), MAX_QUBITS, optional=True)
        n_state = max(n_out, 2) if state_qubits is None else state_qubits
        total = order + input_qubits + n_state
        if total > MAX_QUBITS:
            raise ValueError(f"{owner}: order + input_qubits + state_qubits must be <= "
                             f"{MAX_QUBITS} qubits, got {order} + {input_qubits} + {n_state} = "
                             f"{total} (hidden_size={hidden_size} needs {n_out} output qubits)")
        self.order, self.input_qubits, self.state_qubits = order, input_qubits, n_state
        self.output_qubits, self.gates = n_out, gates
        self.proj = nn.Linear(input_size, input_qubits, device=device, dtype=dtype)
        # w[j, k]: neuron j's weight on control k (the input qubits, then the state qubits);
        # its own qubit is no control (it is the target), so w[j, input_qubits + j] is unused.
        self.weight = nn.Parameter(torch.empty(n_state, input_qubits + n_state, device=device,
                                               dtype=dtype))
        self.bias = nn.Parameter(torch.empty(n_state, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Around eta = pi/4 the activation q is steepest and the neuron turns its target by
        # about pi/4; small weights keep every branch near there.
        with torch.no_grad():
            nn.init.normal_(self.proj.weight, std=math.pi / (2 * math.sqrt(self.input_size)))
            nn.init.zeros_(self.proj.bias)
            nn.init.normal_(self.weight, std=0.5 / math.sqrt(self.weight.shape[1]))
            nn.init.normal_(self.bias, mean=math.pi / 4, std=0.1)

    @property
    def qubits(self) -> int:
        """Qubits of the circuit: ancillas + input + state."""
        return self.order + self.input_qubits + self.state_qubits

    def state_shapes(self):
        return ((2 ** self.state_qubits, 2),)

    def init_state(self, batch: int, dtype: torch.dtype = torch.float32, device=None):
        """|0 ... 0>: amplitude 1 at basis state 0."""
        amps = torch.zeros(batch, 2 ** self.state_qubits, 2, dtype=dtype, device=device)
        amps[:, 0, 0] = 1
        return amps

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, T, D) -> (B, T, input_qubits)

    # ---- the circuit ---------------------------------------------------------------------------

    def registers(self, gates: bool) -> Tuple[int, Tuple[int, ...], Tuple[int, ...]]:
        """``(n, input qubits, state qubits)`` of the simulated register: with ``gates`` the
        ancillas come first (qubits 0 .. order-1); without, the neurons act as their
        post-selected blocks and need none."""
        first = self.order if gates else 0
        inputs = tuple(range(first, first + self.input_qubits))
        states = tuple(range(inputs[-1] + 1, inputs[-1] + 1 + self.state_qubits))
        return states[-1] + 1, inputs, states

    def etas(self, gates: bool, dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
        """Each neuron's angle for every basis state of its controls, broadcasting against the
        register ``(1, 2, ..., 2)``: neuron j's has size 2 on its controls (the input and the
        other state qubits) and 1 on the ancillas and on its target, state qubit j."""
        n, inputs, states = self.registers(gates)
        controls = inputs + states
        k = len(controls)
        bits = (torch.arange(2 ** k, device=self.bias.device)[:, None]
                >> torch.arange(k - 1, -1, -1, device=self.bias.device)) & 1  # (2^k, k), msb 1st
        own = (torch.arange(k, device=self.bias.device)[None, :] == k - self.state_qubits
               + torch.arange(self.state_qubits, device=self.bias.device)[:, None])  # (N, k)
        w = self.weight.to(dtype).masked_fill(own, 0)
        eta = bits.to(dtype) @ w.T + self.bias.to(dtype)  # (2^k, k) @ (k, N) -> (2^k, N)
        eta = eta.T.reshape(self.state_qubits, *([1] * (n - k)), *([2] * k))  # (N, 1.., 2..)
        return tuple(e.narrow(q, 0, 1).unsqueeze(0) for e, q in zip(eta, states))

    def neuron(self, psi: torch.Tensor, eta: torch.Tensor, target: int, level: int,
               inverse: bool = False, postselect: bool = True) -> torch.Tensor:
        """The degree-``level`` repeat-until-success circuit, gate by gate, on ancillas
        0 .. level-1: on their outcome |0...0> it rotates ``target`` by ``q_level(eta)``;
        ``inverse``: its adjoint circuit (rotating by ``-q``); ``postselect=False``: without the
        projections, a unitary."""
        if level == 0:
            return sv.ry(psi, target, -2 * eta if inverse else 2 * eta)
        a = level - 1  # this level's ancilla
        psi = self.neuron(psi, eta, a, level - 1, postselect=postselect)
        matrix = ((0.0, 1.0), (-1.0, 0.0)) if inverse else sv.MINUS_IY  # (-iY)^T for the adjoint
        psi = sv.controlled(psi, a, target, matrix)
        psi = self.neuron(psi, eta, a, level - 1, inverse=True, postselect=postselect)
        return sv.postselect(psi, a) if postselect else psi

    def circuit(self, psi: torch.Tensor, u_t: torch.Tensor, gates: bool = False,
                postselect: bool = True) -> torch.Tensor:
        """One step on the register ``psi: (B, 2, ..., 2)`` (complex; layout ``registers``) for
        input angles ``u_t: (B, input_qubits)``; not renormalised. ``gates``: every gate of the
        neurons on their ancillas (the reference); else each neuron as its post-selected block
        ``sv.rus_block`` (equal on the outcome |0...0> of the ancillas, 4^order x fewer
        operations on a 2^order x smaller register). ``postselect=False`` (with ``gates``): no
        projection anywhere, the step's unitary."""
        n, inputs, states = self.registers(gates)
        dtype = psi.real.dtype
        for i, q in enumerate(inputs):  # input stage
            psi = sv.ry(psi, q, u_t[:, i].reshape(-1, *[1] * n))  # (B,) -> (B, 1, ..., 1)
        for q, eta in zip(states, self.etas(gates, dtype)):  # work stage: a neuron per state qubit
            if gates:
                psi = self.neuron(psi, eta, q, self.order, postselect=postselect)
            else:
                psi = sv.multiplexed(psi, q, *sv.rus_block(eta, self.order))
        for i, q in enumerate(inputs):  # the input stage undone, the input register reset
            psi = sv.ry(psi, q, -u_t[:, i].reshape(-1, *[1] * n))
            if postselect:
                psi = sv.postselect(psi, q)
        return psi

    # ---- the cell contract -----------------------------------------------------------------

    def step(self, u_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.step_success(u_t, h)[0]

    def step_success(self, u_t: torch.Tensor, h: torch.Tensor):
        """``(step(u_t, h), p)``: the next state and ``p: (B,)``, the probability that every
        post-selection of the step succeeded (from a unit state)."""
        n, inputs, _ = self.registers(self.gates)
        B, n_pre = h.shape[0], n - self.state_qubits
        amps = admissible(h)
        # Every gate is real (R_y, -iY), so the circuit maps the real and the imaginary parts
        # of the amplitudes separately: they run as two real registers, batched (a complex
        # tensor would cost twice the multiplications for the same numbers).
        s = amps.permute(2, 0, 1).reshape(2 * B, -1)  # (B, 2^N, 2) -> (2B, 2^N): re, then im
        rest = s.new_zeros(2 * B, 2 ** n_pre - 1, s.shape[1])
        full = torch.cat([s.unsqueeze(1), rest], 1)  # (2B, 2^(A+I), 2^N): ancillas, input |0>
        psi = self.circuit(full.view(2 * B, *([2] * n)), u_t.to(h.dtype).repeat(2, 1),
                           self.gates)
        left = psi.reshape(2, B, 2 ** n_pre, -1)[:, :, 0]  # (2, B, 2^N): ancillas, input |0>
        p = (left ** 2).sum((0, 2)).clamp_min(torch.finfo(h.dtype).tiny)  # (B,)
        return (left / p.sqrt()[:, None]).permute(1, 2, 0), p  # (2, B, 2^N) -> (B, 2^N, 2)

    def trace(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None):
        """The sequential run of ``x: (B, T, D)`` keeping the post-selection success of every
        step: ``(y (B, T, H), h_T, success (B, T))``."""
        h = self.init_state(x.shape[0], x.dtype, x.device) if h0 is None else h0
        ys, ps = [], []
        for u_t in self.project(x).unbind(1):  # (B, T, P) -> T x (B, P)
            h, p = self.step_success(u_t, h)
            ys.append(self.readout(h, u_t))
            ps.append(p)
        return torch.stack(ys, 1), h, torch.stack(ps, 1)

    def readout(self, h, u_t: torch.Tensor) -> torch.Tensor:
        p = (h ** 2).sum(-1)  # (B, 2^N): |amplitude|^2
        p = p / p.sum(1, keepdim=True)
        n_out, rest = self.output_qubits, self.state_qubits - self.output_qubits
        p = p.view(p.shape[0], 2 ** n_out, 2 ** rest).sum(2)  # first n_out qubits (msb first)
        if self.hidden_size == 1:  # one output: the probability of outcome 1 (a Bernoulli's)
            return p[:, 1:]  # (B, 1)
        fold = torch.arange(2 ** n_out, device=p.device) % self.hidden_size
        return p.new_zeros(p.shape[0], self.hidden_size).index_add(1, fold, p)  # (B, H)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, qubits={self.qubits} (ancillas "
                f"{self.order}, input {self.input_qubits}, state {self.state_qubits})")
