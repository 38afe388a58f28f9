"""Tables, plots and the HTML report, all from the records (so a resumed grid reports the same).

Per task: one row per model, the metric at each test length (the first is the longest train
length), the mean beyond training, and where the preset documents an expected outcome, that
value and whether the run agrees with it within ``TOLERANCE`` (at the train length for a task
tested only there). A task's extra metrics
(``Task.extra_metrics``, carried in its records: ``sequence_accuracy``) get a table of their own
after it, without expected values. Universal Transformers with ACT get one more table, their
depth per task (``act_depth``).
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from rich.table import Table

from ..tasks.metrics import METRICS
from .act_depth import HEADER as DEPTH_HEADER, TITLE as DEPTH_TITLE, depth_rows
from .config import ArenaConfig
from .overview import overview, overview_figure
from .spec import without_lr
from .store import load_curves, summary, write_atomic

TOLERANCE = 0.1  # |measured - expected| that counts as a reproduction


def _with_extras(records: List[dict]) -> List[dict]:
    """Each record, followed by one per extra metric it carries, as if that were its metric."""
    out = []
    for r in records:
        out.append(r)
        out += [{**r, "metric": m, "value": r[m]} for m in METRICS if m in r and m != r["metric"]]
    return out


def task_tables(cfg: ArenaConfig, records: List[dict]) -> List[Tuple[str, str, List[int],
                                                                    List[list]]]:
    """``[(task, metric, lengths, rows)]``, the task's metric first, then its extra metrics; a
    row is ``[model, v@len..., beyond, expected, ok]`` with None where a value is missing (a
    run not finished yet) and no expected value for an extra metric."""
    means = summary(_with_extras(records), cfg.aggregate)
    out = []
    for task in cfg.tasks:
        metrics = list(dict.fromkeys(k[2] for k in means if k[1] == task))  # the task's first
        out += [_table(cfg, means, task, metric, main=i == 0) for i, metric in enumerate(metrics)]
    return out


def _table(cfg: ArenaConfig, means: dict, task: str, metric: str, main: bool):
    """One ``task_tables`` entry (``main``: the task's own metric, the one with expected
    values; with ``aggregate="best"`` each metric keeps its own best seed)."""
    keys = [k for k in means if k[1] == task and k[2] == metric]
    lengths = sorted({n for k in keys for n in means[k]})
    train_len = min(lengths)
    rows = []
    for model in cfg.models:
        vals = means.get((model, task, metric))
        if vals is None:
            continue
        beyond_lens = [n for n in lengths if n > train_len and n in vals]
        beyond = (sum(vals[n] for n in beyond_lens) / len(beyond_lens)
                  if beyond_lens else None)
        # a model's row at its own lr (``gla(lr=3e-3)``) is held to the model's expected value
        expected = cfg.expected.get((model, task), cfg.expected.get((without_lr(model), task))) \
            if main else None
        # a task tested only at its train length (DLR's, defined relative to L) is held there
        measured = beyond if len(lengths) > 1 else vals.get(train_len)
        ok = None if expected is None or measured is None \
            else abs(measured - expected) <= TOLERANCE
        rows.append([model] + [vals.get(n) for n in lengths] + [beyond, expected, ok])
    return task, metric, lengths, rows


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _title(cfg: ArenaConfig, task: str, metric: str) -> str:
    seeds = len(cfg.seeds)
    how = ("" if seeds == 1
           else f", {'best' if cfg.aggregate == 'best' else 'mean'} of {seeds} seeds")
    return f"{task} — {metric}{how}"


def _header(lengths: List[int]) -> List[str]:
    return (["model"] + [f"T={n}" + (" (train)" if i == 0 else "") for i, n in enumerate(lengths)]
            + ["beyond train", "expected", "agrees"])


def rich_tables(cfg: ArenaConfig, records: List[dict]) -> List[Table]:
    tables = [_rich_table(_title(cfg, task, metric), _header(lengths), rows, labels=1)
              for task, metric, lengths, rows in task_tables(cfg, records)]
    depth = depth_rows(cfg, records)
    if depth:
        tables.append(_rich_table(DEPTH_TITLE, DEPTH_HEADER, depth, labels=3))
    return tables


def _rich_table(title: str, header: List[str], rows: List[list], labels: int) -> Table:
    """A rich table, its first ``labels`` columns (names) left-aligned, the values right."""
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < labels else "right")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row))
    return table


def _md_table(header: List[str], rows: List[list]) -> List[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows])


def markdown(cfg: ArenaConfig, records: List[dict]) -> str:
    lines = []
    for task, metric, lengths, rows in task_tables(cfg, records):
        lines += [f"### {_title(cfg, task, metric)}", ""] + _md_table(_header(lengths), rows)
        lines.append("")
    if cfg.source and cfg.expected:
        lines.append(f"Expected values: {cfg.source}. Agreement: within ±{TOLERANCE} of the "
                     f"mean beyond the train length (of the train-length value for a task "
                     f"tested only there).")
    depth = depth_rows(cfg, records)
    if depth:
        lines += ["", f"### {DEPTH_TITLE}", ""] + _md_table(DEPTH_HEADER, depth)
    return "\n".join(lines) + "\n"


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")
DODGE = 0.035  # log2 units between neighbouring models at one length (lengths double: 1.0)


def figure(task: str, metric: str, lengths: List[int], rows: List[list]):
    """Metric vs test length, one line per model, as a matplotlib figure. Models with equal
    values would hide each other (in the quick preset four score 1.0 at every length): each gets
    its own marker and line style and a small sideways offset (a dodge, ``DODGE`` in log2 units;
    the ticks stay at the true lengths), and the legend sits outside the axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.0, 4.0), dpi=100)
    middle = (len(rows) - 1) / 2
    for i, row in enumerate(rows):
        shift = 2.0 ** ((i - middle) * DODGE)  # x * shift: an offset in log space
        pts = [(n * shift, v) for n, v in zip(lengths, row[1:1 + len(lengths)]) if v is not None]
        if pts:
            ax.plot(*zip(*pts), marker=MARKERS[i % len(MARKERS)], markersize=5,
                    linestyle=LINESTYLES[i // len(MARKERS) % len(LINESTYLES)], label=row[0])
    ax.axvline(lengths[0], color="grey", linestyle=":", linewidth=1)  # longest train length
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("test length (dotted: longest train length)")
    ax.set_ylabel(metric)
    ax.set_title(task)
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    return fig


LEGEND_BESIDE = 32  # the longest model label kept beside the axes; longer ones go below


def _legend(fig, ax) -> None:
    """The legend of ``ax`` beside it, or, for long model specs (which would squeeze the axes to
    a sliver), at the figure's foot, one label per line, the figure growing to hold it."""
    handles, labels = ax.get_legend_handles_labels()
    if max(map(len, labels), default=0) <= LEGEND_BESIDE:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        grow = 0.17 * len(labels) + 0.1  # inches: a line per label
        fig.set_figheight(fig.get_figheight() + grow)
        fig.legend(handles, labels, fontsize=8, loc="lower left", borderaxespad=0.2,
                   bbox_to_anchor=(0.0, 0.0))
        fig.tight_layout(rect=(0.0, grow / fig.get_figheight(), 1.0, 1.0))
        return
    fig.tight_layout()


def curve_figure(task: str, metric: str, curves: List[dict], early_stop: Optional[float]):
    """The validation metric at the longest train length against the training step, one line
    per run (``curves``: ``store.load_curves`` entries), a model's seeds in one colour; below
    it, where runs recorded one, their ACT depth (a UT's depth can collapse to one step)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    deep = [c for c in curves if c.get("act_depth")]
    fig, axes = plt.subplots(2 if deep else 1, 1, sharex=True, squeeze=False, dpi=100,
                             figsize=(8.0, 6.0 if deep else 4.0),
                             gridspec_kw={"height_ratios": [2, 1] if deep else [1]})
    ax, low = axes[0][0], axes[-1][0]
    models = list(dict.fromkeys(c["model"] for c in curves))
    labelled = set()
    for c in curves:
        i = models.index(c["model"])
        style = {"color": f"C{i % 10}", "linewidth": 1.2,
                 "linestyle": LINESTYLES[i // 10 % len(LINESTYLES)]}
        steps, _, vals = zip(*c["curve"])
        ax.plot(steps, vals, label=None if c["model"] in labelled else c["model"], **style)
        labelled.add(c["model"])
        if c.get("act_depth"):
            low.plot(*zip(*c["act_depth"]), **style)
    if early_stop is not None:
        ax.axhline(early_stop, color="grey", linestyle=":", linewidth=1)
    low.set_xlabel("training step" + (" (dotted: early-stop level)" if early_stop else ""))
    ax.set_ylabel(f"{metric} at the longest train length")
    ax.set_title(f"{task}: learning curves (one line per seed)")
    if deep:
        low.set_ylabel("ACT depth (mean steps)")
        low.grid(alpha=0.3)
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    return fig


# Rendered PNGs by a digest of what they show. The arena rewrites the report after every run and
# only the finished run's task changes: re-rendering all of a 34-task grid's plots took ~20 s
# each time, on the core a run needs. Matplotlib's Agg output depends only on the inputs.
_RENDERED: Dict[str, bytes] = {}
_RENDERED_MAX = 512


def _cached_png(kind: str, render, *args) -> bytes:
    """``_png(render(*args))``, rendered once per distinct ``(kind, args)`` in this process."""
    key = hashlib.sha256(json.dumps([kind, args], default=repr).encode()).hexdigest()
    if key not in _RENDERED:
        if len(_RENDERED) >= _RENDERED_MAX:
            _RENDERED.clear()
        _RENDERED[key] = _png(render(*args))
    return _RENDERED[key]


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_name(task: str, taken: set) -> str:
    """The file name of ``task``'s plot: the label with every character but letters, digits,
    ``_`` and ``-`` replaced by ``_``; a hash of the label is appended where two labels would
    share a name (``mod_arith(p=3)`` and ``mod_arith[p=3]``), so no plot overwrites another."""
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in task)
    if name in taken:
        name += "-" + hashlib.sha1(task.encode()).hexdigest()[:8]
    return name


def _html_table(header: List[str], rows: List[list]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def write_all(out: Path, cfg: ArenaConfig, records: List[dict],
              meta: Optional[Dict[str, str]] = None) -> None:
    """results.md, plots/<task>.png (an extra metric's: plots/<task>_<metric>.png), the
    learning curves of the runs in ``out/curves.jsonl`` (plots/curves/<task>.png), for a grid
    of two or more tasks the models x tasks overview (plots/overview.png), and report.html
    (each written atomically)."""
    write_atomic(out / "results.md", markdown(cfg, records))
    curves = [c for c in load_curves(out) if c["model"] in cfg.models]
    tables = task_tables(cfg, records)
    sections, names, seen = [], {"overview"}, set()  # no task's plot may take its name
    grid = overview(cfg.models, tables)
    if len(grid[1]) > 1:
        png = _cached_png("overview", overview_figure, *grid)
        write_atomic(out / "plots" / "overview.png", png)
        sections.append(f"<h2>Overview: {len(grid[0])} models × {len(grid[1])} tasks</h2>"
                        f"<img alt='overview' style='max-width:100%' src='data:image/png;"
                        f"base64,{base64.b64encode(png).decode()}'>")
    for task, metric, lengths, rows in tables:
        png = _cached_png("lengths", figure, task, metric, lengths, rows)
        main = task not in seen
        name = plot_name(task if main else f"{task}_{metric}", names)  # extras
        seen.add(task)
        names.add(name)
        write_atomic(out / "plots" / f"{name}.png", png)
        pngs = [png]
        ours = [c for c in curves if c["task"] == task and c["metric"] == metric and c["curve"]]
        if main and ours:
            pngs.append(_cached_png("curves", curve_figure, task, metric, ours, cfg.early_stop))
            write_atomic(out / "plots" / "curves" / f"{name}.png", pngs[-1])
        imgs = "".join(f"<img alt='{html.escape(task)}' src='data:image/png;base64,"
                       f"{base64.b64encode(p).decode()}'>" for p in pngs)
        sections.append(f"<h2>{html.escape(_title(cfg, task, metric))}</h2>"
                        f"{_html_table(_header(lengths), rows)}{imgs}")
    depth = depth_rows(cfg, records)
    if depth:
        sections.append(f"<h2>{html.escape(DEPTH_TITLE)}</h2>" + _html_table(DEPTH_HEADER, depth))
    info = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
                   for k, v in (meta or {}).items())
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>rnnlab arena</title>"
            "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
            "padding:3px 8px;text-align:right}td:first-child{text-align:left}</style></head>"
            f"<body><h1>rnnlab arena</h1><ul>{info}</ul>{''.join(sections)}"
            f"<p>{html.escape(cfg.source)}</p></body></html>")
    write_atomic(out / "report.html", page)
