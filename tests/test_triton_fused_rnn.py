"""The fused head-wise cell kernels (``ops/fused_rnn/triton_kernels.py``), run on CPU by Triton's
interpreter, == the plain fp64 loop ``fused_rnn_reference`` and == rnnlab's sequential engine on
the registered cells (rnn_tanh, gru, lstm, slstm) with the same weights: outputs, final states
and the gradients of the input, the initial state and every weight; dense and head-wise R, odd
sizes (B = 3, D = 5: padded tiles), padded lengths with an empty sequence. The custom op passes
``torch.library.opcheck``.

Not supported by the kernels (the engine keeps its loop): LSTM ``proj_size``/``peephole``, GRU
``reset_after=False``, ``rnn_relu``, heads wider than ``MAX_HEAD_DIM``, packed (cu_seqlens)
input; checked below through ``engine_supports``."""
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
from rnnlab.ops import fused_rnn as fr  # noqa: E402
from rnnlab.ops.fused_rnn import triton_kernels as tk  # noqa: E402
from rnnlab.ops.fused_rnn.reference import CELLS  # noqa: E402

from .helpers import assert_close, run, sq_norm  # noqa: E402

NAMES = ["gru", "lstm", "rnn_tanh", "slstm"]


def _inputs(cell, B, T, N, D, seed=0, empty_memory=False):
    """wx, R, bias, state (fp32, requiring grad); sLSTM's n > 0 but for a few empty channels."""
    G, S = CELLS[cell]
    H = N * D
    g = torch.Generator().manual_seed(seed)
    wx = torch.randn(B, T, G * H, generator=g)
    R = torch.randn(G, N, D, D, generator=g) * (0.8 / D ** 0.5)
    bias = torch.randn(G * H, generator=g) * 0.3
    state = [torch.randn(B, H, generator=g) for _ in range(S)]
    if cell == "slstm":
        state[2] = state[2].abs() + 0.5  # n >= 0.5 ...
        if empty_memory:
            state[2][0, :3] = 0.0  # ... but empty memory (n = 0) in three channels
    return [x.requires_grad_() for x in (wx, R, bias)] + [tuple(s.requires_grad_()
                                                               for s in state)]


def _outputs_and_grads(fn, cell, wx, R, bias, state, lengths):
    y, hT = fn(cell, wx, R, bias, state, lengths)
    g = torch.Generator().manual_seed(3)
    loss = (y * torch.randn(y.shape, generator=g)).sum() + sq_norm(hT)
    return y, hT, torch.autograd.grad(loss, [wx, R, bias, *state])


def _check(got, want, what):
    assert_close(got[0], want[0], what=f"{what} y")
    assert_close(got[1], want[1], what=f"{what} final state")
    names = ["wx", "R", "bias"] + [f"state[{i}]" for i in range(len(got[1]))]
    for name, a, b in zip(names, got[2], want[2]):
        assert_close(a, b, what=f"{what} d{name}")


def _reference64(cell, wx, R, bias, state, lengths):
    y, hT = fr.fused_rnn_reference(cell, wx.double(), R.double(), bias.double(),
                                   tuple(s.double() for s in state), lengths)
    return y, hT


@pytest.mark.parametrize("cell", NAMES)
@pytest.mark.parametrize("heads", [1, 3], ids=["dense", "heads"])
def test_kernels_equal_the_fp64_loop(cell, heads):
    """D = 5 (tile 16) and 4, B = 3 (block 16); lengths 9, 4, 0: padded tails, an empty one."""
    args = _inputs(cell, 3, 9, heads, 5 if heads == 1 else 4, seed=heads, empty_memory=True)
    lengths = torch.tensor([9, 4, 0])
    got = _outputs_and_grads(fr.run_kernels, cell, *args, lengths)
    want = _outputs_and_grads(_reference64, cell, *args, lengths)
    _check(got, want, f"{cell} heads={heads}")
    assert not got[0][1, 4:].any() and not got[0][2].any()  # y is 0 after a sequence's end
    for leaf, h0 in zip(got[1], args[3]):  # the empty sequence keeps its initial state
        torch.testing.assert_close(leaf[2], h0[2].detach())


def _cell(name, H):
    torch.manual_seed(5)
    if name == "slstm":
        cell = rnnlab.cells.get("slstm", 3, H, heads=2)
        with torch.no_grad():  # sLSTM starts with R = 0: give the test something to check
            cell.weight_hh.normal_(0.0, 0.3)
        return cell
    return rnnlab.cells.get(name, 3, H)


def _fused_run(cell, name, x, h0, lengths):
    """helpers.run's loss and gradients with the kernels in place of the engine."""
    x = x.clone().requires_grad_()
    h0 = tuple(t.clone().requires_grad_() for t in as_tuple(h0))
    bias = None if name == "slstm" else cell.bias_hh
    y, h = fr.run_kernels(name, cell.project(x), cell.weight_hh, bias, h0, lengths)
    g = torch.Generator().manual_seed(7)
    loss = (y * torch.randn(y.shape, generator=g)).sum() + sq_norm(h)
    return y, h, torch.autograd.grad(loss, [x, *h0, *cell.parameters()])


