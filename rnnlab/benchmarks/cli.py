"""``rnnlab bench ...``: each command runs one ``rnnlab/benchmarks`` module, prints its table of
ratios and writes its JSON (``rnnlab/cli.py`` adds ``bench_app`` to the ``rnnlab`` app)."""
from __future__ import annotations

from typing import Optional

import typer

from .. import cli_checks as checks
from ..cli_checks import MARKUP, THREADS_MAX, console

bench_app = typer.Typer(help="Benchmarks: write JSON and print a table of ratios.",
                        no_args_is_help=True, rich_markup_mode=MARKUP)


def _bench(module, out: Optional[str], **kwargs) -> dict:
    """Run one benchmark module, print its table, write its JSON (atomically). ``out`` is
    checked before the timing starts."""
    from .timing import write_json
    from ..train.rundir import check_writable
    with checks.user_errors(out):
        path = checks.path(out, "--out") if out is not None else None
        if path is not None and (path.is_dir() or not path.name):
            raise ValueError(f"--out: expected a JSON file path, got the directory {str(path)!r}")
        if path is not None and path.parent.exists() and not path.parent.is_dir():
            raise ValueError(f"--out: cannot create {str(path)!r}: {str(path.parent)!r} is a "
                             f"file")
        if path is not None:
            check_writable(path.parent)
        result = module.run(**kwargs)
        module.print_table(result, console)
        if path is not None:
            console.print(f"wrote {write_json(result, path)}", markup=False)
    return result


JSON_OUT = dict(help="JSON output file", metavar="<path>")


@bench_app.command("sequential")
def bench_sequential(batch: int = 8, steps: int = 1024, hidden: int = 128, repeats: int = 5,
                     out: Optional[str] = typer.Option("bench/out/sequential_gru.json",
                                                       **JSON_OUT)) -> None:
    """Sequential-engine GRU vs torch.nn.GRU vs a GRUCell loop, forward and forward+backward."""
    from . import sequential
    with checks.user_errors():
        checks.counts(batch=batch, steps=steps, hidden=hidden, repeats=repeats)
    _bench(sequential, out, batch=batch, steps=steps, hidden=hidden, repeats=repeats)


@bench_app.command("scan")
def bench_scan(batch: int = 16, width: int = 256, repeats: int = 3,
               out: Optional[str] = typer.Option("bench/out/scan.json", **JSON_OUT)) -> None:
    """linear_scan vs a naive torch loop vs copy bandwidth, T = 1024, 4096, 16384."""
    from . import scan
    with checks.user_errors():
        checks.counts(batch=batch, width=width, repeats=repeats)
    _bench(scan, out, batch=batch, width=width, repeats=repeats)


@bench_app.command("delta-rule")
def bench_delta_rule(batch: int = 4, steps: int = 4096, heads: int = 4, dk: int = 64,
                     dv: int = 64, repeats: int = 3,
                     out: Optional[str] = typer.Option("bench/out/delta_rule.json",
                                                       **JSON_OUT)) -> None:
    """Chunked delta rule vs its loop reference, forward and forward+backward."""
    from . import delta_rule
    with checks.user_errors():
        checks.counts(batch=batch, steps=steps, heads=heads, dk=dk, dv=dv, repeats=repeats)
    _bench(delta_rule, out, batch=batch, steps=steps, heads=heads, dk=dk, dv=dv,
           repeats=repeats)


@bench_app.command("newton")
def bench_newton(cells: str = typer.Option("paragru,paralstm", help="comma-separated cells"),
                 batch: int = 8, hidden: int = 64,
                 lengths: str = typer.Option("1024,4096,16384", help="comma-separated T"),
                 repeats: int = 3,
                 out: Optional[str] = typer.Option("bench/out/newton.json", **JSON_OUT)) -> None:
    """Newton engine vs sequential engine, forward and forward+backward, with iterations."""
    from . import newton
    with checks.user_errors():
        checks.counts(batch=batch, hidden=hidden, repeats=repeats)
        names = newton.check_cells(checks.names(cells, "--cells"))
        sizes = checks.ints(lengths, "--lengths", "1024,4096", 1)
    _bench(newton, out, cells=tuple(names), batch=batch, hidden=hidden, lengths=tuple(sizes),
           repeats=repeats)


@bench_app.command("generate")
def bench_generate(lengths: str = typer.Option("1000,10000", help="comma-separated token counts"),
                   d_model: int = 128, layers: int = 2,
                   out: Optional[str] = typer.Option("bench/out/generate.json",
                                                     **JSON_OUT)) -> None:
    """Cache bytes, memory growth and ms per generated token: recurrent LMs vs attention."""
    from . import generate
    with checks.user_errors():
        checks.counts(d_model=d_model, layers=layers)
        sizes = checks.ints(lengths, "--lengths", "1000,10000", 1)
    _bench(generate, out, lengths=tuple(sizes), d_model=d_model, n_layers=layers)


@bench_app.command("cells")
def bench_cells(sizes: str = typer.Option("8x1024x128,32x128x256",
                                          help="comma-separated sizes, each BxTxD"),
                cells: Optional[str] = typer.Option(
                    None, help="comma-separated cells [default: all; gru is always added]",
                    show_default=False),
                engines: Optional[str] = typer.Option(
                    None, help="comma-separated engines [default: all; sequential is always "
                               "added]", show_default=False),
                repeats: int = typer.Option(2, help="timed calls per measurement (best of)"),
                threads: Optional[int] = typer.Option(
                    None, help="torch CPU threads [default: leave torch's setting]",
                    show_default=False),
                max_seconds: float = typer.Option(
                    60.0, help="per-row budget: after a call slower than this, no more calls "
                               "(`inf`: none)"),
                device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda"),
                out: Optional[str] = typer.Option("bench/out/cells.json", **JSON_OUT)) -> None:
    """Every cell x every engine that runs it: fwd, fwd+bwd, speed-ups, saved memory."""
    from . import cells as cells_bench
    with checks.user_errors():
        checks.counts(repeats=repeats)
        checks.counts(1, THREADS_MAX, threads=threads)
        kwargs = dict(sizes=cells_bench.parse_sizes(sizes), cells=checks.names(cells, "--cells"),
                      engines=checks.names(engines, "--engines"), repeats=repeats, threads=threads,
                      max_seconds=max_seconds, device=device)
    _bench(cells_bench, out, **kwargs)
