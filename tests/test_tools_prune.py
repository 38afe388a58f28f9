"""Pruning: which weights, the global threshold by hand, masks that survive optimizer steps,
state_dict save/load and every engine; the cubic schedule; random-graph RNNs; the lattice
reconstruction on small hand-drawn graphs; the CLI."""
from __future__ import annotations

import copy
import io
import json

import networkx as nx
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

import rnnlab
from rnnlab import cells
from rnnlab.tools import lattice, prune
from rnnlab.tools import prune_graphs as pg
from rnnlab.tools.prune_cli import register


def stack(cell="gru", engine="sequential", hidden=5, layers=2, seed=0):
    torch.manual_seed(seed)
    return prune.StackedRNN(cell, 4, 2, hidden, layers, engine)


# --- which weights ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_groups_of_the_classic_cells(name):
    assert prune.weight_groups(cells.get(name, 3, 4)) == {"i2h": ["weight_ih"],
                                                          "h2h": ["weight_hh"]}


def test_lstm_projection_is_hidden_to_hidden_and_unknown_cells_are_refused():
    groups = prune.weight_groups(cells.get("lstm", 3, 4, proj_size=2))
    assert groups == {"i2h": ["weight_ih"], "h2h": ["weight_hh", "weight_hr"]}
    with pytest.raises(ValueError, match="cannot tell input-to-hidden .* Mamba"):
        prune.weight_groups(cells.get("mamba", 4, 4))
    with pytest.raises(ValueError, match="holds no rnnlab cell"):
        prune.prunable(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="group must be one of"):
        prune.prunable(stack(), "gates")


# --- the threshold by hand -----------------------------------------------------------------
def hand_model():
    """One Elman layer, D = 1, H = 2: weight_ih = [[1], [-4]], weight_hh = [[2, -6], [3, 5]]."""
    model = prune.StackedRNN("rnn_tanh", 1, 2, hidden=2, layers=1, engine="sequential")
    cell = model.layers[0].cell
    with torch.no_grad():
        cell.weight_ih.copy_(torch.tensor([[1.], [-4.]]))
        cell.weight_hh.copy_(torch.tensor([[2., -6.], [3., 5.]]))
    return model, cell


def test_global_percentile_by_hand():
    model, cell = hand_model()
    masks = prune.magnitude_masks(model, 50)  # |w| = 1 4 | 2 6 3 5: the 3 smallest are 1, 2, 3
    assert masks["layers.0.cell.weight_ih"].tolist() == [[False], [True]]
    assert masks["layers.0.cell.weight_hh"].tolist() == [[False, True], [False, True]]
    h2h = prune.magnitude_masks(model, 50, "h2h")  # 2 3 5 6: 2 and 3 go
    assert list(h2h) == ["layers.0.cell.weight_hh"]
    assert h2h["layers.0.cell.weight_hh"].tolist() == [[False, True], [False, True]]
    assert all(m.all() for m in prune.magnitude_masks(model, 0).values())
    assert not any(m.any() for m in prune.magnitude_masks(model, 100).values())
    with pytest.raises(ValueError, match=r"percentile must be in \[0, 100\], got 101"):
        prune.magnitude_masks(model, 101)


def test_masks_only_grow_and_biases_stay():
    model, cell = hand_model()
    bias = cell.bias_ih.detach().clone()
    prune.prune_magnitude(model, 50)
    with torch.no_grad():
        cell.weight_ih[1, 0] = 0.5  # now the smallest kept weight
    prune.prune_magnitude(model, 50)  # the three zeros already fill 50%: the mask stays
    assert cell.weight_ih.tolist() == [[0.], [0.5]]
    prune.prune_magnitude(model, 67)  # 4 of 6: 0.5 goes as well
    assert cell.weight_ih.tolist() == [[0.], [0.]]
    assert torch.equal(cell.bias_ih, bias)
    assert prune.sparsity(model) == pytest.approx(4 / 6)


def test_apply_masks_names_bad_masks():
    model, _ = hand_model()
    with pytest.raises(ValueError, match="'nope' is not a parameter"):
        prune.apply_masks(model, {"nope": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"shape \(2, 2\), got \(3,\)"):
        prune.apply_masks(model, {"layers.0.cell.weight_hh": torch.ones(3, dtype=torch.bool)})


# --- masks through optimizers, state_dict and engines -------------------------------------
def train_steps(model, opt, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, 4, (3, 6), generator=gen)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=0.1),
    lambda p: torch.optim.AdamW(p, lr=0.1),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1)])
def test_a_mask_survives_optimizer_steps_with_momentum(make_opt):
    model = stack()
    opt = make_opt(model.parameters())
    train_steps(model, opt)  # momentum builds up on every weight first
    masks = prune.prune_magnitude(model, 60)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, opt, seed=1)
    for name, mask in masks.items():
        weight = model.get_parameter(name)
        assert weight[~mask].eq(0).all(), "a pruned weight came back"
        assert weight.grad[~mask].eq(0).all()  # clipping and momentum never see them
        assert not torch.equal(weight[mask], before[name][mask])  # kept weights still train


