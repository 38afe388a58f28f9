"""Padding has no influence, forward and backward, on every engine: whatever the steps past a
sequence's length hold (NaN, inf, a huge finite number), the outputs, the final state and every
gradient equal those of clean padding, the gradients are finite, and the padded inputs get a
gradient of exactly 0. Also above the engines: the FFT convolution op with ``lengths`` and the
classifier's pooling."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import cells
from rnnlab.cells import as_tuple, map_state
from rnnlab.models.classifier import Classifier
from rnnlab.ops import ssm_convolution, ssm_convolution_reference

from .helpers import cell_engine_pairs, sq_norm

D, H = 5, 6
FILLS = [float("nan"), float("inf"), -float("inf"), 1e30]


PAIRS = cell_engine_pairs(D, H)


def _run(name, engine, x, lengths, h0=None):
    """(y, h_T, grad x, gradients of every parameter) of ``y.sum() + h.sum()`` (the issue's
    loss), plus the squared norm of h so that complex states count too."""
    torch.manual_seed(0)
    layer = rnnlab.Recurrent(cells.get(name, D, H), engine=engine)
    x = x.clone().requires_grad_()
    y, h = layer(x, h0, lengths=lengths)
    loss = y.sum() + sum(t.real.sum() for t in as_tuple(h)) + sq_norm(h)
    names, params = zip(*layer.cell.named_parameters())
    grads = torch.autograd.grad(loss, [x, *params])
    h = tuple(t.detach() for t in as_tuple(h))
    return y.detach(), h, grads[0], dict(zip(names, grads[1:]))


@pytest.mark.parametrize("name,engine", PAIRS, ids=[f"{n}-{e}" for n, e in PAIRS])
def test_nonfinite_or_huge_padding_has_no_influence(name, engine):
    torch.manual_seed(1)
    lengths = torch.tensor([6, 3, 0])
    clean = torch.randn(3, 6, D)
    clean[1, 3:], clean[2] = 0.0, 0.0
    h0 = map_state(lambda z: 0.5 * torch.randn(z.shape, dtype=z.dtype),
                   cells.get(name, D, H).init_state(3))
    y0, h0_T, gx0, gp0 = _run(name, engine, clean, lengths, h0)
    assert (y0[1, 3:] == 0).all() and (y0[2] == 0).all(), f"{name} on {engine}: padded outputs"
    assert all(torch.equal(a[2], b[2]) for a, b in zip(h0_T, as_tuple(h0))), \
        f"{name} on {engine}: an empty sequence's final state is not its initial state"
    for fill in FILLS:
        x = clean.clone()
        x[1, 3:], x[2] = fill, fill
        y, h, gx, gp = _run(name, engine, x, lengths, h0)
        what = f"{name} on {engine} with {fill} padding"
        assert torch.equal(y, y0), f"{what}: outputs changed"
        assert all(torch.equal(a, b) for a, b in zip(h, h0_T)), f"{what}: final state changed"
        assert torch.equal(gx, gx0) and (gx[1, 3:] == 0).all() and (gx[2] == 0).all(), \
            f"{what}: the input gradient changed or reaches the padding"
        for p, grad in gp.items():
            assert torch.isfinite(grad).all() and torch.equal(grad, gp0[p]), \
                f"{what}: the gradient of {p} changed"


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
