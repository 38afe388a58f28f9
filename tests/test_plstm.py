"""pLSTM: the 1-D cell, the 2-D layer (loop vs wavefront), the arrow data and the recipe."""
import functools
import itertools
import json

import pytest
import torch
from typer.testing import CliRunner

import rnnlab
from rnnlab.cells.plstm import PLSTM
from rnnlab.models.plstm2d import (
    PLSTM2D,
    RAW,
    gates_from,
    plstm2d_doubling,
    plstm2d_loop,
    plstm2d_wavefront,
)
from rnnlab.testing import check_cell
from rnnlab.train.arrows import arrows, ray
from rnnlab.train.plstm import PLSTMConfig, check
from rnnlab.train.plstm_cli import register

from .helpers import command_group

F64 = torch.float64


# ---- 1-D cell --------------------------------------------------------------------------------

def test_plstm_cell_passes_the_generic_checks():
    check_cell(functools.partial(PLSTM, heads=2, edge_dim=2))


def test_first_output_is_the_direct_term_only():
    # C_0 = 0, so y_1 = sigmoid(d) (q . k) v: hand-computed from the projection's pieces
    torch.manual_seed(0)
    cell = rnnlab.cells.get("plstm", 3, 4, edge_dim=2).double()
    x = torch.randn(1, 1, 3, dtype=F64)
    y, _ = rnnlab.Recurrent(cell, engine="sequential")(x)
    q, k, v, _, _, _, d = cell._split(cell.project(x)[:, 0])
    want = torch.sigmoid(d)[..., None] * (q * k).sum(-1, keepdim=True) * v
    torch.testing.assert_close(y[:, 0], want.flatten(-2))


def test_second_output_reads_the_first_edge_through_the_mark():
    # y_2 - direct_2 = M_2 . (q_2^T S_1 k_1 v_1^T) with edge_dim = 1
    torch.manual_seed(1)
    cell = rnnlab.cells.get("plstm", 3, 2, edge_dim=1).double()
    x = torch.randn(1, 2, 3, dtype=F64)
    y, _ = rnnlab.Recurrent(cell, engine="sequential")(x)
    q, k, v, _, s, m, d = cell._split(cell.project(x)[0])
    direct = torch.sigmoid(d[1])[..., None] * (q[1] * k[1]).sum(-1, keepdim=True) * v[1]
    read = m[1, :, 0, None] * s[0, :, 0, None] * (q[1] * k[0]).sum(-1, keepdim=True) * v[0]
    torch.testing.assert_close(y[0, 1], (direct + read).flatten())


def test_cell_rejects_a_bad_edge_dim():
    with pytest.raises(ValueError, match="edge_dim"):
        PLSTM(3, 4, edge_dim=0)


# ---- 2-D -------------------------------------------------------------------------------------

def _inputs(X, Y, n=2, K=3, V=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, X, Y, n, K), (2, X, Y, n, K), (2, X, Y, n, V), (2, X, Y, n, RAW)]
    return [torch.randn(*s, generator=g, dtype=F64, requires_grad=True) for s in shapes]


@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("size", [(5, 7), (7, 5), (1, 4), (3, 3), (1, 1), (9, 2)])
def test_2d_parallel_equals_loop_with_gradients(mode, size):
    q, k, v, raw = _inputs(*size)
    w = torch.randn(2, *size, 2, 4, dtype=F64)
    got = []
    for form in (plstm2d_loop, plstm2d_wavefront, plstm2d_doubling):
        y = form(q, k, v, gates_from(raw, mode))
        got.append((y, torch.autograd.grad((y * w).sum(), (q, k, v, raw))))
    for y, grads in got[1:]:
        torch.testing.assert_close(y, got[0][0])
        for a, b in zip(grads, got[0][1]):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", ["P", "D"])
def test_2d_layer_forms_agree_on_every_parameter_gradient(mode):
    torch.manual_seed(0)
    layer = PLSTM2D(4, heads=2, mode=mode, form="loop").double()
    x = torch.randn(2, 5, 7, 4, dtype=F64, requires_grad=True)
    grads = []
    for form in ("loop", "wavefront", "doubling"):
        layer.form = form
        y = layer(x)
        grads.append([y, *torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])])
    for other in grads[1:]:
        for a, b in zip(other, grads[0]):
            torch.testing.assert_close(a, b)


def _path_sum(g, src, dst):
    """Sum over monotone paths src -> dst of M . prod T . S (one head, K = V = 1), by
    enumerating the move sequences: the gate G(dst <- src) of the paper."""
    (i0, j0), (i1, j1) = src, dst
    moves = "R" * (j1 - j0) + "D" * (i1 - i0)
    total = 0.0
    for seq in set(itertools.permutations(moves)):
        at = lambda name, i, j: g[name][0, i, j, 0].item()  # noqa: E731
        val = at("s_r" if seq[0] == "R" else "s_d", i0, j0)
        i, j = i0, j0
        for a, b in zip(seq, seq[1:]):
            i, j = (i, j + 1) if a == "R" else (i + 1, j)
            came = "l" if a == "R" else "u"
            val *= at(("t_r" if b == "R" else "t_d") + came, i, j)
        val *= at("m_l" if seq[-1] == "R" else "m_u", i1, j1)
        total += val
    return total


