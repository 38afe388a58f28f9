"""The properties every cell must have, checked on the sequential (reference) engine: what a
registered cell gets from rnnlab's generic tests, for any cell factory (``harness.py``)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..cells.base import Block, Cell, Dense, Diagonal, Heads, Linear, as_tuple, map_state
from ..cells.linear import apply_transition
from .harness import NotApplicable, Setup, check_property
from .tolerance import TOL, assert_close, rel_err, sq_norm, widen


@check_property("step_contract")
def check_step_contract(s: Setup) -> None:
    """``step`` is pure (writes nothing into ``h``), keeps the state's layout, shapes and
    dtypes (fp32 and fp64), and ``readout`` is ``(B, output_size)``."""
    for dtype in (torch.float32, torch.float64):
        cell = s.cell(dtype=dtype)
        h = s.state(cell, 4, dtype=dtype)
        before = [(t.clone(), t._version) for t in as_tuple(h)]
        u = cell.project(s.input(4, 1, s.input_size, dtype=dtype))[:, 0]  # (B, 1, P) -> (B, P)
        h_next = cell.step(u, h)
        for i, (t, (value, version)) in enumerate(zip(as_tuple(h), before)):
            if not (t._version == version and torch.equal(t, value)):
                raise AssertionError(f"step wrote into its input state (leaf {i})")
        if isinstance(h_next, tuple) != isinstance(h, tuple):
            raise AssertionError("step changed the state's layout (tensor vs tuple)")
        got = [tuple(t.shape) for t in as_tuple(h_next)]
        want = [(4, *shape) for shape in cell.state_shapes()]
        if got != want:
            raise AssertionError(f"step returned state shapes {got}, state_shapes() says {want}")
        for i, (new, old) in enumerate(zip(as_tuple(h_next), as_tuple(h))):
            if new.dtype != old.dtype:
                raise AssertionError(f"step returned a {new.dtype} state leaf {i} for a "
                                     f"{old.dtype} state")
        y = cell.readout(h_next, u)
        if tuple(y.shape) != (4, cell.output_size):
            raise AssertionError(f"readout gave {tuple(y.shape)}, expected "
                                 f"(4, output_size={cell.output_size})")


def _jacobian(cell: Cell, u: torch.Tensor, h) -> torch.Tensor:
    """Full ``dh_t/dh_{t-1}`` of one sample: (S, S) with S the flattened state size."""
    leaves = as_tuple(h)
    sizes = [t[0].numel() for t in leaves]

    def f(flat):
        parts = torch.split(flat, sizes)
        hh = tuple(p.view(1, *t.shape[1:]) for p, t in zip(parts, leaves))
        out = cell.step(u[:1], hh if isinstance(h, tuple) else hh[0])
        return torch.cat([t.reshape(-1) for t in as_tuple(out)])

    flat = torch.cat([t[0].reshape(-1) for t in leaves]).double()
    return torch.autograd.functional.jacobian(f, flat)


def _allowed(structure, sizes) -> torch.Tensor:
    """Boolean (S, S) pattern of the entries the declared structure allows."""
    S = sum(sizes)
    if isinstance(structure, (Dense, Linear)):
        return torch.ones(S, S, dtype=torch.bool)
    idx = torch.arange(S)
    if isinstance(structure, Diagonal):
        group = idx
    elif isinstance(structure, Block):  # channel i of each of the k tensors
        group = idx % sizes[0]
    elif isinstance(structure, Heads):
        group = (idx % (structure.n * structure.d)) // structure.d
    else:
        raise NotApplicable(f"unknown structure {structure!r}")
    return group[:, None] == group[None, :]


def affine(cell: Cell) -> bool:
    """A linear cell whose step is ``A h + b`` (every kind but ``monoid``)."""
    return isinstance(cell.structure, Linear) and cell.structure.kind != "monoid"


@check_property("structure")
def check_structure(s: Setup) -> None:
    """The declared ``structure`` is true: a nonlinear cell's Jacobian ``dh_t/dh_{t-1}`` has no
    entry outside its pattern (at a random state, fp64); a linear cell's step is affine in h,
    ``A h + b``, with A of its ``Linear(kind)``'s pattern. (Monoid cells: not applicable.)"""
    cell = s.cell(dtype=torch.float64)
    if isinstance(cell.structure, Linear):
        if not affine(cell):
            raise NotApplicable(f"a {cell.structure} step is not affine")
        return _check_affine(s, cell)
    h = s.state(cell, 2, dtype=torch.float64)
    u = cell.project(s.input(2, 1, s.input_size, dtype=torch.float64))[:, 0]  # (B, P)
    J = _jacobian(cell, u, h)
    outside = J[~_allowed(cell.structure, [t[0].numel() for t in as_tuple(h)])]
    if outside.numel() and outside.abs().max() > 0:
        raise AssertionError(f"the Jacobian dh_t/dh_t-1 has entries outside the declared "
                             f"{cell.structure} (largest {float(outside.abs().max()):.2e})")


