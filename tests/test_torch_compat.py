"""The drop-ins ``rnnlab.nn.RNN``/``GRU``/``LSTM`` against ``torch.nn.RNN``/``GRU``/``LSTM``.

Covers:
- parameter names and order equal torch's; ``load_state_dict`` works torch -> rnnlab and
  rnnlab -> torch (RNN tanh/relu, GRU, LSTM with and without proj_size; bias; 1-3 layers;
  bidirectional);
- parity after loading torch's weights, on randomized configurations (hypothesis): outputs, final
  states, and gradients w.r.t. the input, h0 (c0) and every parameter under a random upstream
  gradient, for plain, unbatched and packed inputs (``pack_padded_sequence`` sorted and unsorted,
  ``pack_sequence``), batch_first, h0 given or not, bias False, proj_size; fp32 at rel err 1e-5,
  fp64 (``.double()``) at 1e-10;
- the packed output: its fields and ``pad_packed_sequence`` of it equal torch's;
- dropout between layers (train differs from eval, eval equals torch) and torch's warning for
  dropout with one layer;
- errors for bad arguments, each naming the argument;
- ``engine=``: "sequential", "auto", and a bad name.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import (PackedSequence, pack_padded_sequence, pack_sequence,
                                pad_packed_sequence)

from rnnlab import nn as rnn

from .helpers import TOL, rel_err

KINDS = ("rnn_tanh", "rnn_relu", "gru", "lstm")
MODES = ("tensor", "unbatched", "packed_unsorted", "packed_sorted", "pack_sequence")

# torch's own note that its CPU LSTM with proj_size skips oneDNN: not ours to report.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")


def build(kind: str, D: int, H: int, proj: int = 0, dtype=torch.float32, **kw):
    """``(rnnlab module, torch module)`` of one kind, rnnlab holding torch's weights."""
    cls = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "gru": "GRU", "lstm": "LSTM"}[kind]
    if kind.startswith("rnn_"):
        kw["nonlinearity"] = kind[4:]
    if proj:
        kw["proj_size"] = proj
    ref = getattr(torch.nn, cls)(D, H, **kw)
    mod = getattr(rnn, cls)(D, H, **kw)
    mod.load_state_dict(ref.state_dict())
    if dtype == torch.float64:
        mod.double(), ref.double()
    return mod, ref


def names(m: torch.nn.Module):
    return [n for n, _ in m.named_parameters()]


# ---- 1. parameter names, order and state dicts ----------------------------------------------

ARCHS = [("rnn_tanh", 0), ("rnn_relu", 0), ("gru", 0), ("lstm", 0), ("lstm", 3)]


@pytest.mark.parametrize("kind,proj", ARCHS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("bidir", [False, True])
def test_names_and_state_dict_both_ways(kind, proj, bias, layers, bidir):
    kw = dict(num_layers=layers, bias=bias, bidirectional=bidir)
    mod, ref = build(kind, 4, 6, proj, **kw)  # torch -> rnnlab (strict)
    assert names(mod) == names(ref)
    for (n, a), b in zip(mod.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), n
    mod.reset_parameters()
    fresh = build(kind, 4, 6, proj, **kw)[1]
    fresh.load_state_dict(mod.state_dict())  # rnnlab -> torch (strict)
    for (n, a), b in zip(mod.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), n


# ---- 2, 6. parity with torch on random configurations ---------------------------------------

@st.composite
def configs(draw):
    kind, H = draw(st.sampled_from(KINDS)), draw(st.integers(5, 13))
    use_proj = kind == "lstm" and draw(st.booleans())
    return dict(kind=kind, D=draw(st.integers(3, 9)), H=H, T=draw(st.integers(1, 17)),
                B=draw(st.integers(1, 5)), num_layers=draw(st.integers(1, 3)),
                bidirectional=draw(st.booleans()), batch_first=draw(st.booleans()),
                bias=draw(st.booleans()), proj=draw(st.integers(1, H - 1)) if use_proj else 0,
                mode=draw(st.sampled_from(MODES)), h0=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 31 - 1)))


def make_input(cfg, dtype, gen):
    """``(leaf, make)``: ``make()`` builds a fresh module input (tensor or packed) from ``leaf``."""
    B, T, D, mode = cfg["B"], cfg["T"], cfg["D"], cfg["mode"]

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=dtype).requires_grad_()
    if mode == "unbatched":
        x = randn(T, D)
        return x, lambda: x
    if mode == "tensor":
        x = randn(B, T, D) if cfg["batch_first"] else randn(T, B, D)
        return x, lambda: x
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    if mode == "packed_sorted":
        lengths = lengths.sort(descending=True).values
    x = randn(B, T, D)
    if mode == "pack_sequence":
        return x, lambda: pack_sequence([x[b, :n] for b, n in enumerate(lengths.tolist())],
                                        enforce_sorted=False)
    return x, lambda: pack_padded_sequence(x, lengths, batch_first=True,
                                           enforce_sorted=mode == "packed_sorted")