@pytest.mark.parametrize("name", NAMES)
def test_kernels_equal_the_sequential_engine_on_the_cell(name):
    """The registered cell's own weights (dense torch-style weight_hh, sLSTM's 2 heads),
    lengths 6, 2, 5: outputs, final state, gradients of x, h0 and every parameter."""
    cell = _cell(name, 6)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 3, generator=g)
    h0 = tuple(torch.randn(3, 6, generator=g) * 0.5 for _ in range(CELLS[name][1]))
    if name == "slstm":
        h0 = (h0[0], h0[1], h0[2].abs() + 1.0, h0[3])
    lengths = torch.tensor([6, 2, 5])
    y_s, h_s, g_s = run(cell, "sequential", x, h0 if len(h0) > 1 else h0[0], lengths)
    y_k, h_k, g_k = _fused_run(cell, name, x, h0, lengths)
    assert_close(y_k, y_s, what=f"{name} outputs")
    assert_close(h_k, as_tuple(h_s), what=f"{name} final state")
    assert len(g_k) == len(g_s)
    for i, (a, b) in enumerate(zip(g_k, g_s)):
        assert_close(a, b, what=f"{name} gradient #{i}")


def test_slstm_from_the_zero_state_equals_the_engine():
    """The sLSTM's natural start, n = 0 everywhere (the empty-memory branch at step 1)."""
    cell = _cell("slstm", 8)
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(2))
    h0 = tuple(torch.zeros(2, 8) for _ in range(4))
    y_s, h_s, g_s = run(cell, "sequential", x, h0, None)
    y_k, h_k, g_k = _fused_run(cell, "slstm", x, h0, None)
    assert_close(y_k, y_s, what="outputs")
    assert_close(h_k, as_tuple(h_s), what="final state")
    for i, (a, b) in enumerate(zip(g_k, g_s)):
        assert_close(a, b, what=f"gradient #{i}")


def test_zero_steps_return_the_initial_state():
    wx, R, bias, state = _inputs("lstm", 2, 0, 1, 4)
    y, hT = fr.run_kernels("lstm", wx, R, bias, state)
    assert y.shape == (2, 0, 4)
    for a, b in zip(hT, state):
        torch.testing.assert_close(a, b.detach())


def test_custom_op_passes_opcheck():
    wx, R, bias, state = (_inputs("gru", 2, 4, 2, 4)[i] for i in range(4))
    args = ("gru", wx.detach().requires_grad_(), R.detach(), bias.detach(),
            torch.stack([s.detach() for s in state]), torch.tensor([4, 3]))
    torch.library.opcheck(tk.fused_rnn_op, args,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_torch_compile_traces_through_the_op_in_one_graph():
    """fullgraph=True: the wrapper, the custom op and its registered backward, no graph break."""
    wx, R, bias, state = _inputs("gru", 2, 4, 1, 4)

    def loss(wx):
        return fr.run_kernels("gru", wx, R, bias, state)[0].square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(wx), wx)[0]
    torch.testing.assert_close(got, torch.autograd.grad(loss(wx), wx)[0])


def test_dispatch_cpu_takes_the_reference_and_cuda_the_kernels(monkeypatch):
    assert fr.backend("cpu") == "torch"
    assert fr.backend("cuda") == "triton"
    monkeypatch.setattr(fr, "USE_TRITON", False)
    assert fr.backend("cuda") == "torch"
    args = _inputs("gru", 2, 3, 1, 4)
    y, _ = fr.fused_rnn("gru", *args)  # CPU: the loop, same numbers as the kernels
    torch.testing.assert_close(y, fr.run_kernels("gru", *args)[0])


def test_engine_supports_the_default_cells_only():
    get = rnnlab.cells.get
    assert fr.engine_supports(get("lstm", 3, 8)) == "lstm"
    assert fr.engine_supports(get("gru", 3, 8)) == "gru"
    assert fr.engine_supports(get("rnn_tanh", 3, 8)) == "rnn_tanh"
    assert fr.engine_supports(get("slstm", 3, 256, heads=4)) == "slstm"  # heads of 64
    assert fr.engine_supports(get("lstm", 3, 8, proj_size=4)) is None
    assert fr.engine_supports(get("lstm", 3, 8, peephole=True)) is None
    assert fr.engine_supports(get("gru", 3, 8, reset_after=False)) is None
    assert fr.engine_supports(get("rnn_relu", 3, 8)) is None
    assert fr.engine_supports(get("gru", 3, fr.MAX_HEAD_DIM + 1)) is None  # R off chip
    assert fr.MAX_HEAD_DIM == tk.MAX_HEAD_DIM


@pytest.mark.parametrize("change, match", [
    (dict(cell="elman"), "cell must be one of"),
    (dict(wx=torch.zeros(2, 3, 5)), "wx's last dim must be G·H = 3·4 = 12"),
    (dict(R=torch.zeros(3, 2, 4, 4)), r"R must be \(G, N, D, D\)"),
    (dict(R=torch.zeros(12, 5)), r"a 2-d R must be \(G·H, H\) = \(12, 4\)"),
    (dict(bias=torch.zeros(5)), r"bias must be \(G·H,\) = \(12,\)"),
    (dict(state=(torch.zeros(2, 4), torch.zeros(2, 4))), "gru has 1 state leaves, got 2"),
    (dict(lengths=torch.tensor([1.0, 2.0])), r"lengths must be \(2,\) integers"),
])
def test_bad_arguments_name_the_argument(change, match):
    args = dict(cell="gru", wx=torch.zeros(2, 3, 12), R=torch.zeros(12, 4),
                bias=torch.zeros(12), state=(torch.zeros(2, 4),), lengths=None)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        fr.fused_rnn(**args)
