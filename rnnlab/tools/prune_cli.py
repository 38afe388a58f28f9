"""``rnnlab prune ...``: Darji's pruning experiments on the Reber task, at laptop scale.

- ``rnnlab prune oneshot``: per cell, train the 3 x 50 model, prune globally at each percentile,
  score before and after ``--retrain-epochs`` of retraining; JSON + accuracy-vs-sparsity PNG.
- ``rnnlab prune graphs``: random-graph sparse RNNs, properties and Pearson r with accuracy.
- ``rnnlab prune lattice``: the reconstructed lattice pruning beside magnitude pruning.

The studies themselves are in ``prune_study.py``.

``register(app, eval_app)`` adds the ``prune`` group to the ``rnnlab`` app.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import cli_checks as checks
from .prune_study import lattice_study, oneshot, plot_graphs, plot_oneshot, reber_data, write_json

DEFAULT_CELLS = "rnn_tanh,rnn_relu,gru,lstm"
DEFAULT_PERCENTILES = "0,10,20,30,40,50,60,70,80,90,100"


# --- CLI --------------------------------------------------------------------------------------
def _percentiles(text: str):
    try:
        values = [float(s) for s in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not 0 <= v <= 100 for v in values):
        raise ValueError(f"--percentiles: expected comma-separated numbers in [0, 100] such as "
                         f"'0,50,90', got {text!r}")
    return values


def _cells(text: str):
    from .. import cells as _cells
    from .prune import weight_groups
    names = checks.names(text, "--cells")
    for name in names:
        if name not in _cells.available():
            raise ValueError(f"--cells: unknown cell {name!r}; available: "
                             f"{', '.join(_cells.available())}")
        weight_groups(_cells.get(name, 2, 2, device="meta"))  # says when it cannot be pruned
    return names


def _one_cell(text: str) -> str:
    if "," in text:
        raise ValueError(f"--cell: expected one cell, got {text!r}")
    return _cells(text)[0]


def _json_path(out: str) -> Path:
    return checks.output_file(out, "--out", ".json")


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``rnnlab prune oneshot|graphs|lattice`` to ``app`` (``eval_app`` is not used)."""
    prune_app = typer.Typer(help="Pruning recurrent weights (Darji; Sengupta): JSON + PNG.",
                            no_args_is_help=True, rich_markup_mode="markdown")
    app.add_typer(prune_app, name="prune")
    prune_app.command("oneshot")(_oneshot_command)
    prune_app.command("graphs")(_graphs_command)
    prune_app.command("lattice")(_lattice_command)


def _oneshot_command(
        cells: str = typer.Option(DEFAULT_CELLS, help="comma-separated cells with weight_ih / "
                                                      "weight_hh"),
        percentiles: str = typer.Option(DEFAULT_PERCENTILES, help="percentiles p of |w| pruned"),
        group: str = typer.Option("both", help="weights pruned: i2h, h2h or both"),
        train_size: int = typer.Option(4000, help="training strings"),
        test_size: int = typer.Option(1000, help="test strings"),
        length: int = typer.Option(24, help="longest string (padded length)"),
        hidden: int = typer.Option(50, help="units per layer"),
        layers: int = typer.Option(3, help="recurrent layers"),
        epochs: int = typer.Option(10, help="training epochs before pruning"),
        retrain_epochs: int = typer.Option(1, help="retraining epochs after pruning"),
        lr: float = typer.Option(3e-3, help="Adam learning rate"),
        seed: int = typer.Option(0, help="model init and data"),
        engine: str = typer.Option("auto", help="engine of every layer"),
        out: str = typer.Option("results/prune.json", help="JSON file", metavar="<path>"),
        png: Optional[str] = typer.Option(None, help="PNG file [default: beside --out]",
                                          show_default=False, metavar="<path>")) -> None:
    """One-shot global magnitude pruning at each percentile, before and after retraining."""
    with checks.user_errors(out):
        from ..checks import check_choice
        from .prune import GROUPS
        names, values = _cells(cells), _percentiles(percentiles)
        check_choice(None, "--group", group, GROUPS)
        checks.counts(train_size=train_size, test_size=test_size, hidden=hidden,
                      layers=layers, epochs=epochs)
        checks.counts(0, retrain_epochs=retrain_epochs)
        checks.counts(9, length=length)
        checks.counts(0, seed=seed)
        if not lr > 0:
            raise ValueError(f"--lr: expected a number > 0, got {lr!r}")
        path = _json_path(out)
        png_path = (path.with_suffix(".png") if png is None
                    else checks.output_file(png, "--png"))
        result = oneshot(names, values, group, train_size, test_size, length, hidden, layers,
                         epochs, retrain_epochs, lr, seed, engine, log=typer.echo)
        write_json(result, path)
        plot_oneshot(result, png_path)
        for cell, res in result["cells"].items():
            typer.echo(f"{cell}: dense {res['dense_accuracy']:.3f}, holds to "
                       f"{100 * res['holds_to']:.0f}% ({100 * res['holds_to_retrained']:.0f}% "
                       f"retrained)")
        typer.echo(f"wrote {path} and {png_path}")


