"""Prefix mode (JRT-RNN, ``rnnlab/nn/prefix.py``): the definition on a hand-checked case, parity
of ``prefix_forward`` with the plain reference (outputs, state, every gradient), edge cases, bad
input; the plumbing through the models and the arena; set disjointness read twice."""
import math

import numpy as np
import pytest
import torch

import rnnlab
from rnnlab import tasks
from rnnlab.arena import spec
from rnnlab.arena.config import ArenaConfig
from rnnlab.arena.train import build_model, outputs, train_run
from rnnlab.cells.base import Linear, as_tuple
from rnnlab.cells.factors import OuterProduct
from rnnlab.cells.linear import LinearCell
from rnnlab.models.sequence import SequenceModel
from rnnlab.nn import prefix as prefix_module
from rnnlab.nn.prefix import prefix_forward, prefix_reference

F64 = dict(rtol=1e-10, atol=1e-10)


class TinyLinearAttention(LinearCell):
    """One head, K = V = 1, identity features: ``u_t = [q, k, v]``, ``S_t = a S_{t-1} + k v``,
    ``y_t = q S_t`` with a constant decay ``a``."""

    structure = Linear("scalar")

    def __init__(self, input_size: int = 3, hidden_size: int = 1, decay: float = 1.0):
        super().__init__(input_size, hidden_size)
        self.decay = decay

    def state_shapes(self):
        return ((1, 1, 1),)  # (heads, K, V)

    def factors(self, u):
        q, k, v = (u[..., i:i + 1].unsqueeze(-2) for i in range(3))  # (B, T, 1, 1) each
        g = torch.full(u.shape[:-1] + (1,), math.log(self.decay), dtype=u.dtype)  # (B, T, 1)
        return OuterProduct(q, k, v, g=g)


# q, k, v per step; S = 2, 5, 7, 8 causally (no decay); with M = 3 the first three steps read
# S_2 = 1*2 + 1*3 + 2*1 = 7: y = 1*7, 2*7, 1*7, then causal 3 * (7 + 1*1) = 24.
HAND_X = [[1., 1., 2.], [2., 1., 3.], [1., 2., 1.], [3., 1., 1.]]


@pytest.mark.parametrize("engine", ["scan", "sequential"])
@pytest.mark.parametrize("decay,want,final", [
    (1.0, [7., 14., 7., 24.], 8.),
    # a = 1/2: S = 2, 1 + 3 = 4, 2 + 2 = 4, 2 + 1 = 3; prefix reads S_2 = 4: 4, 8, 4, then 3 * 3
    (0.5, [4., 8., 4., 9.], 3.)])
def test_hand_checked_linear_attention(engine, decay, want, final):
    layer = rnnlab.Recurrent(TinyLinearAttention(decay=decay), engine=engine)
    x = torch.tensor([HAND_X], dtype=torch.float64)  # (1, 4, 3)
    for run in (lambda: prefix_forward(layer, x, 3), lambda: prefix_reference(layer.cell, x, 3)):
        y, S = run()
        assert y[0, :, 0].tolist() == pytest.approx(want)
        assert S.flatten().tolist() == pytest.approx([final])
    causal = layer(x)[0][0, :, 0].tolist()
    assert causal == pytest.approx([2., 10., 7., 24.] if decay == 1.0 else [2., 8., 4., 9.])


CELLS = [("gla", dict(heads=2)), ("mamba2", dict(head_dim=4)), ("deltanet", dict(heads=2)),
         ("lstm", {}), ("gla", dict(heads=2, window=3))]  # window: a tuple state (S, ring)


def _grads(layer, x, h0, run):
    """Outputs, state and the gradients of a fixed random functional wrt x, h0, parameters."""
    y, h = run()
    gen = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum()
    for leaf in as_tuple(h):
        loss = loss + (leaf * torch.randn(leaf.shape, generator=gen, dtype=leaf.dtype)).sum()
    params = list(layer.parameters())
    grads = torch.autograd.grad(loss, [x, *as_tuple(h0), *params])
    return [y, *as_tuple(h), *grads]


