"""Options are type-checked, and their ranges too (issue 12, item 4).

Covers:
- every option of every registered cell, from its constructor's signature: a string where a
  bool is expected (``allow_neg_eigval='false'`` used to act as True), a float or bool where an
  int is, a string where a number is: a TypeError naming the option; ints pass as floats; an
  unknown option: a ValueError listing the valid ones and suggesting the closest;
- the torch.nn drop-ins raise the exception type torch.nn raises for the same wrong argument,
  and refuse a non-bool flag (``batch_first="False"``);
- specs (``--models``, ``--tasks``, ``--cell-options``): booleans are true/false/1/0 in any case,
  anything else is refused naming the option; unknown names suggest the closest;
- a cell built directly (``Mamba(4, 8, allow_neg_eigval='false')``) is checked as ``cells.get``
  checks it, once per construction, and still pickles, copies and runs with given parameters;
- every numeric option of every cell, given 0, -1, NaN, inf or a huge value, is either refused
  naming the option or gives finite parameters and a finite forward (``key_dim=0`` used to mean
  the default, ``dt_min > dt_max`` a raw RuntimeError, ``max_phase=0`` non-finite parameters).
The API errors of item 10 are in test_api_errors.py.
"""
from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

import rnnlab
from rnnlab import cells, engines
from rnnlab import nn as rnn
from rnnlab.arena import spec
from rnnlab.cells import base as cell_base
from rnnlab.cells.base import as_tuple
from rnnlab.cells.registry import constructor, option_types
from rnnlab.models.attention import CausalSelfAttention
from rnnlab.models.lm import LM

FIXED = ("input_size", "hidden_size", "device", "dtype")
WRONG = {bool: "false", int: 2.0, float: "0.1", str: 1}  # a wrong value for each option type


def _cell_options():
    for name in cells.available():
        for option, accepted in option_types(cells.registry.constructor(name)).items():
            if option not in FIXED and accepted:
                yield pytest.param(name, option, accepted, id=f"{name}-{option}")


# ---- item 4: options are type-checked ------------------------------------------------------

@pytest.mark.parametrize("name, option, accepted", list(_cell_options()))
def test_every_cell_option_refuses_a_wrong_type(name, option, accepted):
    wrong = WRONG[accepted[0]]
    with pytest.raises(TypeError, match=rf"cell '{name}': {option} must be .*got {wrong!r}"):
        cells.get(name, 4, 8, device="meta", **{option: wrong})


@pytest.mark.parametrize("value", ["false", "no", 1, 0, None, "True"])
def test_a_bool_option_must_be_a_bool(value):
    with pytest.raises(TypeError, match=r"allow_neg_eigval must be a bool \(True or False\)"):
        cells.get("mamba", 4, 8, allow_neg_eigval=value)
    assert cells.get("mamba", 4, 8, allow_neg_eigval=False).allow_neg_eigval is False
    with pytest.raises(ValueError):  # also a ValueError: user errors stay catchable as one
        cells.get("mamba", 4, 8, allow_neg_eigval=value)


def test_no_float_option_takes_nan():
    with pytest.raises(ValueError, match=r"cell 'lstm': forget_bias must be a number, got nan"):
        cells.get("lstm", 4, 8, forget_bias=float("nan"))


def test_ints_pass_as_floats_but_not_bools_as_ints():
    assert cells.get("lru", 4, 8, r_min=0, r_max=1).hidden_size == 8
    with pytest.raises(TypeError, match=r"state_size must be an int, got True \(bool\)"):
        cells.get("mamba", 4, 8, state_size=True)
    with pytest.raises(TypeError, match=r"GRU: input_size must be an int >= 1, got 2.5"):
        cells.get("gru", 2.5, 8)


def test_unknown_option_lists_the_valid_ones_and_the_closest():
    with pytest.raises(ValueError, match=r"cell 'mamba': unknown option 'allow_neg_eigvals' "
                                         r"\(did you mean 'allow_neg_eigval'\?\); valid options: "
                                         r"state_size, .*allow_neg_eigval"):
        cells.get("mamba", 4, 8, allow_neg_eigvals=True)
    with pytest.raises(ValueError, match=r"unknown option 'heads'; valid options: bias, "):
        rnnlab.Recurrent("gru", input_size=4, hidden_size=8, heads=2)