def _graphs_command(
        cell: str = typer.Option("gru", help="cell of every layer"),
        graphs: int = typer.Option(10, help="graphs of each kind (BA, WS)"),
        min_nodes: int = typer.Option(10, help="fewest nodes of a graph"),
        max_nodes: int = typer.Option(30, help="most nodes of a graph"),
        train_size: int = typer.Option(2000, help="training strings"),
        test_size: int = typer.Option(1000, help="test strings"),
        length: int = typer.Option(24, help="longest string (padded length)"),
        epochs: int = typer.Option(4, help="training epochs per graph"),
        batch: int = typer.Option(32, help="batch size"),
        lr: float = typer.Option(3e-3, help="Adam learning rate"),
        seed: int = typer.Option(0, help="graphs, model init and data"),
        engine: str = typer.Option("auto", help="engine of every layer"),
        out: str = typer.Option("results/prune_graphs.json", help="JSON file",
                                metavar="<path>"),
        png: Optional[str] = typer.Option(None, help="PNG file [default: beside --out]",
                                          show_default=False, metavar="<path>")) -> None:
    """Random-graph sparse RNNs: graph properties beside accuracy, with Pearson r."""
    with checks.user_errors(out):
        name = _one_cell(cell)
        checks.counts(graphs=graphs, train_size=train_size, test_size=test_size,
                      epochs=epochs, batch=batch)
        checks.counts(5, min_nodes=min_nodes)
        checks.counts(min_nodes, max_nodes=max_nodes)
        checks.counts(9, length=length)
        checks.counts(0, seed=seed)
        path = _json_path(out)
        png_path = (path.with_suffix(".png") if png is None
                    else checks.output_file(png, "--png"))
        from .prune_graphs import study
        task, train, test = reber_data(train_size, test_size, length, seed)
        if not lr > 0:
            raise ValueError(f"--lr: expected a number > 0, got {lr!r}")
        result = study(name, task, train, test, graphs, (min_nodes, max_nodes), epochs, batch,
                       lr, seed, engine, log=typer.echo)
        result.update(train_size=train_size, test_size=test_size, epochs=epochs, batch=batch,
                      lr=lr)
        write_json(result, path)
        plot_graphs(result, png_path)
        for prop, r in result["pearson"].items():
            typer.echo(f"pearson({prop}, accuracy) = {r:+.2f}")
        typer.echo(f"wrote {path} and {png_path}")


def _lattice_command(
        cell: str = typer.Option("gru", help="cell of the 3-layer model"),
        percentiles: str = typer.Option("50,70,90", help="θ as percentiles of |w|"),
        central: float = typer.Option(0.25, help="fraction of components kept as central"),
        train_size: int = typer.Option(4000, help="training strings"),
        test_size: int = typer.Option(1000, help="test strings"),
        length: int = typer.Option(24, help="longest string (padded length)"),
        epochs: int = typer.Option(10, help="training epochs before pruning"),
        retrain_epochs: int = typer.Option(1, help="fine-tuning epochs after pruning"),
        lr: float = typer.Option(3e-3, help="Adam learning rate"),
        seed: int = typer.Option(0, help="model init and data"),
        out: str = typer.Option("results/prune_lattice.json", help="JSON file",
                                metavar="<path>")) -> None:
    """Lattice pruning (reconstructed) beside magnitude pruning at the same threshold."""
    with checks.user_errors(out):
        name = _one_cell(cell)
        values = _percentiles(percentiles)
        if not 0 <= central <= 1:
            raise ValueError(f"--central: expected a number in [0, 1], got {central!r}")
        checks.counts(train_size=train_size, test_size=test_size, epochs=epochs)
        checks.counts(0, retrain_epochs=retrain_epochs)
        checks.counts(9, length=length)
        checks.counts(0, seed=seed)
        path = _json_path(out)
        result = lattice_study(name, values, central, train_size, test_size, length, epochs,
                               retrain_epochs, lr, seed, log=typer.echo)
        write_json(result, path)
        typer.echo(f"wrote {path}")
