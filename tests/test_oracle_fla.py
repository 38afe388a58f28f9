"""rnnlab's cells on the scan engine against fla's pure-PyTorch naive loops, an implementation
written by others: GLA, HGRN (a diagonal linear scan) and the gated delta rule. Skipped cleanly
when fla is not installed (it is in the dev extras)."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab.ops.diagonal import linear_scan

from .helpers import assert_close, fla_naive


@pytest.mark.parametrize("T", [1, 37])
def test_hgrn_equals_linear_scan(T):
    fn = fla_naive("hgrn.naive").naive_recurrent_hgrn
    x, g, h0 = torch.randn(2, T, 11), -torch.rand(2, T, 11), torch.randn(2, 11)
    o_fla, h_fla = fn(x, g, initial_state=h0, output_final_state=True)
    o, h = linear_scan(g.exp(), x, initial_state=h0, output_final_state=True)
    assert_close(o, o_fla, what="hgrn outputs")
    assert_close(h, h_fla, what="hgrn final state")


@pytest.mark.parametrize("T", [1, 37])
def test_gla_cell_equals_fla(T):
    fn = fla_naive("gla.naive").naive_recurrent_gla
    torch.manual_seed(0)
    layer = rnnlab.Recurrent("gla", engine="scan", input_size=5, hidden_size=12, heads=2)
    cell = layer.cell
    x, S0 = torch.randn(3, T, 5), torch.randn(3, 2, cell.key_dim, cell.value_dim)
    q, k, log_a, v = cell._split(cell.project(x))  # (B, T, heads, .)
    q = q / cell.key_dim ** -0.5  # fla applies the K^-1/2 scale itself
    o_fla, S_fla = fn(q, k, v, log_a, initial_state=S0, output_final_state=True)
    y, S = layer(x, S0)
    assert_close(y, o_fla.flatten(2), what="gla outputs")
    assert_close(S, S_fla, what="gla final state")


@pytest.mark.parametrize("T", [1, 37])
def test_gated_deltanet_cell_equals_fla(T):
    fn = fla_naive("gated_delta_rule.naive").naive_recurrent_gated_delta_rule
    torch.manual_seed(0)
    layer = rnnlab.Recurrent("gated_deltanet", engine="scan", input_size=5, hidden_size=12,
                             heads=2, allow_neg_eigval=True)
    cell = layer.cell
    x, S0 = torch.randn(3, T, 5), torch.randn(3, 2, cell.key_dim, cell.value_dim)
    q, k, v, beta, g = cell.delta_inputs(cell.project(x))
    o_fla, S_fla = fn(q, k, v, beta, g, scale=1.0, initial_state=S0, output_final_state=True)
    y, S = layer(x, S0)
    assert_close(y, o_fla.flatten(2).to(y.dtype), what="gated deltanet outputs")
    assert_close(S, S_fla, what="gated deltanet final state")
