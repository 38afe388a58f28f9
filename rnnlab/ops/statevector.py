"""Statevector primitives for small quantum circuits, differentiable in torch.

A register of n qubits is a complex tensor ``psi: (B, 2, ..., 2)`` (n qubit axes after the batch
axis; qubit q is axis ``q + 1``), the amplitude of basis state |z_0 ... z_{n-1}> at
``psi[b, z_0, ..., z_{n-1}]``. Gates return new tensors (nothing is written in place), so
autograd differentiates a whole circuit. Angles may vary over the other qubits' basis states
(a *multiplexed* rotation: one rotation angle per basis state of the controls), which is what a
chain of controlled rotations with one common target applies, in one tensor operation.
"""
from __future__ import annotations

from typing import Sequence

import torch

# -iY = [[0, -1], [1, 0]]: the real rotation by pi/2 that the quantum neuron applies to its
# target when its ancilla is |1> (Cao, Guerreschi & Aspuru-Guzik 2017).
MINUS_IY = ((0.0, -1.0), (1.0, 0.0))


def axis(qubit: int) -> int:
    """The tensor axis of ``qubit`` (axis 0 is the batch)."""
    return qubit + 1


def zeros_state(batch: int, n: int, dtype=torch.complex64, device=None) -> torch.Tensor:
    """|0 ... 0> on ``n`` qubits: ``(B, 2, ..., 2)``."""
    psi = torch.zeros(batch, 2 ** n, dtype=dtype, device=device)
    psi[:, 0] = 1
    return psi.view(batch, *([2] * n))  # (B, 2^n) -> (B, 2, ..., 2)


def multiplexed(psi: torch.Tensor, qubit: int, a, s) -> torch.Tensor:
    """The real 2x2 block [[a, -s], [s, a]] on ``qubit``; ``a``, ``s``: numbers, or real
    tensors broadcasting against ``psi`` with size 1 on the qubit's own axis (one block per
    basis state of the other qubits). A rotation when a^2 + s^2 = 1; else a rotation times
    sqrt(a^2 + s^2) (what a post-selected circuit leaves)."""
    ax = axis(qubit)
    for name, t in (("a", a), ("s", s)):
        if torch.is_tensor(t) and t.dim() == psi.dim() and t.shape[ax] != 1:
            raise ValueError(f"multiplexed: {name} must not vary along the target qubit "
                             f"{qubit}'s own axis, got shape {tuple(t.shape)}")
    p0, p1 = psi.narrow(ax, 0, 1), psi.narrow(ax, 1, 1)
    return torch.cat([a * p0 - s * p1, s * p0 + a * p1], dim=ax)


def ry(psi: torch.Tensor, qubit: int, theta: torch.Tensor | float) -> torch.Tensor:
    """R_y(theta) = [[cos theta/2, -sin theta/2], [sin theta/2, cos theta/2]] on ``qubit``.
    ``theta``: a number, or a real tensor broadcasting against ``psi`` with size 1 on the
    qubit's own axis (a multiplexed rotation: its angle may depend on the other qubits)."""
    theta = torch.as_tensor(theta, dtype=psi.real.dtype, device=psi.device)
    return multiplexed(psi, qubit, torch.cos(theta / 2), torch.sin(theta / 2))


def controlled(psi: torch.Tensor, control: int, target: int,
               matrix: Sequence[Sequence[float]] = MINUS_IY) -> torch.Tensor:
    """The 2x2 ``matrix`` on ``target`` where ``control`` is |1> (identity where it is |0>)."""
    if control == target:
        raise ValueError(f"controlled: control and target must differ, both are {control}")
    ca, ta = axis(control), axis(target)
    off, on = psi.narrow(ca, 0, 1), psi.narrow(ca, 1, 1)
    (a, b), (c, d) = matrix
    t0, t1 = on.narrow(ta, 0, 1), on.narrow(ta, 1, 1)
    on = torch.cat([a * t0 + b * t1, c * t0 + d * t1], dim=ta)
    return torch.cat([off, on], dim=ca)


