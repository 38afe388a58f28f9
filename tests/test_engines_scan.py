"""The scan engine equals the sequential (reference) engine for every linear cell: outputs, final
state and the gradients of inputs, initial state and every parameter; also with lengths."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import cells
from rnnlab.cells import Linear, as_tuple, map_state
from rnnlab.cells.factors import OuterProduct
from rnnlab.cells.linear import LinearCell
from rnnlab.engines.scan import Scan

from .helpers import assert_close, sq_norm

D, H = 5, 6  # H even: S4D-style cells want an even state; heads divide it
LINEAR = [n for n in cells.available()
          if isinstance(cells.get(n, D, H, device="meta").structure, Linear)]


# Options that change the math, each run on both engines too.
VARIANTS = [
    ("s4d", dict(init="inv", discretization="bilinear")),
    ("s4d", dict(init="real", discretization="zoh")),
    ("lru", dict(r_min=0.9, r_max=0.999, max_phase=0.3)),
    ("lssl", dict(learn_A=False, state_size=5)),
    ("mamba", dict(allow_neg_eigval=True)),
    ("mamba2", dict(allow_neg_eigval=True, head_dim=3)),
    ("gla", dict(heads=2, key_dim=5)),
    ("deltanet", dict(allow_neg_eigval=True, heads=2)),
    ("deltaproduct", dict(substeps=3, gated=True)),
    ("deltaproduct", dict(substeps=1, allow_neg_eigval=False)),
    ("mlstm", dict(heads=3, key_dim=4)),
    ("aaren", dict(heads=2, key_dim=3)),
]


FACTORED = [n for n in LINEAR  # cells that declare a factored form
            if type(cells.get(n, D, H, device="meta")).factors is not LinearCell.factors]


def run(name, engine, x, h0, lengths, seed=0, **options):
    torch.manual_seed(seed)
    layer = rnnlab.Recurrent(cells.get(name, D, H, **options), engine=engine)
    x = x.clone().requires_grad_()
    h0 = map_state(lambda t: t.clone().requires_grad_(), h0)
    y, h = layer(x, h0, lengths=lengths)
    g = torch.Generator().manual_seed(7)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() + sq_norm(h)
    loss.backward()
    grads = [x.grad, *[t.grad for t in as_tuple(h0)], *[p.grad for p in layer.parameters()]]
    return y, h, grads


def check_engines_agree(name, T, varlen, engines=("sequential", "scan"), **options):
    torch.manual_seed(1)  # inputs independent of which tests ran before
    B = 3
    zero = cells.get(name, D, H, **options).init_state(B)
    h0 = map_state(lambda z: 0.3 * torch.randn(z.shape, dtype=z.dtype), zero)
    x = torch.randn(B, T, D)
    lengths = torch.tensor([T, max(T // 2, 1), 0]) if varlen else None
    y_s, h_s, g_s = run(name, engines[0], x, h0, lengths, **options)
    y_p, h_p, g_p = run(name, engines[1], x, h0, lengths, **options)
    what = f"{name}{options or ''}"
    assert_close(y_p, y_s, what=f"{what} outputs")
    assert_close(h_p, h_s, what=f"{what} final state")
    for i, (a, b) in enumerate(zip(g_p, g_s)):
        assert_close(a, b, what=f"{what} gradient #{i}")


@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("T", [1, 7, 63])
@pytest.mark.parametrize("varlen", [False, True])
def test_scan_equals_sequential(name, T, varlen):
    check_engines_agree(name, T, varlen)


@pytest.mark.parametrize("name", LINEAR)
def test_scan_equals_sequential_long(name):
    check_engines_agree(name, 300, varlen=True)


@pytest.mark.parametrize("name, options", VARIANTS, ids=lambda v: str(v))
def test_scan_equals_sequential_for_options(name, options):
    check_engines_agree(name, 29, varlen=True, **options)


def test_factored_cells_are_the_expected_ones():
    assert set(FACTORED) == {"gla", "mamba", "mamba2", "mlstm", "s4d", "dlr", "lssl", "minmax"}


@pytest.mark.parametrize("name", FACTORED)
@pytest.mark.parametrize("T", [2, 63])
def test_materialising_scan_equals_sequential_for_factored_cells(name, T):
    """The materialising path (``transition`` derived from the factors) stays correct: it runs
    where a cell's factors have no op (Mamba-2 with negative eigenvalues)."""
    check_engines_agree(name, T, varlen=True, engines=("sequential", Scan(factored=False)))


