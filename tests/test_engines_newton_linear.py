"""Linear cells on the Newton engine: a linear structure implies its Jacobian, so Newton runs every
real linear kind (and must converge in one iteration where the step is linear, a free check of
both engines); complex states are refused; a LinearCell subclass may declare another structure."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import cells
from rnnlab.cells import Diagonal, map_state
from rnnlab.engines import Newton

from .helpers import assert_agrees

D, H = 5, 6


@pytest.mark.parametrize("name,cls", [("lru", "LRU"), ("s4d", "S4D"), ("dlr", "DLR")])
def test_newton_refuses_complex_linear_cells(name, cls):
    """A complex state has no place in the solve's real buffers: a clear refusal."""
    with pytest.raises(ValueError, match=rf"'newton' cannot run {cls}"):
        rnnlab.Recurrent(name, engine="newton", input_size=D, hidden_size=H)


@pytest.mark.parametrize("name", ["mamba", "gla", "mamba2", "deltanet", "gated_deltanet",
                                  "deltaproduct", "lssl", "mlstm", "minmax", "aaren"])
def test_real_linear_cells_run_on_newton_in_one_iteration(name):
    """A linear structure implies its Jacobian (``linearize.linear_on_newton``): diagonal and
    scalar kinds are ``Diagonal`` to Newton, matrix kinds N x N blocks, householder and monoid
    ``Dense``. The linearization of a linear step is exact, so Newton converges in one
    iteration, to the sequential engine's outputs, final state and gradients (a free check of
    both engines); a monoid's combine (mLSTM's max-stabilizer, MinMax's bounds, Aaren's
    running max) is only piecewise linear, so it may take more (mLSTM: 18 here)."""
    torch.manual_seed(0)
    cell = cells.get(name, 5, 8)
    h0 = map_state(lambda z: 0.5 * torch.randn(z.shape).abs(), cell.init_state(3))  # Aaren's
    # denominator must stay > 0; random (untied) values keep the monoids' max differentiable
    engine = Newton(tol=1e-6)
    stats = {}
    assert_agrees(cell, engine, torch.randn(3, 41, 5), h0, torch.tensor([41, 17, 0]), name)
    engine(cell, torch.randn(3, 41, 5), h0, stats=stats)
    assert stats["converged"]
    assert stats["iterations"] == 1 or cell.structure.kind == "monoid"


@pytest.mark.parametrize("structure", [Diagonal(), rnnlab.cells.Dense()])
def test_a_linear_cell_subclass_that_overrides_structure_runs(structure):
    """A ``LinearCell`` subclass may declare another structure for the engines (Mamba as a
    nonlinear Diagonal cell): its transition keeps its ancestor's kind, the scan engine no
    longer takes it, and Newton and the sequential engine agree."""
    Mamba = type(cells.get("mamba", 1, 1))
    cls = type("DiagonalMamba", (Mamba,), {"structure": structure})
    torch.manual_seed(0)
    cell = cls(D, H)
    assert cell.linear_kind == "diagonal"
    assert rnnlab.Recurrent(cell).engine_name == "sequential"
    with pytest.raises(ValueError, match=r"'scan' cannot run DiagonalMamba"):
        rnnlab.Recurrent(cell, engine="scan")
    assert_agrees(cell, Newton(), torch.randn(2, 9, D), cell.init_state(2), None, "sub")
