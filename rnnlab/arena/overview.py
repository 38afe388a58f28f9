"""The grid at a glance: models x tasks as two heatmaps, each task's metric at its longest train
length (did the model fit the task?) and its mean beyond it (did it generalise in length?).

Built from the report's per-task tables, so the overview and the tables never disagree. Every
metric of the arena's tasks is at most 1 (accuracies, R^2), so one colour scale 0..1 serves all
tasks; a value below 0 (an R^2 worse than the mean) shows in the colour of 0 with its number.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

Grid = List[List[Optional[float]]]


def overview(models: Sequence[str], tables: Sequence[tuple]) -> Tuple[List[str], List[str],
                                                                       Grid, Grid]:
    """``(models, tasks, fit, beyond)`` from ``report.task_tables`` entries: ``fit[i][j]`` is
    model i's value on task j at the longest train length, ``beyond[i][j]`` its mean beyond
    training (None: not run yet, or a task tested only at its train length). Only each task's
    own metric (its first table) is used; models keep the order of ``models``, tasks that of
    the tables, and a model or task with no value at all is left out."""
    cells, tasks = {}, []
    for task, _, lengths, rows in tables:
        if task in tasks:  # an extra metric's table (sequence_accuracy): the main one came first
            continue
        tasks.append(task)
        for row in rows:  # [model, v@len..., beyond, expected, ok]
            cells[row[0], task] = (row[1], row[1 + len(lengths)])
    shown = [m for m in models if any((m, t) in cells for t in tasks)]
    fit = [[cells.get((m, t), (None, None))[0] for t in tasks] for m in shown]
    beyond = [[cells.get((m, t), (None, None))[1] for t in tasks] for m in shown]
    return shown, tasks, fit, beyond


def overview_figure(models: List[str], tasks: List[str], fit: Grid, beyond: Grid):
    """The two heatmaps, stacked, each cell annotated with its value; grey: no value."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    width = 3.0 + 0.42 * len(tasks) + 0.055 * max(map(len, models))
    height = 2 * (0.8 + 0.28 * len(models)) + 0.07 * max(map(len, tasks))
    fig, axes = plt.subplots(2, 1, figsize=(width, height), dpi=100, sharex=True,
                             layout="constrained")
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    for ax, grid, title in ((axes[0], fit, "at the longest train length"),
                            (axes[1], beyond, "beyond training (mean over the test lengths)")):
        values = np.array([[math.nan if v is None else v for v in row] for row in grid], float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0,
                          aspect="auto", interpolation="nearest")
        for (i, j), v in np.ndenumerate(values):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 else "black")
        ax.set_yticks(range(len(models)), models, fontsize=7)
        ax.set_title(title + " (grey: no value)", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
    axes[1].set_xticks(range(len(tasks)), tasks, rotation=90, fontsize=7)
    return fig