@pytest.mark.parametrize("name,options", CELLS, ids=[c + "-window" * ("window" in o)
                                                     for c, o in CELLS])
@pytest.mark.parametrize("prefix", [[0, 4, 7], [7, 7, 7], [0, 0, 0], [1, 6, 3]])
def test_prefix_forward_equals_reference_with_gradients(name, options, prefix):
    torch.manual_seed(0)
    layer = rnnlab.Recurrent(name, input_size=5, hidden_size=8, **options).double()
    x = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    h0 = tuple(torch.randn(t.shape, dtype=torch.float64, requires_grad=True)
               for t in as_tuple(layer.initial_state(3)))
    h0 = h0 if len(h0) > 1 else h0[0]
    p = torch.tensor(prefix)
    fast = _grads(layer, x, h0, lambda: prefix_forward(layer, x, p, h0))
    ref = _grads(layer, x, h0, lambda: prefix_reference(layer.cell, x, p, h0))
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("engine", ["sequential", "scan"])
def test_prefix_zero_is_causal_and_rows_are_independent(engine):
    torch.manual_seed(0)
    layer = rnnlab.Recurrent("gla", engine, input_size=5, hidden_size=8, heads=2).double()
    x = torch.randn(4, 9, 5, dtype=torch.float64)
    y, h = prefix_forward(layer, x, 0)
    yc, hc = layer(x)
    torch.testing.assert_close(y, yc, **F64)
    torch.testing.assert_close(h, hc, **F64)
    p = torch.tensor([0, 9, 5, 1])  # each sequence alone, with its own M, gives the same rows
    y, h = prefix_forward(layer, x, p)
    for b in range(4):
        yb, hb = prefix_forward(layer, x[b:b + 1], int(p[b]))
        torch.testing.assert_close(y[b:b + 1], yb, **F64)
        torch.testing.assert_close(h[b:b + 1], hb, **F64)
    # M = T: every position reads the final state, so prefix outputs are readout(h_{T-1}, u_i)
    assert not torch.allclose(y[1], yc[1]) and torch.allclose(y[1, -1], yc[1, -1])


@pytest.mark.parametrize("name,options", [("gla", dict(heads=2)), ("mamba2", dict(head_dim=4)),
                                          ("gla", dict(heads=2, window=2))])
def test_factored_cells_never_tile_the_state(name, options, monkeypatch):
    """GLA's and Mamba-2's prefix readout is the q^T S contraction, not ``readout`` on B*M
    copies of S."""
    torch.manual_seed(0)
    layer = rnnlab.Recurrent(name, input_size=5, hidden_size=8, **options).double()
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    want = prefix_reference(layer.cell, x, [3, 6])[0]

    def boom(*args):
        raise AssertionError("the state was tiled")
    monkeypatch.setattr(prefix_module, "_tiled", boom)
    torch.testing.assert_close(prefix_forward(layer, x, [3, 6])[0], want, **F64)


@pytest.mark.parametrize("name", ["gla", "deltanet"])
def test_mixed_dtypes_run_in_the_widest(name):
    """bf16 inputs and an fp64 initial state: the run is fp64 (the engines' rule), y is bf16."""
    torch.manual_seed(0)
    layer = rnnlab.Recurrent(name, input_size=5, hidden_size=8, heads=2)
    x = torch.randn(2, 6, 5)
    h0 = torch.randn(as_tuple(layer.initial_state(2))[0].shape, dtype=torch.float64)
    y, h = prefix_forward(layer, x.bfloat16(), [2, 6], h0)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float64
    want = prefix_reference(layer.double().cell, x.bfloat16().double(), [2, 6], h0)[0]
    torch.testing.assert_close(y.double(), want, rtol=2e-2, atol=2e-2)