def postselect(psi: torch.Tensor, qubit: int, outcome: int = 0) -> torch.Tensor:
    """Project ``qubit`` onto |outcome> and keep it in the register (the other component set
    to 0), not renormalised: the squared norm left is the probability of that outcome, and
    after several projections the probability that all of them succeed."""
    ax = axis(qubit)
    kept = psi.narrow(ax, outcome, 1)
    parts = [kept, torch.zeros_like(kept)]
    return torch.cat(parts if outcome == 0 else parts[::-1], dim=ax)


def bit(qubit: int, n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The value (0 or 1) of ``qubit`` in each basis state, broadcasting against an n-qubit
    register: shape ``(1, ..., 2, ..., 1)`` with the 2 on the qubit's axis."""
    shape = [1] * (n + 1)
    shape[axis(qubit)] = 2
    return torch.arange(2, dtype=dtype, device=device).view(shape)


def probabilities(psi: torch.Tensor, qubits: Sequence[int]) -> torch.Tensor:
    """Born-rule distribution of measuring ``qubits`` (in that order, the first the most
    significant bit): ``(B, 2^len(qubits))``, from a normalised register."""
    n = psi.dim() - 1
    rest = [axis(q) for q in range(n) if q not in qubits]
    p = (psi.abs() ** 2).sum(dim=rest) if rest else psi.abs() ** 2  # (B, 2, ..., 2)
    order = sorted(range(len(qubits)), key=lambda i: qubits[i])  # axes kept in qubit order
    p = p.permute(0, *[1 + order.index(i) for i in range(len(qubits))])
    return p.reshape(psi.shape[0], 2 ** len(qubits))  # (B, 2, .., 2) -> (B, 2^k)


def sq_norm(psi: torch.Tensor) -> torch.Tensor:
    """Squared norm per sample: ``(B,)``."""
    return (psi.abs() ** 2).flatten(1).sum(1)


def rus_block(eta, order: int):
    """``(a, s)``: what the degree-``order`` neuron circuit (``cells/quantum.py``) does to its
    target on the outcome |0...0> of its ancillas, the block [[a, -s], [s, a]] with
    a = cos(eta)^(2^order), s = sin(eta)^(2^order). Degree 1 gives cos^2 I + sin^2 (-iY)
    (Cao et al. 2017); degree k squares degree k-1's entries (its block, twice, weights the
    controlled -iY), so the block is sqrt(p) R_y(2 q) with q = arctan(tan(eta)^(2^order)) and p
    = a^2 + s^2 the probability that every post-selection succeeds."""
    # a tensor keeps its dtype (the cell's fp32 or fp64); a number is computed in fp64
    eta = eta if torch.is_tensor(eta) and eta.is_floating_point() else torch.as_tensor(
        eta, dtype=torch.float64)
    k = 2 ** order
    return torch.cos(eta) ** k, torch.sin(eta) ** k


def rus_angle(eta, order: int) -> torch.Tensor:
    """The neuron's activation q(eta) = arctan(tan(eta)^(2^order)) (finite at eta = pi/2)."""
    a, s = rus_block(eta, order)
    return torch.atan2(s, a)


def rus_success(eta, order: int) -> torch.Tensor:
    """Probability that every post-selection of the degree-``order`` neuron succeeds on a basis
    state of angle eta: cos(eta)^(2^(order+1)) + sin(eta)^(2^(order+1))."""
    a, s = rus_block(eta, order)
    return a ** 2 + s ** 2


def unitary_matrix(circuit, n: int, dtype=torch.complex128) -> torch.Tensor:
    """The 2^n x 2^n matrix of a linear map on n-qubit registers (``circuit(psi) -> psi``),
    from its action on every basis state (the batch): column j is the image of |j>."""
    basis = torch.eye(2 ** n, dtype=dtype).view(2 ** n, *([2] * n))  # (2^n, 2, ..., 2)
    return circuit(basis).reshape(2 ** n, 2 ** n).T  # row b = image of |b> -> columns

