"""How deep the grid's Universal Transformers with ACT compute: one table, a row per (model, task).

A UT run's records carry ``act_depth`` at each test length (``train.act_depth``: the mean ACT
steps over all positions of the test sequences). ACT can collapse to one step for good (a
position that halts at step 1 gives its halting unit no gradient), and then the UT is a one-layer
Transformer: its score alone does not say so, this table does. Seeds are averaged (a deepest
seed would not be a "best" one), whatever the grid's ``aggregate``, and a row's score is of the
same runs as its depth (records written before the arena recorded depth have none).
"""
from __future__ import annotations

from typing import List

from ..checks import is_number
from .config import ArenaConfig
from .store import summary

HEADER = ["model", "task", "metric", "seeds", "score at train length", "depth at train length",
          "depth beyond train"]
TITLE = "ACT depth: mean depth steps per position (Universal Transformers with ACT)"


def depth_rows(cfg: ArenaConfig, records: List[dict]) -> List[list]:
    """``[model, task, metric, seeds, score, depth, depth beyond]`` per (model, task) of the grid
    whose records carry ``act_depth``, in the grid's order: how many seeds' runs do, and over
    those runs the task's metric and the ACT depth at the longest train length (the first test
    length) and the depth averaged over the longer test lengths (None for a task tested only at
    its train length), each a mean over the seeds."""
    deep = [{**r, "metric": "act_depth", "value": r["act_depth"]} for r in records
            if is_number(r.get("act_depth"))]
    if not deep:
        return []
    runs = {(r["model"], r["task"], r["seed"]) for r in deep}
    depths = summary(deep)
    scores = summary([r for r in records if (r["model"], r["task"], r["seed"]) in runs])
    metrics = {(m, t): metric for m, t, metric in scores}
    rows = []
    for model in cfg.models:
        for task in cfg.tasks:
            depth = depths.get((model, task, "act_depth"))
            if depth is None:
                continue
            train, *beyond = sorted(depth)
            metric = metrics[(model, task)]
            seeds = sum(1 for m, t, _ in runs if (m, t) == (model, task))
            rows.append([model, task, metric, seeds, scores[(model, task, metric)].get(train),
                         depth[train],
                         sum(depth[n] for n in beyond) / len(beyond) if beyond else None])
    return rows
