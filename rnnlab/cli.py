"""``rnnlab``: the command-line lab. ``rnnlab demo``, ``rnnlab cells``, ``rnnlab bench ...``."""
from __future__ import annotations

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
console = Console()


@app.command()
def demo(cell: str = typer.Option("gru", help="registered cell name"),
         hidden_size: int = typer.Option(32, help="hidden size H"),
         steps: int = typer.Option(400, help="training steps"),
         seed: int = typer.Option(0, help="seed for model and data")) -> None:
    """Train a small recurrent model on running parity; print accuracy at T=20, 100, 500."""
    from . import cells
    from .demo import DemoConfig, run
    if cell not in cells.available():
        raise typer.BadParameter(f"unknown cell {cell!r}; available: {', '.join(cells.available())}",
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


@bench_app.command("sequential")
def bench_sequential(batch: int = 8, steps: int = 1024, hidden: int = 128, repeats: int = 5,
                     out: Optional[Path] = typer.Option(
                         Path("bench/out/sequential_gru.json"), help="JSON output file")) -> None:
    """Sequential-engine GRU vs torch.nn.GRU vs a GRUCell loop, forward and forward+backward."""
    from .benchmarks import sequential
    from .benchmarks.timing import write_json
    result = sequential.run(batch, steps, hidden, repeats)
    console.print(f"GRU B={batch} T={steps} H={hidden} fp32, "
                  f"{result['machine']['threads']} threads, best of {repeats}")
    table = Table()
    for col in ("implementation", "fwd ms", "fwd+bwd ms"):
        table.add_column(col, justify="right" if "ms" in col else "left")
    ms = result["ms"]
    for impl in ("rnnlab_sequential", "torch_nn_GRU", "torch_GRUCell_loop"):
        table.add_row(impl, f"{ms[impl + '_fwd_ms']:.1f}", f"{ms[impl + '_fwdbwd_ms']:.1f}")
    console.print(table)
    for k, v in result["ratios"].items():
        console.print(f"{k}: {v:.2f}x")
    if out is not None:
        console.print(f"wrote {write_json(result, out)}")


if __name__ == "__main__":
    app()