def test_bad_input_is_refused_naming_the_argument():
    layer = rnnlab.Recurrent("gla", input_size=5, hidden_size=8, heads=2)
    x = torch.randn(2, 6, 5)
    with pytest.raises(TypeError, match="prefix: expected an integer dtype"):
        prefix_forward(layer, x, torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="prefix: expected an int"):
        prefix_forward(layer, x, "3")
    with pytest.raises(ValueError, match=r"prefix: expected shape \(B,\) = \(2,\), got \(3,\)"):
        prefix_forward(layer, x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"prefix: expected values in \[0, T=6\], got min 1, "
                                         r"max 7"):
        prefix_forward(layer, x, [1, 7])
    with pytest.raises(ValueError, match="got min -1"):
        prefix_forward(layer, x, -1)
    with pytest.raises(TypeError, match="layer must be a rnnlab Recurrent"):
        prefix_forward(layer.cell, x, 2)
    with pytest.raises(ValueError, match=r"x must be a tensor \(B, T, D\)"):
        prefix_forward(layer, x[0], 2)
    with pytest.raises(ValueError, match=r"prefix: expected shape \(B,\) = \(2,\), got \(0,\)"):
        prefix_forward(layer, x, [])
    with pytest.raises(TypeError, match="prefix: expected an int"):
        prefix_forward(layer, x, np.True_)


def test_numpy_prefixes_equal_python_and_torch_ones():
    layer = rnnlab.Recurrent("gla", input_size=5, hidden_size=8, heads=2)
    x = torch.randn(2, 6, 5)
    want = prefix_forward(layer, x, torch.tensor([2, 6]))[0]
    torch.testing.assert_close(prefix_forward(layer, x, np.array([2, 6]))[0], want)
    torch.testing.assert_close(prefix_forward(layer, x, [np.int64(2), 6])[0], want)
    torch.testing.assert_close(prefix_forward(layer, x, np.int32(3))[0],
                               prefix_forward(layer, x, 3)[0])


# --- models -------------------------------------------------------------------------------------
def test_sequence_model_in_prefix_mode():
    torch.manual_seed(0)
    x = torch.randint(0, 11, (3, 8))
    p = torch.full((3,), 7)
    one = SequenceModel(11, 11, d_model=16, n_layers=1, mixer="gla", prefix=True)
    causal = SequenceModel(11, 11, d_model=16, n_layers=1, mixer="gla")
    causal.load_state_dict(one.state_dict())
    # one layer: the positions after the prefix see the causal state, so the answer is unchanged
    torch.testing.assert_close(one(x, prefix=p)[:, -1], causal(x)[:, -1])
    assert not torch.allclose(one(x, prefix=p)[:, 0], causal(x)[:, 0])
    two = SequenceModel(11, 11, d_model=16, n_layers=2, mixer="gla", prefix=True)
    causal2 = SequenceModel(11, 11, d_model=16, n_layers=2, mixer="gla")
    causal2.load_state_dict(two.state_dict())
    # two layers: layer 2 reads layer 1's non-causal prefix outputs, so the answer changes
    assert not torch.allclose(two(x, prefix=p)[:, -1], causal2(x)[:, -1])
    torch.testing.assert_close(two(x, prefix=torch.zeros(3, dtype=torch.long)), causal2(x))
    with pytest.raises(ValueError, match="prefix must be given"):
        two(x)
    with pytest.raises(ValueError, match="prefix is for a model built with prefix=True"):
        causal2(x, prefix=p)
    with pytest.raises(ValueError, match="attention"):
        SequenceModel(11, 11, mixer="attention", prefix=True)


