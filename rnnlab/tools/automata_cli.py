"""``rnnlab automata ...``: state-regularised RNNs trained, and their automata extracted.

- ``rnnlab automata tomita``: an SR-GRU per Tomita grammar (every prefix labelled, the empty
  one included), its DFA extracted and minimised, compared with the true DFA (equivalent, or
  the shortest counterexample); JSON plus a PNG of the extracted DFAs.
- ``rnnlab automata parens``: balanced parentheses (Wang & Niepert's BP task, letters reduced
  to one filler ``a``) with SR-LSTM and SR-LSTM-P trained at nesting depth <= ``--train-depth``
  and tested deeper; JSON plus a PNG of accuracy by depth.
- ``rnnlab automata dot``: a reference Tomita DFA as Graphviz text.

``register(app, eval_app)`` adds the ``automata`` group to the CLI; the experiments are in
``automata_study.py``. Torch and the models are
imported inside the functions, so the CLI starts fast.
"""
from __future__ import annotations

from typing import Optional

import typer

from ..cli_checks import MARKUP
from .automata_study import PAREN_TOKENS, plot_parens, run_parens, run_tomita, write_json


# --- the commands ------------------------------------------------------------------------------
def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``rnnlab automata tomita|parens|dot`` to ``app`` (``eval_app`` is not used)."""
    group = typer.Typer(help="State-regularised RNNs (Wang & Niepert 2019) and the automata "
                             "extracted from them.", no_args_is_help=True,
                        rich_markup_mode=MARKUP)
    app.add_typer(group, name="automata")
    group.command("tomita")(tomita_command)
    group.command("parens")(parens_command)
    group.command("dot")(dot_command)


def _settings(out: Optional[str], figure: Optional[str], **counts) -> tuple:
    from .. import cli_checks as checks
    checks.counts(**counts)
    return (None if out is None else checks.output_file(out, "--out"),
            None if figure is None else checks.output_file(figure, "--figure"))


def tomita_command(
        grammars: str = typer.Option("1,2,3,4,5,6,7", help="Tomita grammars, comma-separated"),
        hidden: int = typer.Option(32, help="GRU width H"),
        centroids: int = typer.Option(10, help="k, the learnable states"),
        temperature: float = typer.Option(1.0, help="tau in softmax(u S^T / tau)"),
        final_temperature: float = typer.Option(0.0, help="anneal tau to this from half-way "
                                                "to 90% of training (0: no annealing)"),
        final_mode: str = typer.Option("hard", help="the cell's mode at the end of training "
                                       "(the last 10% with annealing, else the second half): "
                                       "hard, gumbel, or soft (no change)"),
        steps: int = typer.Option(2000, help="training steps (batches of 64 strings)"),
        seed: int = typer.Option(0, help="model init and data"),
        threads: int = typer.Option(1, help="torch threads"),
        out: Optional[str] = typer.Option(None, help="JSON file of the results",
                                          metavar="<path>"),
        figure: Optional[str] = typer.Option(None, help="PNG of the extracted DFAs",
                                             metavar="<path>")) -> None:
    """Train an SR-GRU per Tomita grammar, extract and minimise its DFA, compare it with the
    true one (the shortest counterexample when they differ)."""
    from .. import cli_checks as checks
    with checks.user_errors(out):
        import torch

        from ..checks import check_choice, check_number
        from ..nn.state_reg import MODES
        chosen = checks.ints(grammars, "--grammars", "1,3,7", 1, 7)
        path, png = _settings(out, figure, hidden=hidden, centroids=centroids, steps=steps,
                              threads=threads)
        checks.counts(low=0, seed=seed)
        check_number(None, "--temperature", temperature, 0.0, low_open=True)
        check_choice(None, "--final-mode", final_mode, MODES)
        check_number(None, "--final-temperature", final_temperature, 0.0)
        torch.set_num_threads(threads)
        config = dict(grammars=chosen, hidden=hidden, centroids=centroids,
                      temperature=temperature, mode="soft", final_mode=final_mode,
                      final_temperature=final_temperature or None,
                      steps=steps, seed=seed, cell="gru", batch=64, train_lengths=[1, 16])
        result = run_tomita(chosen, hidden, centroids, temperature, steps, seed,
                            final_temperature=final_temperature or None,
                            final_mode=None if final_mode == "soft" else final_mode,
                            log=typer.echo)
        if path is not None:
            write_json(path, dict(experiment="tomita", config=config, rows=result["rows"]))
        if png is not None:
            from .automata import save_png
            save_png(result["drawings"], png)


def parens_command(
        cells: str = typer.Option("sr-lstm,sr-lstm-p", help="models: sr-lstm and/or sr-lstm-p"),
        hidden: int = typer.Option(16, help="LSTM width H"),
        centroids: int = typer.Option(10, help="k, the learnable states"),
        temperature: float = typer.Option(1.0, help="tau in softmax(u S^T / tau)"),
        train_depth: int = typer.Option(5, help="deepest nesting trained on"),
        test_depth: int = typer.Option(10, help="deepest nesting tested"),
        steps: int = typer.Option(2000, help="training steps (batches of 32 strings)"),
        seed: int = typer.Option(0, help="model init and data"),
        threads: int = typer.Option(1, help="torch threads"),
        out: Optional[str] = typer.Option(None, help="JSON file of the results",
                                          metavar="<path>"),
        figure: Optional[str] = typer.Option(None, help="PNG of accuracy by depth",
                                             metavar="<path>")) -> None:
    """Balanced parentheses: SR-LSTM and SR-LSTM-P trained at shallow nesting, tested
    deeper."""
    from .. import cli_checks as checks
    with checks.user_errors(out):
        import torch

        from ..checks import check_choice, check_number
        names = checks.names(cells, "--cells")
        for name in names:
            check_choice(None, "--cells", name, ("sr-lstm", "sr-lstm-p"))
        path, png = _settings(out, figure, hidden=hidden, centroids=centroids, steps=steps,
                              threads=threads, train_depth=train_depth)
        checks.counts(low=train_depth, test_depth=test_depth)
        checks.counts(low=0, seed=seed)
        check_number(None, "--temperature", temperature, 0.0, low_open=True)
        torch.set_num_threads(threads)
        config = dict(cells=names, hidden=hidden, centroids=centroids, temperature=temperature,
                      train_depth=train_depth, test_depth=test_depth, steps=steps, seed=seed,
                      tokens=list(PAREN_TOKENS))
        results = run_parens(names, hidden, centroids, temperature, train_depth, test_depth,
                             steps, seed, typer.echo)
        if path is not None:
            write_json(path, dict(experiment="parens", config=config, results=results))
        if png is not None:
            plot_parens(results, train_depth, png)


def dot_command(grammar: int = typer.Argument(..., help="Tomita grammar 1..7")) -> None:
    """Print the minimal DFA of a Tomita grammar as Graphviz DOT text."""
    from .. import cli_checks as checks
    with checks.user_errors():
        checks.counts(high=7, grammar=grammar)
        from .automata import to_dot, tomita
        typer.echo(to_dot(tomita(grammar), name=f"tomita{grammar}"), nl=False)
