"""The fused Newton sweep kernels (``ops/newton_fused/triton_kernels.py``), run on CPU by
Triton's interpreter: one sweep and one adjoint == the plain-torch reference; a full solve ==
the Newton engine == the sequential engine, outputs, final states and the gradients of x, h0
and every parameter (ParaGRU, IndRNN relu/tanh, ParaLSTM's 2 x 2 blocks), with padded sequences
and T not a multiple of the tile or the chunk; damped steps; failures reported as the engine's;
the solve op passes ``torch.library.opcheck`` and ``torch.compile(fullgraph=True)``."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels run on CPU
pytest.importorskip("triton")
if os.environ["TRITON_INTERPRET"] != "1":
    pytest.skip("TRITON_INTERPRET was set to something other than 1", allow_module_level=True)

import rnnlab  # noqa: E402
from rnnlab.cells import as_tuple  # noqa: E402
from rnnlab.ops import newton_fused as nf  # noqa: E402
from rnnlab.ops.newton_fused import reference as ref  # noqa: E402
from rnnlab.ops.newton_fused import triton_kernels as tk  # noqa: E402

KINDS = sorted(ref.CELLS)


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Tiles of 8 steps and blocks of 8 features: T = 21 and H = 12 leave partial ones."""
    monkeypatch.setattr(tk, "TILE", 8)
    monkeypatch.setattr(tk, "BLOCK", 8)


def _inputs(kind, B=2, T=21, H=12, seed=0):
    """u, h0, params and a random iterate (or g), fp64; states are S = L*H numbers."""
    g = torch.Generator().manual_seed(seed)
    G, P, L = ref.CELLS[kind]

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

    return rand(B, T, G * H), rand(B, L * H, scale=0.5), rand(P, H, scale=0.5), \
        rand(B, T, L * H)


@pytest.mark.parametrize("kind", KINDS)
def test_one_sweep_equals_the_reference_sweep(kind):
    u, h0, params, cur = _inputs(kind)
    lengths = torch.tensor([21, 13])
    got = tk.newton_sweep(kind, u, h0, cur, params, lengths, 0.7, "given", 5)  # chunks 5+..+1
    want = ref.sweep_reference(kind, u, h0, cur, params, lengths, 0.7)
    for a, b, what in zip(got[:3], want, ("next iterate", "f", "ratio")):
        torch.testing.assert_close(a, b, msg=lambda m: f"{kind} {what}: {m}")


