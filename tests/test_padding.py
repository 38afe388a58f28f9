"""Padding has no influence, forward and backward, on every engine: whatever the steps past a
sequence's length hold (NaN, inf, a huge finite number), the outputs, the final state and every
gradient equal those of clean padding, the gradients are finite, and the padded inputs get a
gradient of exactly 0. Also above the engines: the FFT convolution op with ``lengths`` and the
classifier's pooling."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import cells, testing
from rnnlab.cells import as_tuple
from rnnlab.models.classifier import Classifier
from rnnlab.ops import ssm_convolution, ssm_convolution_reference

from .helpers import cell_engine_pairs

D, H = 5, 6

PAIRS = cell_engine_pairs(D, H)
PARALLEL = [(name, engine) for name, engine in PAIRS if engine != "sequential"]


@pytest.mark.parametrize("name,engine", PARALLEL, ids=[f"{n}-{e}" for n, e in PARALLEL])
def test_nonfinite_or_huge_padding_has_no_influence(name, engine):
    """``rnnlab.testing.check_padding``: NaN, inf, -inf and 1e30 padding change no output,
    state or gradient and get no gradient (the sequential engine: ``test_cells_generic.py``)."""
    testing.check_padding(name, engine=engine, input_size=D, hidden_size=H)


def test_the_issue_case_gives_finite_parameter_gradients_on_every_engine():
    """``x[1, 3:] = nan``, lengths ``[6, 3]``, ``(y.sum() + h.sum()).backward()``."""
    for name, engine in PAIRS:
        torch.manual_seed(0)
        layer = rnnlab.Recurrent(cells.get(name, D, H), engine=engine)
        x = torch.randn(2, 6, D)
        x[1, 3:] = float("nan")
        y, h = layer(x, lengths=torch.tensor([6, 3]))
        (y.sum() + sum(t.real.sum() for t in as_tuple(h))).backward()
        for p, t in layer.named_parameters():
            assert torch.isfinite(t.grad).all(), f"{name} on {engine}: NaN gradient of {p}"


@pytest.mark.parametrize("dense", [False, True], ids=["diagonal", "dense"])
@pytest.mark.parametrize("fill", [float("nan"), 1e30])
def test_convolution_op_ignores_what_lies_past_lengths(dense, fill):
    """The FFT mixes every step into every other: padding must be cut out before it, or a NaN
    reaches the valid outputs and a huge value swamps them with its rounding error."""
    torch.manual_seed(0)
    Hc, N, T = 3, 4, 9
    if dense:
        A, B, C = 0.3 * torch.randn(Hc, N, N), torch.randn(Hc, N), torch.randn(Hc, N)
    else:
        A = torch.complex(-0.5 * torch.rand(Hc, N), torch.randn(Hc, N)).exp()
        B, C = (torch.randn(Hc, N, dtype=torch.complex64) for _ in range(2))
    u = torch.randn(3, T, Hc)
    lengths = torch.tensor([9, 4, 0])
    x0 = torch.randn(3, Hc, N, dtype=B.dtype)
    y_ref, h_ref = ssm_convolution_reference(u, A, B, C, x0, True, lengths=lengths)
    dirty = u.clone()
    dirty[1, 4:], dirty[2] = fill, fill
    dirty.requires_grad_()
    y, h = ssm_convolution(dirty, A, B, C, x0, True, lengths=lengths)
    valid = torch.arange(T) < lengths[:, None]  # (B, T)
    assert torch.allclose(y[valid], y_ref[valid], atol=1e-5)
    assert torch.allclose(h, h_ref, atol=1e-5)
    (y[valid].sum() + h.abs().sum()).backward()
    assert torch.isfinite(dirty.grad).all() and (dirty.grad[~valid] == 0).all()


@pytest.mark.parametrize("pooling", ["mean", "max", "last"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_pooling_ignores_nonfinite_padded_features(pooling, bidirectional):
    """Features past a sequence's length never reach the pooled vector or its gradient, even
    when they are not finite (mean pooling used a mask product: 0 * NaN is NaN)."""
    torch.manual_seed(0)
    clf = Classifier(7, 2, d_model=4, n_layers=1, pooling=pooling, bidirectional=bidirectional)
    h = torch.randn(2, 5, 4)
    h[1, 2:] = float("nan")
    h.requires_grad_()
    pooled = clf.pool(h, torch.tensor([5, 2]))
    pooled.sum().backward()
    assert torch.isfinite(pooled).all()
    assert torch.isfinite(h.grad).all() and (h.grad[1, 2:] == 0).all()