def _check_affine(s: Setup, cell: Cell) -> None:
    zero = cell.init_state(1, torch.float64)
    if isinstance(zero, tuple):
        raise NotApplicable("linear cells have one state tensor")
    S = zero[0].numel()
    u = cell.project(s.input(1, 1, s.input_size, dtype=torch.float64))[:, 0]  # (1, P)
    basis = torch.eye(S, dtype=zero.dtype).view(S, *zero.shape[1:])  # S unit states
    b = cell.step(u, zero)
    M = (cell.step(u.expand(S, -1), basis) - b).reshape(S, S).T.detach()  # column i = A e_i
    h1, h2 = s.state(cell, 1, seed=3, dtype=torch.float64), s.state(cell, 1, seed=4,
                                                                    dtype=torch.float64)
    assert_close(cell.step(u, 0.3 * h1 + 0.7 * h2),
                 0.3 * cell.step(u, h1) + 0.7 * cell.step(u, h2), torch.float64,
                 f"step is not affine in h, as {cell.structure} declares")
    kind, i = cell.structure.kind, torch.arange(S)
    if kind == "matrix":  # A mixes the last dim
        idx = i // zero.shape[-1]
    elif kind == "householder":  # A (K x K) mixes the K dim of each (head, v) column
        K, V = zero.shape[-2:]
        idx = (i // (K * V)) * V + i % V
    else:
        idx = i
    off = M[idx[:, None] != idx[None, :]]
    if off.numel() and off.abs().max() > 0:
        raise AssertionError(f"A mixes entries that {cell.structure} keeps apart (largest "
                             f"{float(off.abs().max()):.2e})")


@check_property("transition")
def check_transition(s: Setup) -> None:
    """An affine linear cell's ``transition(u)``, applied to a state, equals its ``step``."""
    cell = s.cell(dtype=torch.float64)
    if not affine(cell):
        raise NotApplicable(f"only for affine linear cells, not "
                            f"{cell.structure}")
    h = s.state(cell, 3, dtype=torch.float64)
    u = cell.project(s.input(3, 1, s.input_size, dtype=torch.float64))  # (B, 1, P)
    A, b = cell.transition(u)
    assert_close(apply_transition(cell.structure.kind, A[:, 0], b[:, 0], h),
                 cell.step(u[:, 0], h), torch.float64, "transition(u) applied to h vs step(u, h)")


@check_property("determinism")
def check_determinism(s: Setup) -> None:
    """The same seed builds the same parameters and outputs; another seed other outputs."""
    a, b = s.layer(), s.layer()
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        if not (na == nb and torch.equal(pa, pb)):
            raise AssertionError(f"parameter {na} differs under one seed")
    x = s.input(2, 6, s.input_size)
    if not torch.equal(a(x)[0], b(x)[0]):
        raise AssertionError("two runs of one seed give different outputs")
    if torch.equal(s.layer(seed=s.seed + 1)(x)[0], a(x)[0]):
        raise AssertionError("another seed gives the same outputs (are the parameters random?)")


@check_property("gradients")
def check_gradients(s: Setup) -> None:
    """Outputs are finite and ``(B, T, output_size)``; a loss on them and the final state sends
    a finite, nonzero gradient to the input, every parameter and the initial state."""
    layer = s.layer()
    x = s.input(3, 9, s.input_size, requires_grad=True)
    h0 = s.state(layer.cell, 3, requires_grad=True)
    y, h = layer(x, h0)
    if y.shape != (3, 9, layer.output_size):
        raise AssertionError(f"outputs {tuple(y.shape)}")
    if not all(torch.isfinite(t).all() for t in (y, *as_tuple(h))):
        raise AssertionError("non-finite outputs or state")
    (y * s.input(*y.shape, seed=5)).sum().add(sq_norm(h)).backward()
    for what, t in [("x", x), *[(f"h0[{i}]", t) for i, t in enumerate(as_tuple(h0))],
                    *layer.cell.named_parameters()]:
        if t.grad is None:
            raise AssertionError(f"no gradient reached {what}")
        if not torch.isfinite(t.grad).all():
            raise AssertionError(f"non-finite gradient of {what}")
        # A state leaf may be truly unused at init (sLSTM's h with its zero-initialized R);
        # the state as a whole must matter.
        if not (what.startswith("h0[") or t.grad.abs().sum() > 0):
            raise AssertionError(f"zero gradient of {what}")
    if sum(t.grad.abs().sum() for t in as_tuple(h0)) == 0:
        raise AssertionError("h0 has no influence")


DEFAULT_CUTS = ((1,), (5, 6, 17), tuple(range(1, 24)))  # one step, uneven chunks, every step


@check_property("streaming")
def check_streaming(s: Setup, cuts: Optional[Sequence[int]] = None) -> None:
    """Running T = 24 steps in chunks (``Recurrent.step``, split at ``cuts``, each in [1, 23];
    default: a few patterns) gives the outputs and final state of one run."""
    layer, T = s.layer(), 24
    x = s.input(2, T, s.input_size)
    h0 = s.state(layer.cell, 2)
    y_full, h_full = layer(x, h0)
    for pattern in DEFAULT_CUTS if cuts is None else (cuts,):
        ys, state = [], h0
        bounds = sorted(set(pattern))
        for a, b in zip([0, *bounds], [*bounds, T]):
            y, state = layer.step(x[:, a:b], state)
            ys.append(y)
        assert_close(torch.cat(ys, 1), y_full, s.dtype, f"outputs split at {bounds}")
        assert_close(state, h_full, s.dtype, f"final state split at {bounds}")


@check_property("lengths")
def check_lengths(s: Setup) -> None:
    """``lengths`` (0 and T included) equal each sequence run alone; padded outputs are 0 and
    an empty sequence keeps its initial state."""
    layer = s.layer()
    T, lengths = 11, [11, 0, 5, 1, 8]
    x = s.input(len(lengths), T, s.input_size)
    h0 = s.state(layer.cell, len(lengths))
    y, h = layer(x, h0, lengths=torch.tensor(lengths))
    for b, n in enumerate(lengths):
        h0_b = map_state(lambda t: t[b:b + 1], h0)
        h_b = map_state(lambda t: t[b:b + 1], h)
        if n == 0:
            assert_close(h_b, h0_b, s.dtype, "an empty sequence's state changed")
        else:
            y_alone, h_alone = layer(x[b:b + 1, :n], h0_b)
            assert_close(y[b:b + 1, :n], y_alone, s.dtype, f"outputs of sequence {b}")
            assert_close(h_b, h_alone, s.dtype, f"final state of sequence {b}")
        if not (y[b, n:] == 0).all():
            raise AssertionError(f"padded outputs of sequence {b} are not zero")


INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@check_property("dtypes")
def check_dtypes(s: Setup, dtypes: Sequence[torch.dtype] = INPUT_DTYPES) -> None:
    """Inputs in each of ``dtypes`` give outputs in that dtype and a state in fp32 (fp64 for
    fp64 inputs), equal to the fp64 run but for the rounding of the input."""
    layer = s.layer(dtype=torch.float32)
    x = s.input(2, 13, s.input_size, dtype=torch.float32)
    y_ref, h_ref = layer(x.double())  # fp64 input: parameters cast up, fp64 all the way
    for dtype in dtypes:
        y, h = layer(x.to(dtype))
        if y.dtype != dtype:
            raise AssertionError(f"{dtype} inputs gave {y.dtype} outputs")
        want = torch.float64 if dtype == torch.float64 else torch.float32
        for i, t in enumerate(as_tuple(h)):
            got = t.real.dtype if t.is_complex() else t.dtype
            if got != want:
                raise AssertionError(f"{dtype} inputs gave a {t.dtype} state leaf {i}, not "
                                     f"{want}")
        # Only the input is rounded to `dtype`; the run itself is fp32 (or fp64).
        tol = max(TOL[torch.float32], TOL[dtype])
        err = max(rel_err(y.double(), y_ref), rel_err(h, h_ref))
        if err > tol:
            raise AssertionError(f"{dtype} inputs: relative error {err:.2e} > {tol:.0e} to fp64")


@check_property("gradcheck")
def check_gradcheck(s: Setup) -> None:
    """In fp64, autograd's gradients of outputs and final state (to the input and initial
    state) equal finite differences (``torch.autograd.gradcheck``)."""
    layer = s.layer(dtype=torch.float64)
    x = s.input(2, 4, s.input_size, dtype=torch.float64, requires_grad=True)
    h0 = map_state(lambda t: widen(t).requires_grad_(), s.state(layer.cell, 2))
    leaves = as_tuple(h0)

    def f(x, *leaves):
        y, h = layer(x, leaves if isinstance(h0, tuple) else leaves[0])
        return (y, *as_tuple(h))

    torch.autograd.gradcheck(f, (x, *leaves))  # raises GradcheckError where they differ
