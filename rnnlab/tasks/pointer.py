"""Pointer tasks (Vinyals et al., 2015): the answer is a sequence of positions in the input.

Convention (``kind="pointer"``, see ``base.py``): ``length`` is the number n of input elements;
``inputs (B, n, F)`` float; ``targets (B, n + 1)`` long, the answer's indices into the inputs
followed by the end marker ``n``, then padding (``n``, unscored); ``mask (B, n + 1)`` marks the
answer and its end marker. A model gives pointer logits ``(B, n + 1, n + 1)`` over the n inputs
and the end marker (``n_outputs = 1`` extra choice). Every answer fits in n + 1 positions.

- ``sort``: n reals uniform in [0, 1); the indices in ascending order of value, then END.
- ``convex_hull``: n points uniform in [0, 1]²; the hull's vertices counter-clockwise starting
  from the vertex with the lowest index, then END. Only corners count: points on an edge between
  two corners are not vertices; equal points count once (the lowest index); with all points on
  one line the hull is its two end points, with all points equal the one point.

Metrics: ``sequence_accuracy`` (exact match, the task's metric) and per-position ``accuracy``;
``PointerTask.scores`` gives both, and for the hull the area coverage of the predicted polygon.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import torch

from . import metrics
from .base import Sample, Task, register

Point = Tuple[float, float]


def _cross(o: Point, a: Point, b: Point) -> float:
    """z of (a - o) × (b - o): > 0 when o → a → b turns left (counter-clockwise)."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def convex_hull(points: Sequence[Point]) -> List[int]:
    """Indices of the hull's corners of ``points (n, 2)``, counter-clockwise from the lowest
    index (Andrew's monotone chain, O(n log n)). Collinear edge points are left out; equal
    points count once, as their lowest index."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i))
    unique = [i for k, i in enumerate(order) if k == 0 or points[i] != points[order[k - 1]]]
    if len(unique) <= 2:
        return sorted(unique)

    def chain(indices: List[int]) -> List[int]:
        kept: List[int] = []
        for i in indices:
            while len(kept) >= 2 and _cross(points[kept[-2]], points[kept[-1]], points[i]) <= 0:
                kept.pop()
            kept.append(i)
        return kept

    lower, upper = chain(unique), chain(unique[::-1])
    hull = lower[:-1] + upper[:-1]  # counter-clockwise, each corner once
    start = hull.index(min(hull))
    return hull[start:] + hull[:start]


def polygon_area(points: Sequence[Point], indices: Sequence[int]) -> float:
    """Signed shoelace area of the polygon through ``points[indices]`` (> 0 counter-clockwise)."""
    total = 0.0
    for k, i in enumerate(indices):
        j = indices[(k + 1) % len(indices)]
        total += points[i][0] * points[j][1] - points[j][0] * points[i][1]
    return total / 2


def hull_area_coverage(points: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Area of the predicted polygon over the true hull's, per example: ``points (B, n, 2)``,
    ``indices (B, L)`` (read up to the first end marker ``n``) -> ``(B,)`` float64. An output
    that repeats a point, has fewer than 3 vertices or runs clockwise scores 0; for a simple
    counter-clockwise polygon of input points the value is in [0, 1]. Self-intersection is not
    checked (such an output scores its signed area)."""
    n = points.shape[1]
    out = torch.zeros(points.shape[0], dtype=torch.float64)
    for b, (pts, idx) in enumerate(zip(points.double().tolist(), indices.tolist())):
        pred = idx[:idx.index(n)] if n in idx else idx
        pts = [tuple(p) for p in pts]
        true = polygon_area(pts, convex_hull(pts))
        if len(pred) >= 3 and len(set(pred)) == len(pred) and true > 0:
            out[b] = max(polygon_area(pts, pred), 0.0) / true
    return out


@dataclasses.dataclass(frozen=True)
class PointerTask(Task):
    """Base of the pointer tasks: targets are indices into the inputs, then the end marker n."""

    kind = "pointer"
    metric = "sequence_accuracy"

    @property
    def n_outputs(self) -> int:
        return 1  # choices beyond the n inputs: the end marker (index n)

    def _answers(self, inputs: torch.Tensor) -> List[List[int]]:
        raise NotImplementedError

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        x = self._inputs(batch, length, gen)  # (B, n, F)
        targets = torch.full((batch, length + 1), length, dtype=torch.long)  # (B, L_out)
        mask = torch.zeros(batch, length + 1, dtype=torch.bool)
        for b, answer in enumerate(self._answers(x)):
            targets[b, :len(answer)] = torch.tensor(answer, dtype=torch.long)
            mask[b, :len(answer) + 1] = True  # the answer and its end marker
        return x, targets, mask

    def _inputs(self, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
        return torch.rand(batch, length, self.vocab_size, generator=gen)  # (B, n, F)

    def scores(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor,
               mask: torch.Tensor) -> Dict[str, float]:
        """Every metric of the task on pointer logits ``outputs (B, L_out, n + 1)``."""
        return {"sequence_accuracy": metrics.compute("sequence_accuracy", outputs, targets, mask),
                "accuracy": metrics.compute("accuracy", outputs, targets, mask)}

    def decode(self, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> str:
        """``inputs (n, F)``, ``targets (L_out,)``, ``mask (L_out,)`` as text."""
        n = inputs.shape[0]
        values = [round(v[0], 3) if len(v) == 1 else tuple(round(c, 3) for c in v)
                  for v in inputs.tolist()]
        answer = ["END" if t == n else t for t, m in zip(targets.tolist(), mask.tolist()) if m]
        return f"inputs: {values}\nanswer: {answer}"


@register
@dataclasses.dataclass(frozen=True)
class Sort(PointerTask):
    """Sort n reals uniform in [0, 1): point at them in ascending order, then END."""

    name = "sort"
    train_lengths = (5, 10)
    test_lengths = (10, 20, 40)

    @property
    def vocab_size(self) -> int:
        return 1

    def _answers(self, inputs: torch.Tensor) -> List[List[int]]:
        return inputs[..., 0].argsort(dim=1, stable=True).tolist()


@register
@dataclasses.dataclass(frozen=True)
class ConvexHull(PointerTask):
    """Points uniform in [0, 1]²: the convex hull's corners counter-clockwise from the lowest
    index, then END."""

    name = "convex_hull"
    train_lengths = (5, 20)
    test_lengths = (20, 50)
    min_length = 3

    @property
    def vocab_size(self) -> int:
        return 2

    def _answers(self, inputs: torch.Tensor) -> List[List[int]]:
        return [convex_hull([tuple(p) for p in pts]) for pts in inputs.double().tolist()]

    def scores(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor,
               mask: torch.Tensor) -> Dict[str, float]:
        """Also ``area_coverage``: the mean of ``hull_area_coverage`` over the batch."""
        out = super().scores(inputs, outputs, targets, mask)
        out["area_coverage"] = hull_area_coverage(inputs, outputs.argmax(-1)).mean().item()
        return out