def _torch_error(cls, kwargs):
    try:
        cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - the reference's exception type, whatever it is
        return type(e)
    return None


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("arg, value", [
    ("hidden_size", 2.5), ("input_size", "2"), ("num_layers", 2.0), ("num_layers", "2"),
    ("batch_first", "False"), ("batch_first", 1), ("bias", "no"), ("bias", 0),
    ("hidden_size", 0), ("num_layers", 0), ("dropout", 2), ("dropout", "0.1"),
])
def test_drop_ins_raise_what_torch_raises(kind, arg, value):
    kwargs = {"input_size": 2, "hidden_size": 3, arg: value}
    want = _torch_error(getattr(torch.nn, kind), kwargs)
    assert want in (TypeError, ValueError)
    with pytest.raises(want, match=rf"{kind}: {arg} must be"):
        getattr(rnn, kind)(**kwargs)


@pytest.mark.parametrize("arg", ["batch_first", "bidirectional", "bias"])
def test_drop_in_flags_must_be_bools(arg):
    with pytest.raises(TypeError, match=rf"GRU: {arg} must be a bool \(True or False\), "
                                        rf"got 'False'$"):
        rnn.GRU(2, 3, **{arg: "False"})
    with pytest.raises(TypeError, match=r"LSTM: proj_size must be an int >= 0, got 1.5"):
        rnn.LSTM(2, 3, proj_size=1.5)


@pytest.mark.parametrize("text, value", [("true", True), ("FALSE", False), ("True", True),
                                         ("1", True), ("0", False)])
def test_spec_booleans(text, value):
    assert spec.model(f"mamba(allow_neg_eigval={text})").options == {"allow_neg_eigval": value}
    assert spec.cell_options(f"allow_neg_eigval={text}", "deltanet") == {"allow_neg_eigval": value}
    assert spec.task(f"mod_arith(brackets={text})")[1].brackets is value


@pytest.mark.parametrize("text", ["maybe", "no", "yes", "2", "0.0", "'true'"])
def test_spec_refuses_other_booleans_naming_the_option(text):
    with pytest.raises(ValueError, match=r"--models: option allow_neg_eigval in "
                                         r".mamba\(allow_neg_eigval=.*must be true or false"):
        spec.model(f"mamba(allow_neg_eigval={text})")
    with pytest.raises(ValueError, match=r"--cell-options: option allow_neg_eigval .*must be "
                                         r"true or false"):
        spec.cell_options(f"allow_neg_eigval={text}", "mamba")
    with pytest.raises(ValueError, match=r"--tasks: option brackets .*must be true or false"):
        spec.task(f"mod_arith(brackets={text})")


def test_spec_checks_names_and_types_of_options():
    with pytest.raises(TypeError, match=r"--models: 'mamba\(state_size=abc\)': state_size must "
                                        r"be an int, got 'abc'"):
        spec.model("mamba(state_size=abc)")
    with pytest.raises(ValueError, match=r"unknown option 'head' \(did you mean 'heads'\?\)"):
        spec.model("transformer(head=2)")
    with pytest.raises(ValueError, match=r"option input_size .* is set by the model"):
        spec.model("gru(input_size=3)")
    with pytest.raises(ValueError, match=r"unknown option 'supervize' \(did you mean "
                                         r"'supervise'\?\)"):
        spec.task("parity(supervize=all)")
    with pytest.raises(ValueError, match=r"--cell-options: attention layers take no cell"):
        spec.cell_options("heads=2", "attention")


def test_lm_and_attention_arguments_are_type_checked():
    with pytest.raises(TypeError, match=r"LM: tie_embeddings must be a bool .*got 'false'"):
        LM(10, 8, 1, tie_embeddings="false")
    with pytest.raises(TypeError, match=r"LM: d_model must be an int, got 8.0"):
        LM(10, 8.0, 1)
    with pytest.raises(TypeError, match=r"cell 'mamba': allow_neg_eigval must be a bool"):
        LM(10, 8, 1, cell="mamba", cell_options={"allow_neg_eigval": "no"})
    with pytest.raises(ValueError, match=r"LM: cell_options apply to recurrent layers"):
        LM(10, 8, 1, cell="attention", cell_options={"heads": 2})
    with pytest.raises(ValueError, match=r"LM: window applies to attention layers"):
        LM(10, 8, 2, cell="gru", window=4)
    with pytest.raises(TypeError, match=r"CausalSelfAttention: heads must be an int, got 2.0"):
        CausalSelfAttention(8, heads=2.0)