@pytest.mark.parametrize("cell", ["mamba2", "deltanet"])
def test_published_layers_run_their_cell_in_prefix_mode(cell):
    torch.manual_seed(0)
    model = SequenceModel(11, 11, d_model=16, n_layers=1, mixer=cell, block="published",
                          prefix=True)
    causal = SequenceModel(11, 11, d_model=16, n_layers=1, mixer=cell, block="published")
    causal.load_state_dict(model.state_dict())
    x = torch.randint(0, 11, (2, 9))
    y = model(x, prefix=torch.tensor([5, 9]))
    torch.testing.assert_close(y[0, 5:], causal(x)[0, 5:])  # causal after the prefix
    assert not torch.allclose(y[0, :4], causal(x)[0, :4])


# --- arena and task -----------------------------------------------------------------------------
def test_arena_spec_and_build():
    assert spec.model("gla(prefix=true)").prefix and not spec.model("gla").prefix
    assert spec.model("mamba2[-1,1](prefix=1)").prefix
    with pytest.raises(ValueError, match="attention has none"):
        spec.model("transformer(prefix=true)")
    with pytest.raises(TypeError, match="prefix must be a bool"):
        spec.model("gla(prefix=2)")
    cfg = ArenaConfig(models=["gla"], tasks=["parity"], d_model=8, n_layers=2)
    with pytest.raises(ValueError, match="'parity' gives no context prefix .tasks that do: "
                                         "mqar, set_disjointness."):
        build_model(spec.model("gla(prefix=true)"), tasks.get("parity"), cfg)


def test_arena_trains_a_prefix_model(tmp_path):
    task = tasks.get("set_disjointness", vocab=512)
    cfg = ArenaConfig(models=["gla"], tasks=["x"], d_model=8, n_layers=2, steps=2,
                      eval_examples=2, early_stop=None)
    model_spec = spec.model("gla(prefix=true)")
    result = train_run(model_spec, task, 0, cfg, tmp_path)
    assert result["steps"] == 2 and set(result["scores"]) == {64, 128, 256}
    model = build_model(model_spec, task, cfg)
    x = task.sample(2, 9, tasks.generator(0, "train"))[0]
    assert outputs(model, task, x).shape == (2, 9, 512)


@pytest.mark.parametrize("length,ratio", [(16, 0.25), (33, 0.75), (5, 0.5)])
def test_set_disjointness_read_twice(length, ratio):
    once = tasks.get("set_disjointness", vocab=128, ratio=ratio)
    twice = tasks.get("set_disjointness", vocab=128, ratio=ratio, reads=2)
    x1, y1, m1 = once.sample(8, length, tasks.generator(3, "train"))
    x2, y2, m2 = twice.sample(8, length, tasks.generator(3, "train"))
    n = length - 1  # one read of the context 1 A 2 B
    assert x2.shape == (8, 2 * n + 1)
    assert torch.equal(x2[:, :n], x1[:, :n]) and torch.equal(x2[:, n:], x1)  # the same draws
    assert torch.equal(y2[:, -1], y1[:, -1]) and m2[:, -1].all() and not m2[:, :-1].any()
    assert not y2[:, :-1].any()
    assert twice.prefix(x2).tolist() == [2 * n] * 8 and once.prefix(x1).tolist() == [n] * 8
    assert twice.decode(x2[0], y2[0], m2[0]) == "reads : 2\n" + once.decode(x1[0], y1[0], m1[0])
    with pytest.raises(ValueError, match="reads must be an int >= 1, got 0"):
        tasks.get("set_disjointness", reads=0)


def test_only_tasks_with_a_context_have_a_prefix():
    assert tasks.get("set_disjointness").has_prefix
    parity = tasks.get("parity")
    assert not parity.has_prefix and parity.prefix(torch.zeros(2, 3)) is None
    mqar = tasks.get("mqar", pairs=5)  # the context: the 2 * pairs key-value steps
    x, _, mask = mqar.sample(16, 40, tasks.generator(0, "train"))
    assert mqar.has_prefix and mqar.prefix(x).tolist() == [10] * 16
    assert not mask[:, :10].any() and (x[:, 10:][mask[:, 10:]] < 128).all()  # queries are keys
