"""``rnnlab.testing``: ``check_cell`` passes on a sound cell defined outside the package
(minGRU), and fails, naming the property, on cells broken in each way it checks."""
from __future__ import annotations

import functools
import subprocess
import sys

import pytest
import torch
from torch import nn

from rnnlab import cells, testing
from rnnlab.cells.linear import LinearCell


class MinGRU(LinearCell):
    """minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): ``h_t = (1 - z_t) h_{t-1} +
    z_t h~_t`` with ``z_t = sigmoid(W_z x_t)``, ``h~_t = W_h x_t``."""
    structure = cells.Linear("diagonal")

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.proj = nn.Linear(input_size, 2 * hidden_size)

    def project(self, x):
        return self.proj(x)  # (B, T, D) -> (B, T, 2H): z's logits, h~

    def transition(self, u):
        k, h_tilde = u.chunk(2, dim=-1)
        z = torch.sigmoid(k)
        return 1 - z, z * h_tilde  # A, b: (B, T, H)


class Leaky(cells.Cell):
    """A sound nonlinear diagonal cell, the base of the broken ones below."""
    structure = cells.Diagonal()

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.inp = nn.Linear(input_size, hidden_size)

    def project(self, x):
        return self.inp(x)  # (B, T, D) -> (B, T, H)

    def step(self, u_t, h):
        return 0.8 * h + 0.2 * torch.tanh(u_t + h)


class WritesIntoState(Leaky):
    def step(self, u_t, h):
        return h.mul_(0.8).add(0.2 * torch.tanh(u_t))  # in place: not pure


class MixesChannels(Leaky):
    """Declares Diagonal, but each channel reads every other."""
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.mix = nn.Linear(hidden_size, hidden_size, bias=False)

    def step(self, u_t, h):
        return torch.tanh(u_t + self.mix(h))


class MinGRUMixesChannels(MinGRU):
    """A linear cell that declares Linear("diagonal") while its step reverses the channels."""
    def step(self, u_t, h):
        A, b = self.transition(u_t.unsqueeze(1))  # (B, 1, H) each
        return A[:, 0] * h.flip(-1) + b[:, 0]


class KeepsStateOutside(Leaky):
    """A running sum over time inside ``project``: a state the engine never carries between
    chunks, so streaming differs from one run."""
    def project(self, x):
        return self.inp(x).cumsum(1)  # (B, T, H)


class RoundsState(Leaky):
    """Its step returns an fp32 state whatever the run's dtype."""
    def step(self, u_t, h):
        return super().step(u_t, h).float()


def test_check_cell_passes_on_an_out_of_tree_linear_cell_on_every_engine():
    report = testing.check_cell(MinGRU)
    assert report.cell == "MinGRU"
    assert report.engines == ["sequential", "scan", "newton", "quasi"]
    assert report.skipped == {} and report.refused == {}
    for name in testing.CHECKS:
        assert any(p == name or p.startswith(f"{name}[") for p in report.passed), name
    assert "engines_agree[scan]" in report.passed and "padding[newton]" in report.passed
    assert "MinGRU: " in str(report)


def test_check_cell_skips_what_does_not_apply_and_engines_that_refuse():
    report = testing.check_cell(Leaky, engines=["scan", "newton"], checks=["transition",
                                                                          "padding"])
    assert report.engines == ["sequential", "newton"]
    assert "scan" in report.refused and "cannot run" in report.refused["scan"]
    assert set(report.skipped) == {"transition"}
    assert report.passed == ["padding[sequential]", "padding[newton]"]


def test_check_cell_takes_registered_names_and_partials():
    assert testing.check_cell("gru", checks=["step_contract", "structure"]).passed == \
        ["step_contract", "structure"]
    report = testing.check_cell(functools.partial(cells.get, "gla", heads=2),
                                checks=["structure"], hidden_size=4)
    assert report.cell == "get" and report.passed == ["structure"]


@pytest.mark.parametrize("cell,prop,detail", [
    (WritesIntoState, "step_contract", "wrote into its input state"),
    (MixesChannels, "structure", "outside the declared Diagonal()"),
    (MinGRUMixesChannels, "structure", "A mixes entries"),
    (KeepsStateOutside, "streaming", "split at"),
    (RoundsState, "step_contract", "torch.float32 state leaf 0 for a torch.float64 state"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_check_cell_fails_naming_the_property_a_broken_cell_breaks(cell, prop, detail):
    with pytest.raises(AssertionError) as err:
        testing.check_cell(cell)
    assert str(err.value).startswith(f"{cell.__name__}: {prop}: ")
    assert detail in str(err.value)


def test_each_property_fails_on_its_own():
    """The checks after the first failing one would also catch these cells."""
    with pytest.raises(AssertionError, match=r"^RoundsState: dtypes: .*float64 inputs gave"):
        testing.check_dtypes(RoundsState)
    with pytest.raises(AssertionError, match=r"^MinGRUMixesChannels: transition: "):
        testing.check_transition(MinGRUMixesChannels)
    with pytest.raises(AssertionError, match=r"^WritesIntoState: gradients: raised"):
        testing.check_gradients(WritesIntoState)


def test_bad_arguments_are_value_and_type_errors_not_failures():
    with pytest.raises(ValueError, match="did you mean 'streaming'"):
        testing.check_cell(MinGRU, checks=["streamin"])
    with pytest.raises(TypeError, match="factory: expected a registered cell name"):
        testing.check_cell(42)
    with pytest.raises(ValueError, match="unknown name 'gruu'"):
        testing.check_cell("gruu")
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64, got "
                                         "torch.float16"):
        testing.check_streaming(MinGRU, dtype=torch.float16)
    with pytest.raises(ValueError, match="check_cell: dtype must be .* got 'float64'"):
        testing.check_cell(MinGRU, dtype="float64")
    with pytest.raises(ValueError, match="check_cell: engines must be one of .*, got 'newtn' "
                                         "\\(did you mean 'newton'\\?\\)"):
        testing.check_cell(MinGRU, engines=["newtn"])
    with pytest.raises(TypeError, match="check_streaming: .*'cut'"):
        testing.check_streaming(MinGRU, cut=[3])
    with pytest.raises(ValueError, match="hidden_size"):
        testing.check_lengths(MinGRU, hidden_size=0)
    with pytest.raises(ValueError, match="only for affine linear cells"):
        testing.check_transition(Leaky)
    with pytest.raises(ValueError, match="cannot run"):
        testing.check_padding(Leaky, engine="scan")
    with pytest.raises(ValueError, match="check_engines_agree: engine must be one of .*, got "
                                         "'scna' \\(did you mean 'scan'\\?\\)"):
        testing.check_engines_agree(MinGRU, engine="scna")


def test_a_check_leaves_the_callers_random_stream_alone():
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    testing.check_determinism(MinGRU)
    assert torch.equal(torch.rand(3), want)


def test_the_harness_loads_on_first_use_and_without_pytest():
    code = ("import sys, rnnlab; assert 'rnnlab.testing' not in sys.modules; "
            "rnnlab.testing.check_cell; assert 'pytest' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