# ---- direct construction is checked as cells.get checks ----------------------------------------

@pytest.mark.parametrize("name, option, accepted", list(_cell_options()))
def test_direct_construction_refuses_a_wrong_type(name, option, accepted):
    cls, wrong = constructor(name), WRONG[accepted[0]]
    with pytest.raises(TypeError, match=rf"{cls.__name__}: {option} must be .*got {wrong!r}"):
        cls(4, 8, device="meta", **{option: wrong})


def test_direct_construction_checks_positional_unknown_and_missing_arguments():
    from rnnlab.cells.mamba import Mamba
    with pytest.raises(TypeError, match=r"Mamba: allow_neg_eigval must be a bool .*got 'false'"):
        Mamba(4, 8, allow_neg_eigval="false")
    with pytest.raises(TypeError, match=r"Mamba: dt_min must be a number, got 'x' \(str\)"):
        Mamba(4, 8, 16, None, "x")  # by position
    with pytest.raises(ValueError, match=r"Mamba: unknown option 'allow_neg_eigvals' \(did you "
                                         r"mean 'allow_neg_eigval'\?\); valid options: state_"):
        Mamba(4, 8, allow_neg_eigvals=True)
    with pytest.raises(TypeError, match=r"Mamba: missing a required argument: 'hidden_size'"):
        Mamba(4)
    with pytest.raises(TypeError, match=r"LSTM: hidden_size must be an int >= 1, got '8'"):
        cells.LSTM(4, "8", proj_size=2)  # sizes are checked before the constructor uses them


def test_each_construction_is_checked_once_in_its_own_terms(monkeypatch):
    calls = []
    real = cell_base.check_call

    def counted(owner, *args, **kwargs):
        calls.append(owner)
        return real(owner, *args, **kwargs)

    monkeypatch.setattr(cell_base, "check_call", counted)
    cells.GatedDeltaNet(4, 8, heads=2)  # three constructors deep
    cells.get("gated_deltanet", 4, 8)
    assert calls == ["GatedDeltaNet", "cell 'gated_deltanet'"]

    class Plain(cells.GRU):  # inherits GRU's constructor and its checks
        pass

    class Square(cells.GRU):  # a constructor of its own: checked against its own signature
        def __init__(self, width: int, bias: bool = True):
            super().__init__(width, width, bias=bias)

    with pytest.raises(TypeError, match=r"Plain: bias must be a bool"):
        Plain(4, 8, bias="no")
    with pytest.raises(TypeError, match=r"Square: width must be an int, got 2.5"):
        Square(2.5)
    calls.clear()
    assert Square(3).hidden_size == 3 and calls == ["Square"]
    with pytest.raises(TypeError, match=r"^GRU: bias"):  # the registry's name does not linger
        cells.GRU(4, 8, bias="no")


def test_checked_cells_still_pickle_copy_and_run_with_given_parameters():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4)
    for cell in (cells.get("mamba", 4, 8), cells.Mamba(4, 8, state_size=4), cells.LSTM(4, 8)):
        want = engines.Sequential()(cell, x)[0]
        for twin in (pickle.loads(pickle.dumps(cell)), copy.deepcopy(cell)):
            assert type(twin) is type(cell) and torch.equal(engines.Sequential()(twin, x)[0], want)
        params = {k: v.detach().clone().requires_grad_() for k, v in cell.named_parameters()}
        y = engines.Sequential()(cell, x, params=params)[0]
        torch.autograd.grad(y.sum(), list(params.values()))
        assert torch.equal(y, want)


# ---- option ranges: meaningful or refused ------------------------------------------------------

HOSTILE = {int: [0, -1, 100, -10 ** 9],
           float: [0.0, -1.0, math.nan, math.inf, -math.inf, 1e30, -1e30]}