@pytest.mark.parametrize("init", ["step", "zeros"])
def test_the_first_sweep_makes_the_engine_s_guess(init):
    u, h0, params, _ = _inputs("paragru")
    lengths = torch.tensor([21, 21])
    guess = ref.first_guess("paragru", u, params, init)
    got = tk.newton_sweep("paragru", u, h0, torch.empty_like(guess), params, lengths, 1.0,
                          init, 0)
    torch.testing.assert_close(got[3], guess)
    for a, b in zip(got[:3], ref.sweep_reference("paragru", u, h0, guess, params, lengths, 1.0)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_adjoint_equals_the_reference_adjoint(kind):
    u, h0, params, hsol = _inputs(kind, seed=1)
    g = _inputs(kind, seed=2)[3]
    lengths = torch.tensor([13, 21])
    got = tk.newton_adjoint(kind, u, h0, hsol, params, lengths, g, 7)
    want = ref.adjoint_reference(kind, u, h0, hsol, params, lengths, g)
    for a, b, what in zip(got, want, ("du", "dh0", "dparams")):
        torch.testing.assert_close(a, b, msg=lambda m: f"{kind} {what}: {m}")


def _cell(kind, D=4, H=8):
    torch.manual_seed(0)
    if kind in ("paragru", "paralstm"):
        return rnnlab.cells.get(kind, D, H, a_max=0.9, dtype=torch.float64)
    return rnnlab.cells.get("indrnn", D, H, nonlinearity=kind.split("_")[1],
                            recurrent_max=0.9, dtype=torch.float64)


def _fused_layer(cell, x, h0, lengths, chunk):
    """What the Newton engine would do with the kernels (the wiring in the package doc; the
    engine's caller has zeroed x past each sequence's end already)."""
    B, T = x.shape[:2]
    alive = torch.arange(T)[None, :, None] < lengths[:, None, None]  # (B, T, 1)
    u = cell.project(torch.where(alive, x, torch.zeros_like(x)))
    z, hT, info = nf.run_kernels(nf.engine_supports(cell), u, h0, nf.cell_params(cell),
                                 lengths, chunk=chunk)
    y = z[..., :cell.hidden_size]  # the readout: h, the first leaf (ParaLSTM's (h, c))
    return torch.where(alive, y, torch.zeros_like(y)), hT, info


def _outputs_and_grads(fn, cell, x, h0):
    x, h0 = x.clone().requires_grad_(), h0.clone().requires_grad_()
    y, hT = fn(x, h0)[:2]
    g = torch.Generator().manual_seed(7)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() + hT.square().sum()
    return [y, hT, *torch.autograd.grad(loss, [x, h0, *cell.parameters()])]


@pytest.mark.parametrize("kind", KINDS)
def test_a_full_solve_equals_the_newton_and_sequential_engines(kind):
    cell = _cell(kind)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 19, 4, generator=g, dtype=torch.float64)  # T = 19: partial tiles, chunks
    L = ref.CELLS[kind][2]
    h0 = torch.randn(3, L * 8, generator=g, dtype=torch.float64) * 0.5  # leaves concatenated
    lengths = torch.tensor([19, 11, 0])
    info = {}

    def fused(x, h0):
        y, hT, i = _fused_layer(cell, x, h0, lengths, chunk=6)
        info.update(i)
        return y, hT

    def leaves(run):  # the engines take and give the state as its leaves
        def call(x, h0):
            y, hT = run(x, h0 if L == 1 else tuple(h0.chunk(L, -1)))
            return y, hT if L == 1 else torch.cat(hT, -1)
        return call

    stats = {}
    newton = rnnlab.engines.Newton(compile=False)
    runs = {"fused": fused,
            "newton": leaves(lambda x, h0: newton(cell, x, h0, lengths, stats=stats)),
            "sequential": leaves(lambda x, h0: rnnlab.Recurrent(cell, engine="sequential")(
                x, h0, lengths=lengths))}
    got = {k: _outputs_and_grads(fn, cell, x, h0) for k, fn in runs.items()}
    names = ["y", "h_T", "dx", "dh0"] + [f"d{n}" for n, _ in cell.named_parameters()]
    for other in ("newton", "sequential"):
        for a, b, what in zip(got["fused"], got[other], names):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8,
                                       msg=lambda m: f"{kind} {what} vs {other}: {m}")
    assert info["converged"] and info["failure"] is None
    assert info["iterations"] == stats["iterations"]  # the same iteration rule
    assert info["history"] == pytest.approx(stats["history"], rel=1e-6, abs=1e-13)


def test_float32_solve_matches_the_sequential_engine_to_its_tolerance():
    torch.manual_seed(0)
    cell = rnnlab.cells.get("paragru", 4, 8)
    x, h0 = torch.randn(2, 40, 4), torch.randn(2, 8) * 0.5
    lengths = torch.tensor([40, 40])
    fused = _outputs_and_grads(lambda x, h0: _fused_layer(cell, x, h0, lengths, 0), cell, x, h0)
    seq = _outputs_and_grads(lambda x, h0: rnnlab.Recurrent(cell, engine="sequential")(x, h0),
                             cell, x, h0)
    for a, b in zip(fused, seq):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_failures_are_reported_as_the_engine_s():
    u, h0, params, _ = _inputs("paragru")
    _, _, info = nf.run_kernels("paragru", u, h0, params, max_iters=1, tol=1e-14)
    assert not info["converged"] and "within 1 iterations" in info["failure"]
    assert info["iterations"] == 1 and len(info["history"]) == 2
    u[0, 3, 0] = float("nan")
    _, _, info = nf.run_kernels("paragru", u, h0, params)
    assert info["failure"] == "NaN or inf in the iterates"