def test_pruned_weights_are_zero_in_state_dict_and_after_save_and_load():
    model = stack("lstm")
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    train_steps(model, opt)
    masks = prune.prune_magnitude(model, 70)
    train_steps(model, opt, seed=2)
    with torch.no_grad():  # even a stray write before saving is undone
        model.layers[0].cell.weight_hh.add_(1.0)
    state = model.state_dict()
    for name, mask in masks.items():
        assert state[name][~mask].eq(0).all() and torch.equal(state[name + "_mask"], mask)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf)
    fresh = stack("lstm", seed=1)
    prune.apply_masks(fresh, prune.masks_in(loaded))
    fresh.load_state_dict(loaded)
    for name, p in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], p)
    train_steps(fresh, torch.optim.Adam(fresh.parameters(), lr=0.1), seed=3)
    for name, mask in masks.items():
        assert fresh.get_parameter(name)[~mask].eq(0).all()


def test_a_deepcopy_keeps_its_masks_through_training():
    model = stack()
    masks = prune.prune_magnitude(model, 60)
    twin = copy.deepcopy(model)
    train_steps(twin, torch.optim.Adam(twin.parameters(), lr=0.1, weight_decay=0.1))
    for name, mask in masks.items():
        assert twin.get_parameter(name)[~mask].eq(0).all()
        assert twin.get_parameter(name).grad[~mask].eq(0).all()