def _hostile_options():
    for name in cells.available():
        for option, accepted in option_types(constructor(name)).items():
            kind = next((t for t in (int, float) if t in (accepted or ())), None)
            if option in FIXED or kind is None:
                continue
            for value in HOSTILE[kind]:
                yield pytest.param(name, option, value, id=f"{name}-{option}-{value}")


@pytest.mark.parametrize("name, option, value", list(_hostile_options()))
def test_every_numeric_option_is_meaningful_or_refused(name, option, value):
    torch.manual_seed(0)
    try:
        cell = cells.get(name, 4, 8, **{option: value})
    except (ValueError, TypeError) as e:
        assert option in str(e) and repr(value) in str(e), str(e)  # names both
        return
    for pname, p in cell.named_parameters():
        assert torch.isfinite(p).all(), f"{name}({option}={value}): {pname} is not finite"
    x = torch.randn(2, 3, 4)
    for engine in {engines.Sequential(), engines.auto(cell)}:
        y, h = engine(cell, x)
        assert torch.isfinite(y).all(), f"{name}({option}={value}) on {engine.name}"
        assert all(torch.isfinite(t).all() for t in as_tuple(h))


@pytest.mark.parametrize("name, options, match", [
    ("gla", dict(key_dim=0), r"GLA: key_dim must be in \[1, inf\) or None, got 0"),
    ("deltanet", dict(key_dim=-1), r"DeltaNet: key_dim must be in \[1, inf\) or None, got -1"),
    ("mamba", dict(dt_rank=0), r"Mamba: dt_rank must be in \[1, inf\) or None, got 0"),
    ("mamba2", dict(head_dim=0), r"Mamba2: head_dim must be in \[1, inf\) or None, got 0"),
    ("mamba2", dict(state_size=-1), r"Mamba2: state_size must be in \[1, inf\), got -1"),
    ("dlr", dict(state_size=0), r"DLR: state_size must be in \[1, inf\), got 0"),
    ("mamba", dict(dt_min=0.5), r"Mamba: dt_min must be in \(0, 0.1\] \(at most dt_max\), "
                                r"got 0.5"),
    ("s4d", dict(dt_max=math.inf), r"S4D: dt_max must be in \(0, inf\), got inf"),
    ("mamba", dict(dt_floor=-1e-3), r"Mamba: dt_floor must be in \[0, inf\), got -0.001"),
    ("gla", dict(tau=0.0), r"GLA: tau must be in \(0, inf\), got 0.0"),
    ("lru", dict(max_phase=0.0), r"LRU: max_phase must be in \(0, inf\), got 0.0"),
    ("lru", dict(r_min=0.5, r_max=0.5), r"LRU: r_max must be in \(0.5, 1\] \(above r_min\)"),
    ("lstm", dict(forget_bias=math.inf), r"LSTM: forget_bias must be in \(-inf, inf\), got inf"),
])
def test_out_of_range_options_name_the_range_and_the_value(name, options, match):
    with pytest.raises(ValueError, match=match):
        cells.get(name, 4, 8, **options)


@pytest.mark.parametrize("name, options", [
    ("s4d", dict(dt_min=1e-300)), ("lssl", dict(dt_min=1e-300)), ("mamba2", dict(dt_min=1e-300)),
    ("gated_deltanet", dict(dt_min=1e-300)), ("lru", dict(r_max=1e-300)),
    ("lru", dict(max_phase=1e-300)), ("lru", dict(r_min=1 - 1e-12)),
])
def test_tiny_steps_radii_and_phases_give_finite_parameters(name, options):
    cell = cells.get(name, 4, 8, **options)  # they round to the smallest normal number, not 0
    assert all(torch.isfinite(p).all() for p in cell.parameters())


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64, "float32"])
def test_cells_refuse_a_parameter_dtype_that_is_not_real_floating(dtype):
    """An int or complex parameter dtype used to pass and fail at the first step in torch's
    words; every cell refuses it when built, by cells.get or directly."""
    for name in ("gru", "lru", "pd_ssm", "mamba"):
        with pytest.raises(TypeError, match=rf"cell '{name}': dtype must be a real floating "
                                            rf"torch.dtype"):
            cells.get(name, 4, 8, dtype=dtype)
    with pytest.raises(TypeError, match="GRU.*dtype must be a real floating"):
        constructor("gru")(4, 8, dtype=dtype)