@pytest.mark.parametrize("mode", ["P", "D"])
def test_2d_output_is_the_sum_over_monotone_paths(mode):
    X, Y = 3, 4
    g = gates_from(torch.randn(1, X, Y, 1, RAW, dtype=F64), mode)
    q, k = torch.ones(1, X, Y, 1, 1, dtype=F64), torch.ones(1, X, Y, 1, 1, dtype=F64)
    v = torch.randn(1, X, Y, 1, 1, dtype=F64)
    y = plstm2d_loop(q, k, v, g)[0, ..., 0, 0]
    for i1, j1 in itertools.product(range(X), range(Y)):
        want = g["d"][0, i1, j1, 0] * v[0, i1, j1, 0, 0]
        for i0, j0 in itertools.product(range(i1 + 1), range(j1 + 1)):
            if (i0, j0) != (i1, j1):
                want = want + _path_sum(g, (i0, j0), (i1, j1)) * v[0, i0, j0, 0, 0]
        torch.testing.assert_close(y[i1, j1], want)


def test_p_mode_bounds_each_in_edge_and_d_mode_is_a_multitree():
    raw = 4 * torch.randn(2, 6, 6, 2, RAW)
    p = gates_from(raw, "P")
    assert ((p["t_rl"].abs() + p["t_dl"].abs()) <= 1).all()  # in-edge from the left
    assert ((p["t_ru"].abs() + p["t_du"].abs()) <= 1).all()  # in-edge from above
    d = gates_from(raw, "D")
    assert (d["t_ru"] == 0).all()  # no turn from down back to right
    assert all((d[n].abs() <= 1).all() for n in ("t_rl", "t_dl", "t_du"))
    with pytest.raises(ValueError, match="mode"):
        gates_from(raw, "Q")


def test_four_orientations_let_every_cell_reach_every_other():
    torch.manual_seed(0)
    layer = PLSTM2D(4, heads=1)
    x = torch.randn(1, 4, 5, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x)[0, 0, 0].sum(), x)  # the top-left cell's output
    assert (grad.abs().sum(-1) > 0).all()


def test_2d_layer_argument_errors():
    with pytest.raises(ValueError, match="heads"):
        PLSTM2D(6, heads=4)
    with pytest.raises(ValueError, match="form"):
        PLSTM2D(4, form="quadtree")


# ---- arrows and recipe -----------------------------------------------------------------------

def test_arrow_labels_match_the_geometry():
    images, labels = arrows(200, 9, seed=3)
    assert images.shape == (200, 3, 9, 9) and labels.float().mean() == 0.5
    for img, y in zip(images, labels):
        shaft = {tuple(c) for c in img[0].nonzero().tolist()}
        (tip,) = [tuple(c) for c in img[1].nonzero().tolist()]
        (mark,) = [tuple(c) for c in img[2].nonzero().tolist()]
        back = next(iter(s for s in shaft if max(abs(s[0] - tip[0]), abs(s[1] - tip[1])) == 1))
        d = (tip[0] - back[0], tip[1] - back[1])
        assert (mark in ray(tip, d, 9)) == bool(y)


def test_arrows_and_config_errors():
    with pytest.raises(ValueError, match="size"):
        arrows(4, 2, 0)
    with pytest.raises(ValueError, match="models"):
        check(PLSTMConfig(models=["cnn"]))
    with pytest.raises(ValueError, match="heads"):
        check(PLSTMConfig(d_model=6, heads=4))
    with pytest.raises(ValueError, match="form"):
        check(PLSTMConfig(form="quadtree"))


def _app():
    return command_group(register)


def test_cli_runs_the_recipe_end_to_end_at_toy_size(tmp_path):
    out = tmp_path / "run"
    args = ["plstm", "--models", "plstm,plstm_d,vit,rowscan", "--train-size", "5",
            "--test-sizes", "5,7", "--d-model", "4", "--layers", "1", "--train-images", "16",
            "--test-images", "8", "--steps", "2", "--batch", "4", "--form", "doubling",
            "--out", str(out)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"plstm", "plstm_d", "vit", "rowscan"}
    assert set(report["results"]["vit"]["accuracy"]) == {"5", "7"}
    assert (out / "plstm.png").stat().st_size > 0


def test_cli_help_and_bad_arguments():
    runner = CliRunner()
    assert "Arrow-pointing" in runner.invoke(_app(), ["plstm", "--help"]).output
    bad = runner.invoke(_app(), ["plstm", "--models", "cnn", "--out", "x"])
    assert bad.exit_code == 2 and "models" in bad.output
    bad = runner.invoke(_app(), ["plstm", "--form", "quadtree", "--out", "x"])
    assert bad.exit_code == 2 and "form" in bad.output