def make_hx(cfg, dtype, gen):
    """Random ``h0`` (LSTM: ``(h0, c0)``) shaped as torch wants, or None."""
    if not cfg["h0"]:
        return None
    ld = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
    batch = () if cfg["mode"] == "unbatched" else (cfg["B"],)
    shapes = [(ld, *batch, cfg["proj"] or cfg["H"])]
    if cfg["kind"] == "lstm":
        shapes.append((ld, *batch, cfg["H"]))
    leaves = [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]
    return tuple(leaves) if len(leaves) == 2 else leaves[0]


def forward_and_grads(m, make, hx, leaves, gs):
    """Run ``m``; loss = <out, g_0> + <h_n, g_1> (+ <c_n, g_2>) with random ``gs`` (drawn on
    the first call); returns (out, out's tensor, final states, grads w.r.t. leaves+params, gs)."""
    out, hn = m(make(), hx)
    states = list(hn) if isinstance(hn, tuple) else [hn]
    flat = out.data if isinstance(out, PackedSequence) else out
    if gs is None:  # first call: draw the upstream gradients for this config
        gen = torch.Generator().manual_seed(1234)
        gs = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in [flat, *states]]
    loss = sum((t * g).sum() for t, g in zip([flat, *states], gs))
    grads = torch.autograd.grad(loss, [*leaves, *m.parameters()])
    return out, flat, states, grads, gs


def check_parity(cfg, dtype):
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    kw = {k: cfg[k] for k in ("num_layers", "bidirectional", "batch_first", "bias")}
    mod, ref = build(cfg["kind"], cfg["D"], cfg["H"], cfg["proj"], dtype, **kw)
    x, make = make_input(cfg, dtype, gen)
    hx = make_hx(cfg, dtype, gen)
    leaves = [x] + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx])
    out_r, flat_r, st_r, gr_r, gs = forward_and_grads(ref, make, hx, leaves, None)
    out_m, flat_m, st_m, gr_m, _ = forward_and_grads(mod, make, hx, leaves, gs)
    assert type(out_m) is type(out_r) and flat_m.dtype == flat_r.dtype == dtype
    if isinstance(out_r, PackedSequence):
        assert torch.equal(out_m.batch_sizes, out_r.batch_sizes)
    pairs = [("output", flat_m, flat_r)]
    pairs += [(f"final state {i}", a, b) for i, (a, b) in enumerate(zip(st_m, st_r, strict=True))]
    labels = ["grad input", "grad h0", "grad c0"][:len(leaves)] + [f"grad {n}" for n in names(ref)]
    pairs += list(zip(labels, gr_m, gr_r, strict=True))
    for label, a, b in pairs:
        assert a.dtype == b.dtype, f"{label}: dtype {a.dtype} vs {b.dtype}"
        err = rel_err(a, b)
        assert err <= TOL[dtype], f"{label}: rel err {err:.2e} > {TOL[dtype]:.0e} ({cfg})"


@settings(max_examples=40, deadline=None)
@given(cfg=configs())
def test_parity_fp32(cfg):
    check_parity(cfg, torch.float32)


@settings(max_examples=15, deadline=None)
@given(cfg=configs())
def test_parity_fp64_after_double(cfg):
    check_parity(cfg, torch.float64)


# ---- 7. packed output ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_output_matches_torch(kind, enforce_sorted):
    torch.manual_seed(0)
    mod, ref = build(kind, 3, 5, num_layers=2, bidirectional=True)
    lengths = torch.tensor([7, 6, 3, 1]) if enforce_sorted else torch.tensor([3, 7, 1, 6])
    packed = pack_padded_sequence(torch.randn(4, 7, 3), lengths, batch_first=True,
                                  enforce_sorted=enforce_sorted)
    out_m, out_r = mod(packed)[0], ref(packed)[0]
    assert rel_err(out_m.data, out_r.data) <= 1e-5
    for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        a, b = getattr(out_m, field), getattr(out_r, field)
        assert (a is None and b is None) or torch.equal(a, b), field
    (pad_m, len_m), (pad_r, len_r) = pad_packed_sequence(out_m), pad_packed_sequence(out_r)
    assert torch.equal(len_m, len_r) and rel_err(pad_m, pad_r) <= 1e-5


# ---- 3. dropout ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_dropout_between_layers_train_only(kind):
    torch.manual_seed(0)
    mod, ref = build(kind, 4, 7, num_layers=2, dropout=0.5)
    x = torch.randn(6, 3, 4)
    train_out = mod.train()(x)[0]
    mod.eval(), ref.eval()
    assert rel_err(mod(x)[0], ref(x)[0]) <= 1e-5
    assert rel_err(train_out, mod(x)[0]) > 1e-3