@pytest.mark.parametrize("name", FACTORED + ["deltanet", "deltaproduct"])
@pytest.mark.parametrize("chunk_size", [1, 5])
def test_chunk_size_override_gives_the_same_numbers(name, chunk_size):
    check_engines_agree(name, 23, varlen=True, engines=("sequential", Scan(chunk_size=chunk_size)))


def test_outer_product_takes_one_decay_form():
    q = torch.zeros(1, 2, 1, 3)
    with pytest.raises(ValueError, match="exactly one of g"):
        OuterProduct(q, q, q)
    with pytest.raises(ValueError, match="exactly one of g"):
        OuterProduct(q, q, q, g=q[..., 0], a=q[..., 0])


def test_scan_chunk_size_is_checked():
    with pytest.raises(ValueError, match="chunk_size must be None or an int >= 1, got 0"):
        Scan(chunk_size=0)


def test_negative_eigenvalue_options_reach_below_zero():
    x = torch.randn(4, 50, D) * 3
    for name in ("mamba", "mamba2"):
        torch.manual_seed(0)
        cell = cells.get(name, D, H, allow_neg_eigval=True)
        A, _ = cell.transition(cell.project(x))
        assert A.min() < 0 <= A.max() <= 1, name
    torch.manual_seed(0)
    cell = cells.get("deltanet", D, H, allow_neg_eigval=True)
    beta = cell.delta_inputs(cell.project(x))[3]
    assert beta.max() > 1 and beta.min() >= 0 and beta.max() <= 2
    A, _ = cell.transition(cell.project(x))
    assert torch.linalg.eigvalsh(A).min() < 0  # I - beta k k^T with beta > 1


def test_auto_picks_scan_for_linear_and_sequential_otherwise():
    assert rnnlab.Recurrent("mamba", input_size=D, hidden_size=H).engine_name == "scan"
    assert rnnlab.Recurrent("gru", input_size=D, hidden_size=H).engine_name == "auto"
    assert rnnlab.Recurrent("slstm", input_size=D, hidden_size=H).engine_name == "sequential"


def test_scan_refuses_nonlinear_cells():
    with pytest.raises(ValueError, match=r"engine: 'scan' cannot run GRU \(structure Dense\(\)\)"):
        rnnlab.Recurrent("gru", engine="scan", input_size=D, hidden_size=H)


def test_factors_of_the_wrong_kind_are_refused():
    class Wrong(LinearCell):
        structure = Linear("scalar")  # but the decay below is per key

        def __init__(self):
            super().__init__(2, 2)

        def state_shapes(self):
            return ((1, 2, 2),)

        def factors(self, u):
            q = u.unflatten(-1, (1, 2))  # (B, T, 1, 2)
            return OuterProduct(q, q, q, g=-q.abs())

    for engine in ("sequential", "scan"):
        with pytest.raises(TypeError, match=r"kind 'diagonal', but it declares structure "
                                            r"Linear\(kind='scalar'\)"):
            rnnlab.Recurrent(Wrong(), engine=engine)(torch.randn(1, 3, 2))


@pytest.mark.parametrize("name", ["lru", "mamba", "minmax"])
def test_numba_backed_cells_run_under_torch_compile(name):
    """The numba kernels run outside any graph (torch.compile breaks the graph around them)
    and the compiled layer gives the eager numbers."""
    torch.manual_seed(0)
    layer = rnnlab.Recurrent(name, input_size=D, hidden_size=H)
    x = torch.randn(2, 33, D)
    y, h = torch.compile(layer)(x)
    y_eager, h_eager = layer(x)
    assert_close(y, y_eager, what=f"{name} compiled outputs")
    assert_close(h, h_eager, what=f"{name} compiled final state")
