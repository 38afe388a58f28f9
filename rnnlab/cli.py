"""``rnnlab``: the command-line lab. ``rnnlab demo``, ``rnnlab cells``, ``rnnlab bench ...``."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="rnnlab: recurrent sequence models, one cell definition, every engine.",
                  no_args_is_help=True, add_completion=False)
bench_app = typer.Typer(help="Benchmarks: write JSON and print a table of ratios.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
# Wide tables stay readable when output goes to a file or a pipe (rich would assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 140)


@app.command()
def demo(cell: str = typer.Option("gru", help="registered cell name"),
         hidden_size: int = typer.Option(32, help="hidden size H"),
         steps: int = typer.Option(400, help="training steps"),
         seed: int = typer.Option(0, help="seed for model and data")) -> None:
    """Train a small recurrent model on running parity; print accuracy at T=20, 100, 500."""
    from . import cells
    from .demo import DemoConfig, run
    if cell not in cells.available():
        raise typer.BadParameter(f"unknown cell {cell!r}; available: "
                                 f"{', '.join(cells.available())}",
                                 param_hint="--cell")
    run(DemoConfig(cell=cell, hidden_size=hidden_size, steps=steps, seed=seed), console)


@app.command("cells")
def list_cells() -> None:
    """List the registered cells with their declared Jacobian structure."""
    from . import cells
    table = Table(title="registered cells")
    table.add_column("name")
    table.add_column("class")
    table.add_column("structure")
    for name in cells.available():
        cell = cells.get(name, 4, 8, device="meta")
        table.add_row(name, type(cell).__name__, repr(cell.structure))
    console.print(table)


def _bench(module, out: Optional[Path], **kwargs) -> dict:
    """Run one benchmark module, print its table, write its JSON (atomically)."""
    from .benchmarks.timing import write_json
    result = module.run(**kwargs)
    module.print_table(result, console)
    if out is not None:
        console.print(f"wrote {write_json(result, out)}")
    return result


@bench_app.command("sequential")
def bench_sequential(batch: int = 8, steps: int = 1024, hidden: int = 128, repeats: int = 5,
                     out: Optional[Path] = typer.Option(
                         Path("bench/out/sequential_gru.json"), help="JSON output file")) -> None:
    """Sequential-engine GRU vs torch.nn.GRU vs a GRUCell loop, forward and forward+backward."""
    from .benchmarks import sequential
    _bench(sequential, out, batch=batch, steps=steps, hidden=hidden, repeats=repeats)


@bench_app.command("scan")
def bench_scan(batch: int = 16, width: int = 256, repeats: int = 3,
               out: Optional[Path] = typer.Option(Path("bench/out/scan.json"),
                                                  help="JSON output file")) -> None:
    """linear_scan vs a naive torch loop vs copy bandwidth, T = 1024, 4096, 16384."""
    from .benchmarks import scan
    _bench(scan, out, batch=batch, width=width, repeats=repeats)


@bench_app.command("delta-rule")
def bench_delta_rule(batch: int = 4, steps: int = 4096, heads: int = 4, dk: int = 64,
                     dv: int = 64, repeats: int = 3,
                     out: Optional[Path] = typer.Option(Path("bench/out/delta_rule.json"),
                                                        help="JSON output file")) -> None:
    """Chunked delta rule vs its loop reference, forward and forward+backward."""
    from .benchmarks import delta_rule
    _bench(delta_rule, out, batch=batch, steps=steps, heads=heads, dk=dk, dv=dv,
           repeats=repeats)


@bench_app.command("newton")
def bench_newton(cells: str = typer.Option("paragru,paralstm", help="comma-separated cells"),
                 batch: int = 8, hidden: int = 64,
                 lengths: str = typer.Option("1024,4096,16384", help="comma-separated T"),
                 repeats: int = 3,
                 out: Optional[Path] = typer.Option(Path("bench/out/newton.json"),
                                                    help="JSON output file")) -> None:
    """Newton engine vs sequential engine, forward and forward+backward, with iterations."""
    from .benchmarks import newton
    _bench(newton, out, cells=tuple(cells.split(",")), batch=batch, hidden=hidden,
           lengths=tuple(int(t) for t in lengths.split(",")), repeats=repeats)


if __name__ == "__main__":
    app()
