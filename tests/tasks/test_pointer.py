"""Pointer tasks: the convex hull against brute force (collinear and equal points included),
sort and hull targets, the end-marker convention, and the metrics."""
import itertools
import random

import pytest
import torch

from rnnlab import tasks
from rnnlab.tasks.pointer import convex_hull, hull_area_coverage, polygon_area


def brute_hull(points):
    """Corners by definition: (i, j) is a counter-clockwise hull edge when every other distinct
    point is strictly left of i -> j or strictly between i and j on the segment."""
    first = {}
    for i, p in enumerate(points):
        first.setdefault(p, i)
    ids = sorted(first.values())
    if len(ids) <= 2:
        return ids
    nxt = {}
    for i, j in itertools.permutations(ids, 2):
        (ax, ay), (bx, by) = points[i], points[j]
        ok = True
        for k in ids:
            if k in (i, j):
                continue
            cx, cy = points[k]
            cross = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
            dot = (cx - ax) * (bx - ax) + (cy - ay) * (by - ay)
            inside = cross == 0 and 0 < dot < (bx - ax) ** 2 + (by - ay) ** 2
            ok = ok and (cross > 0 or inside)
        if ok:
            nxt[i] = j
    hull = [min(nxt)]
    while nxt[hull[-1]] != hull[0]:
        hull.append(nxt[hull[-1]])
    return hull


def test_hull_matches_brute_force_on_grids_with_collinear_and_equal_points():
    rng = random.Random(0)
    for _ in range(400):
        n = rng.randint(1, 9)
        side = rng.choice([1, 2, 3, 5])
        pts = [(float(rng.randint(0, side)), float(rng.randint(0, side))) for _ in range(n)]
        assert convex_hull(pts) == brute_hull(pts), pts


def test_hull_matches_brute_force_on_uniform_points():
    gen = torch.Generator().manual_seed(0)
    for n in (3, 5, 12, 30):
        for pts in torch.rand(20, n, 2, generator=gen, dtype=torch.float64).tolist():
            pts = [tuple(p) for p in pts]
            assert convex_hull(pts) == brute_hull(pts)


@pytest.mark.parametrize("points, hull", [
    # square with edge midpoints and a centre: only the corners, ccw from the lowest index
    ([(0.5, 0.5), (1, 1), (0.5, 0), (0, 1), (1, 0), (0, 0), (1, 0.5)], [1, 3, 5, 4]),
    ([(0, 0), (1, 1), (2, 2), (3, 3)], [0, 3]),  # all on one line: its end points
    ([(2, 2), (1, 1), (0, 0)], [0, 2]),
    ([(1, 1), (1, 1), (1, 1)], [0]),  # all equal: one point
    ([(0.2, 0.2), (0, 0), (1, 0), (0, 1), (0, 0)], [1, 2, 3]),  # equal corners: lowest index
    ([(1, 0), (0, 1), (0, 0)], [0, 1, 2]),
    ([(0, 0), (0, 1), (1, 0)], [0, 2, 1]),
])
def test_hull_edge_cases(points, hull):
    pts = [tuple(map(float, p)) for p in points]
    assert convex_hull(pts) == hull
    if len(hull) >= 3:
        assert polygon_area(pts, hull) > 0  # counter-clockwise


def test_sort_targets_and_end_marker():
    task = tasks.get("sort")
    x, y, mask = task.sample(16, 7, tasks.generator(0, "train"))
    assert x.shape == (16, 7, 1) and y.shape == (16, 8) and mask.all()
    assert (y[:, -1] == 7).all()
    values = x[..., 0].gather(1, y[:, :7])  # (B, n) in answer order
    assert (values[:, 1:] > values[:, :-1]).all()
    assert (y[:, :7].sort(1).values == torch.arange(7)).all()  # a permutation


def test_hull_targets_mask_and_padding():
    task = tasks.get("convex_hull")
    x, y, mask = task.sample(32, 10, tasks.generator(0, "train"))
    assert x.shape == (32, 10, 2) and y.shape == (32, 11)
    for pts, target, m in zip(x.double().tolist(), y.tolist(), mask.tolist()):
        hull = convex_hull([tuple(p) for p in pts])
        k = len(hull)
        assert target[:k] == hull and target[k:] == [10] * (11 - k)
        assert m == [True] * (k + 1) + [False] * (10 - k)
        assert 3 <= k and hull[0] == min(hull)


def _logits(y, classes):
    return torch.nn.functional.one_hot(y, classes).double() * 10  # (B, L, n + 1)


def test_scores_and_area_coverage():
    task = tasks.get("convex_hull")
    x, y, mask = task.sample(8, 12, tasks.generator(2, "test"))
    perfect = _logits(y, 13)
    assert task.scores(x, perfect, y, mask) == pytest.approx(
        {"sequence_accuracy": 1.0, "accuracy": 1.0, "area_coverage": 1.0})
    assert task.loss(perfect, y, mask) < 1e-3
    # drop one corner (shift the rest left): a smaller polygon, partly right
    k = int(mask[0].sum()) - 1
    pred = y.clone()
    pred[0, 1:k] = y[0, 2:k + 1]
    pred[0, k] = 12
    cov = hull_area_coverage(x[:1], pred[:1])
    assert 0 < cov.item() < 1
    s = task.scores(x, _logits(pred, 13), y, mask)
    assert s["sequence_accuracy"] == pytest.approx(7 / 8) and s["accuracy"] < 1.0


def test_area_coverage_invalid_outputs_score_zero():
    pts = torch.tensor([[[0., 0.], [1., 0.], [1., 1.], [0., 1.], [0.5, 0.5]]])
    assert hull_area_coverage(pts, torch.tensor([[0, 1, 2, 3, 5]])).item() == 1.0
    assert hull_area_coverage(pts, torch.tensor([[0, 1, 4, 5, 5]])).item() == pytest.approx(0.25)
    assert hull_area_coverage(pts, torch.tensor([[0, 3, 2, 1, 5]])).item() == 0.0  # clockwise
    assert hull_area_coverage(pts, torch.tensor([[0, 1, 2, 1, 5]])).item() == 0.0  # repeats
    assert hull_area_coverage(pts, torch.tensor([[0, 1, 5, 2, 3]])).item() == 0.0  # < 3 points


def test_decode_names_the_end_marker():
    task = tasks.get("sort")
    x, y, mask = task.sample(1, 4, tasks.generator(0, "train"))
    text = task.decode(x[0], y[0], mask[0])
    assert "END" in text and "answer" in text
    assert task.n_outputs == 1 and task.kind == "pointer"