def test_cpu_takes_the_reference_with_the_same_numbers():
    assert nf.backend("cpu") == "torch" and nf.backend("cuda") == "triton"
    u, h0, params, _ = _inputs("indrnn_tanh")
    u, h0, params = (t.requires_grad_() for t in (u, h0, params))
    lengths = torch.tensor([21, 5])
    outs = [fn("indrnn_tanh", u, h0, params, lengths) for fn in (nf.newton_fused,
                                                                  nf.run_kernels)]
    for a, b in zip(outs[0][:2], outs[1][:2]):
        torch.testing.assert_close(a, b)
    assert outs[0][2]["iterations"] == outs[1][2]["iterations"]
    grads = [torch.autograd.grad(z.sum() + hT.sum(), (u, h0, params)) for z, hT, _ in outs]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bad, message", [
    (dict(cell="gru"), "cell must be one of"),
    (dict(u=torch.zeros(2, 5, 7)), "u must be (B, T, G*H) = (2, T, 36)"),
    (dict(cell="paralstm", h0=torch.zeros(2, 7)), "h0 must be (B, S) with S = 2*H for paralstm, "
     "got shape (2, 7)"),
    (dict(params=torch.zeros(2, 12)), "params must be (P, H) = (3, 12)"),
    (dict(lengths=torch.ones(2)), "lengths must be (2,) integers"),
    (dict(max_iters=0), "max_iters must be an int >= 1, got 0"),
    (dict(damping=1.5), "damping must be in (0, 1], got 1.5"),
    (dict(init="ones"), "init must be 'step' or 'zeros', got 'ones'"),
    (dict(chunk=-1), "chunk must be an int >= 0"),
])
def test_bad_arguments_name_the_argument_and_value(bad, message):
    u, h0, params, _ = _inputs("paragru")
    args = dict(cell="paragru", u=u, h0=h0, params=params) | bad
    with pytest.raises(ValueError) as err:
        nf.newton_fused(**args)
    assert message in str(err.value)


def test_solve_op_passes_opcheck():
    u, h0, params, _ = _inputs("paragru", B=2, T=9, H=4)
    args = ("paragru", u.requires_grad_(), h0, params.requires_grad_(), torch.tensor([9, 4]),
            1e-10, 20, 1.0, "step", 4)
    torch.library.opcheck(tk.newton_solve, args,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_damped_iterations_follow_the_engine_s():
    """damping w < 1: the same relaxed steps, so the same count and residuals as the engine."""
    cell = _cell("paragru")
    x = torch.randn(2, 11, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    h0 = torch.zeros(2, 8, dtype=torch.float64)
    stats = {}
    y_n, _ = rnnlab.engines.Newton(compile=False, damping=0.7, tol=1e-6)(cell, x, h0,
                                                                          stats=stats)
    with torch.no_grad():
        z, _, info = nf.run_kernels("paragru", cell.project(x), h0, nf.cell_params(cell),
                                    tol=1e-6, damping=0.7, chunk=8)
    torch.testing.assert_close(z, y_n)
    assert info["iterations"] == stats["iterations"] > 4  # relaxed: more than plain Newton
    assert info["history"] == pytest.approx(stats["history"], rel=1e-6, abs=1e-13)


def test_torch_compile_traces_through_the_solve_op_in_one_graph():
    """fullgraph=True: the custom op, its fake and its registered backward, no graph break."""
    u, h0, params, _ = _inputs("paragru", T=9, H=4)
    lengths = torch.tensor([9, 6])

    def loss(u):
        z = tk.newton_solve("paragru", u, h0, params, lengths, 1e-10, 20, 1.0, "step", 0)[0]
        return z.square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    u = u.requires_grad_()
    got = torch.autograd.grad(compiled(u), u)[0]
    torch.testing.assert_close(got, torch.autograd.grad(loss(u), u)[0])


@pytest.mark.parametrize("name", ["paragru", "indrnn", "paralstm"])
def test_the_newton_engine_runs_the_kernels_where_the_backend_says_triton(name, monkeypatch):
    """On CUDA ``backend`` says "triton"; forced here on CPU tensors (interpreter), the Newton
    engine itself takes the fused path, says so in its stats, and equals the sequential
    engine: outputs, final state and gradients, with padded lengths."""
    from rnnlab.engines import Newton
    monkeypatch.setattr(nf, "backend", lambda device="cpu": "triton")
    torch.manual_seed(0)
    cell = rnnlab.cells.get(name, 3, 6).double()
    x = torch.randn(3, 11, 3, dtype=torch.float64)
    lengths = torch.tensor([11, 6, 0])
    got, want = [], []
    for engine, out in ((Newton(), got), ("sequential", want)):
        layer = rnnlab.Recurrent(cell, engine=engine)
        xx = x.clone().requires_grad_()
        y, h = layer(xx, lengths=lengths)
        loss = y.square().sum() + sum(t.square().sum() for t in as_tuple(h))
        out.extend([y, *as_tuple(h), *torch.autograd.grad(loss, [xx, *cell.parameters()])])
        if engine != "sequential":
            assert layer.stats["kernel"] == "triton" and layer.stats["converged"]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