@pytest.mark.parametrize("engine", ["newton", "quasi", "auto"])
def test_a_pruned_gru_runs_the_same_on_every_engine(engine):
    ref, other = stack("gru", "sequential"), stack("gru", engine)
    other.load_state_dict(ref.state_dict())
    masks = prune.prune_magnitude(ref, 50)
    prune.apply_masks(other, masks)
    x = torch.randint(0, 4, (3, 7), generator=torch.Generator().manual_seed(0))
    y_ref, y = ref(x), other(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for name, mask in masks.items():
        grad, grad_ref = other.get_parameter(name).grad, ref.get_parameter(name).grad
        assert grad[~mask].eq(0).all()
        torch.testing.assert_close(grad, grad_ref, rtol=1e-3, atol=1e-5)


# --- the cubic schedule --------------------------------------------------------------------
def test_cubic_schedule_by_hand():
    s = lambda t: prune.cubic_sparsity(t, 0.8, begin=10, end=20)  # noqa: E731
    assert s(0) == 0 and s(10) == 0 and s(20) == pytest.approx(0.8) and s(99) == 0.8
    assert s(15) == pytest.approx(0.8 - 0.8 * 0.5 ** 3)  # 0.7: fast early
    assert prune.cubic_sparsity(5, 0.9, 0, 10, initial=0.5) == pytest.approx(0.9 - 0.4 / 8)
    with pytest.raises(ValueError, match=r"end must be an int >= 11, got 10"):
        prune.cubic_sparsity(0, 0.8, 10, 10)
    with pytest.raises(ValueError, match=r"final must be in \[0, 1\], got 1.5"):
        prune.cubic_sparsity(0, 1.5, 0, 10)


def test_gradual_pruner_reaches_the_final_sparsity():
    model = stack()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    pruner = prune.GradualPruner(model, final=0.75, begin=0, end=6, every=2)
    seen = []
    for t in range(8):
        train_steps(model, opt, n=1, seed=t)
        target = pruner.step(t)
        if target is not None:
            seen.append(target)
            assert prune.sparsity(model) == pytest.approx(target, abs=0.01)
    assert len(seen) == 4 and seen == sorted(seen) and seen[-1] == pytest.approx(0.75)


# --- random-graph RNNs ---------------------------------------------------------------------
def test_layers_masks_and_skips_of_a_hand_graph():
    graph = nx.Graph([(0, 1), (0, 2), (1, 3), (2, 3), (0, 3), (3, 4), (1, 4)])
    assert pg.layers_of(graph) == [[0], [1, 2], [3], [4]]
    model = pg.GraphRNN(graph, "gru", vocab_size=4)
    assert model.skip_pairs == [(0, 2), (1, 3)]  # 0-3 skips layer 1, 1-4 skips layer 2
    mask = model.layers[2].cell.weight_ih_mask  # (3 gates x 1, 2): 3 reads 1 and 2
    assert mask.tolist() == [[True, True]] * 3
    skip = model.skips[1].cell.weight_ih_mask  # layer 1 = [1, 2] -> layer 3 = [4]: only 1-4
    assert skip.tolist() == [[True, False]] * 3
    assert model(torch.randint(0, 4, (2, 5))).shape == (2, 5, 2)
    props = pg.properties(graph)
    assert (props["nodes"], props["edges"], props["source_nodes"], props["layers"]) == \
        (5, 7, 1, 4)
    # degree centralities 3 3 2 4 2 over 4: mean 0.7, squared deviations sum to 0.175
    assert props["degree_variance"] == pytest.approx(0.175 / 4)  # sample variance, n - 1


def test_pearson_and_graph_arguments():
    assert pg.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(0.9933, abs=1e-4)
    assert pg.pearson([1, 1, 1], [1, 2, 3]) != pg.pearson([1, 1, 1], [1, 2, 3])  # NaN
    assert pg.random_graph("barabasi_albert", 20, 0).number_of_edges() == 36  # m = 2
    with pytest.raises(ValueError, match="kind must be one of"):
        pg.random_graph("erdos", 10, 0)


# --- lattice (reconstruction) --------------------------------------------------------------
def test_lattice_on_a_hand_poset():
    # x0 -> h0 -> h1, x0 -> h2; h3 alone. Hasse with bottom/top: x0 and h3 over bottom;
    # x0 has two upper covers (h0, h2): not meet-irreducible; h0, h1, h2, h3 have one each.
    graph = nx.DiGraph([(("x", 0), ("h", 0)), (("h", 0), ("h", 1)), (("x", 0), ("h", 2))])
    graph.add_node(("h", 3))
    keep, counts = lattice.kept_neurons(graph, central=0.0)
    assert keep == {("h", 0), ("h", 1), ("h", 2), ("h", 3)}
    assert counts["components"] == 5 and counts["meet_irreducible"] == 4


def test_lattice_collapses_a_cycle_and_masks_more_than_magnitude():
    graph = nx.DiGraph([(("h", 0), ("h", 1)), (("h", 1), ("h", 0)), (("x", 0), ("h", 0))])
    keep, counts = lattice.kept_neurons(graph, central=0.0)
    # the cycle is one component: bottom < x0 < {h0, h1} < top, a chain, all meet-irreducible
    assert counts["largest_component"] == 2 and counts["components"] == 2
    assert keep == {("x", 0), ("h", 0), ("h", 1)}
    model = stack("rnn_tanh", hidden=6, layers=1)
    info = lattice.prune_lattice(model, 60, central=0.0)
    assert info[0]["neurons"] == 4 + 6
    assert prune.sparsity(model) >= 0.6
    with pytest.raises(ValueError, match="central"):
        lattice.kept_neurons(graph, central=2)


def test_unrolled_lattice_by_hand():
    # hand_model at p = 50: theta = 3, edges above it x0 -> h'1 (4), h1 -> h'0 (6), h1 -> h'1
    # (5). x0 feeds one unit (one upper cover): kept; h1 feeds two: not meet-irreducible, and
    # central = 0 keeps no hub, so only W_ih[1, 0] = -4 survives.
    model, cell = hand_model()
    info = lattice.prune_lattice(model, 50, central=0.0, order="unrolled")
    assert cell.weight_ih.tolist() == [[0.], [-4.]]
    assert cell.weight_hh.eq(0).all() and info[0]["neurons"] == 1 + 2 + 2
    with pytest.raises(ValueError, match="order must be one of"):
        lattice.lattice_masks(model, 50, order="sideways")


# --- CLI -----------------------------------------------------------------------------------
@pytest.fixture
def app():
    app = typer.Typer()
    register(app, typer.Typer())
    return app


def test_cli_help(app):
    runner = CliRunner()
    for args in (["prune", "--help"], ["prune", "oneshot", "--help"],
                 ["prune", "graphs", "--help"], ["prune", "lattice", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert ("lattice" if args[1] == "--help" else "--out") in result.output


def test_cli_oneshot_writes_json_and_png(app, tmp_path):
    out = tmp_path / "p.json"
    result = CliRunner().invoke(app, [
        "prune", "oneshot", "--cells", "rnn_relu", "--percentiles", "0,50,100",
        "--train-size", "32", "--test-size", "16", "--hidden", "4", "--layers", "1",
        "--epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    sweep = data["cells"]["rnn_relu"]["sweep"]
    assert [r["sparsity"] for r in sweep] == [0.0, 0.5, 1.0]
    assert out.with_suffix(".png").stat().st_size > 0


def test_cli_graphs_and_lattice_write_json(app, tmp_path):
    small = ["--train-size", "16", "--test-size", "8", "--epochs", "1"]
    result = CliRunner().invoke(app, ["prune", "graphs", "--graphs", "2", "--max-nodes", "11",
                                      *small, "--out", str(tmp_path / "g.json")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "g.json").read_text())
    assert len(data["runs"]) == 4 and set(data["pearson"]) == set(pg.PROPERTIES)
    assert (tmp_path / "g.png").stat().st_size > 0
    result = CliRunner().invoke(app, ["prune", "lattice", "--percentiles", "80", *small,
                                      "--out", str(tmp_path / "l.json")])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "l.json").read_text())["rows"][0]
    assert row["lattice"]["sparsity"] >= row["magnitude"]["sparsity"] == pytest.approx(0.8)


@pytest.mark.parametrize("args, message", [
    (["--cells", "mamba"], "cannot tell input-to-hidden"),
    (["--percentiles", "10,120"], "--percentiles: expected"),
    (["--group", "gates"], "--group"),
    (["--out", "x.txt"], "--out: expected a .json"),
    (["--length", "3"], "--length"),
])
def test_cli_errors_name_the_option(app, args, message):
    result = CliRunner().invoke(app, ["prune", "oneshot", *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split())


def test_recurrent_is_what_stacked_rnn_uses():
    assert all(isinstance(layer, rnnlab.Recurrent) for layer in stack().layers)