@pytest.mark.parametrize("cls", ["RNN", "GRU", "LSTM"])
def test_dropout_with_one_layer_warns(cls):
    with pytest.warns(UserWarning, match="dropout"):
        getattr(rnn, cls)(4, 7, num_layers=1, dropout=0.3)


# ---- 4. errors -------------------------------------------------------------------------------

def _lstm():
    return rnn.LSTM(3, 5, num_layers=2)


def _call(x, hx=None):
    return lambda: _lstm()(x, hx)


ERRORS = [
    pytest.param(_call(torch.randn(2, 4, 3, 3)), ValueError, r"input.*3-D", id="rank-4"),
    pytest.param(_call(torch.randn(3)), ValueError, r"input.*3-D", id="rank-1"),
    pytest.param(_call(torch.randn(4, 2, 3), (torch.zeros(2, 3, 5), torch.zeros(2, 2, 5))),
                 ValueError, r"hx h_0 expected shape \(2, 2, 5\)", id="h0-batch"),
    pytest.param(_call(torch.randn(4, 2, 3), (torch.zeros(2, 2, 5), torch.zeros(1, 2, 5))),
                 ValueError, r"hx c_0 expected shape \(2, 2, 5\)", id="c0-layers"),
    pytest.param(_call(torch.randn(4, 3), (torch.zeros(2, 1, 5), torch.zeros(2, 5))),
                 ValueError, r"hx h_0 expected shape \(2, 5\)", id="h0-unbatched"),
    pytest.param(_call(torch.randn(4, 2, 3), torch.zeros(2, 2, 5)),
                 ValueError, r"hx must be a tuple \(h_0, c_0\)", id="hx-not-tuple"),
    pytest.param(lambda: rnn.GRU(3, 5)(torch.randn(4, 2, 3), torch.zeros(2, 2, 5)),
                 ValueError, r"hx h_0 expected shape \(1, 2, 5\)", id="gru-h0-layers"),
    pytest.param(_call(torch.randn(4, 2, 6)), ValueError,
                 r"input must have input_size=3 .*got shape \(4, 2, 6\)", id="feature-size-name"),
    pytest.param(_call(torch.ones(4, 2, 3, dtype=torch.long)), TypeError, r"floating",
                 id="int-dtype"),
    pytest.param(_call(torch.ones(4, 2, 3, dtype=torch.long)), TypeError,
                 r"input must have a floating dtype, got torch.int64", id="int-dtype-name"),
    pytest.param(lambda: rnn.GRU(3, 5)(torch.randn(4, 2, 3), (torch.zeros(1, 2, 5),)),
                 ValueError, r"hx must be a tensor h_0, got tuple", id="gru-hx-1-tuple"),
    pytest.param(_call([[1.0, 2.0, 3.0]]), TypeError, r"input must be a Tensor", id="list"),
    pytest.param(lambda: rnn.RNN(3, 5, nonlinearity="sigmoid"), ValueError, r"nonlinearity",
                 id="nonlinearity"),
    pytest.param(lambda: rnn.LSTM(3, 5, proj_size=5), ValueError, r"proj_size", id="proj=H"),
    pytest.param(lambda: rnn.LSTM(3, 5, proj_size=7), ValueError, r"proj_size", id="proj>H"),
    pytest.param(lambda: rnn.GRU(3, 0), ValueError, r"hidden_size", id="hidden-0"),
    pytest.param(lambda: rnn.GRU(3, 5, dropout=1.5), ValueError, r"dropout", id="dropout>1"),
]


@pytest.mark.parametrize("fn,exc,match", ERRORS)
def test_bad_arguments_raise_naming_the_argument(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


# ---- 5. engine= --------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["sequential", "auto"])
@pytest.mark.parametrize("kind", KINDS)
def test_engine_argument(kind, engine):
    cls = {"rnn_tanh": rnn.RNN, "rnn_relu": rnn.RNN, "gru": rnn.GRU, "lstm": rnn.LSTM}[kind]
    extra = {"nonlinearity": kind[4:]} if kind.startswith("rnn_") else {}
    mod = cls(3, 5, num_layers=2, engine=engine, **extra)
    assert isinstance(mod.engine_name, str) and mod.engine_name
    if engine == "sequential":
        assert mod.engine_name == "sequential"
    ref = getattr(torch.nn, cls.__name__)(3, 5, num_layers=2, **extra)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    assert rel_err(mod(x)[0], ref(x)[0]) <= 1e-5


@pytest.mark.parametrize("engine", ["nope", "", None, 3])
def test_bad_engine_raises(engine):
    with pytest.raises(ValueError, match="engine"):
        rnn.GRU(3, 5, engine=engine)
