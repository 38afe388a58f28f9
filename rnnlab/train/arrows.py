"""Arrow-pointing images (after pLSTM's arrow-pointing extrapolation task, Pöppel et al. 2025,
https://arxiv.org/abs/2506.11997), on a pixel grid: does the arrow point at the marked cell?

An image ``(3, N, N)`` has three channels: the arrow's shaft (two cells), its tip, and one
marked cell. The arrow runs along one of the 8 compass directions; the label is 1 when the
marked cell lies on the ray beyond the tip. Half the images are positive; a negative's mark is
any other free cell. (The paper draws arrows at any angle with anti-aliasing; the compass
version keeps the geometry exact at small sizes.) A larger N at test time puts the mark farther
away than anything seen in training: the extrapolation.
"""
from __future__ import annotations

import numpy as np
import torch

from ..checks import check_int

DIRECTIONS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]
SHAFT = 2  # shaft cells behind the tip


def ray(tip, d, size):
    """Cells beyond ``tip`` in direction ``d`` inside a ``size`` grid."""
    out, (i, j) = [], tip
    while True:
        i, j = i + d[0], j + d[1]
        if not (0 <= i < size and 0 <= j < size):
            return out
        out.append((i, j))


def _one(rng: np.random.Generator, size: int, positive: bool):
    """One image (3, size, size) as numpy, with an arrow whose ray has at least one cell."""
    while True:
        d = DIRECTIONS[rng.integers(len(DIRECTIONS))]
        tip = (int(rng.integers(size)), int(rng.integers(size)))
        shaft = [(tip[0] - m * d[0], tip[1] - m * d[1]) for m in range(1, SHAFT + 1)]
        on_ray = ray(tip, d, size)
        if on_ray and all(0 <= i < size and 0 <= j < size for i, j in shaft):
            break
    taken = set(shaft) | {tip} | set(on_ray)
    if positive:
        mark = on_ray[rng.integers(len(on_ray))]
    else:
        free = [(i, j) for i in range(size) for j in range(size) if (i, j) not in taken]
        mark = free[rng.integers(len(free))]
    img = np.zeros((3, size, size), dtype=np.float32)
    for i, j in shaft:
        img[0, i, j] = 1
    img[1][tip] = 1
    img[2][mark] = 1
    return img


def arrows(n: int, size: int, seed: int):
    """``n`` images ``(n, 3, size, size)`` and labels ``(n,)`` (half positive, shuffled)."""
    check_int("arrows", "n", n, 1)
    check_int("arrows", "size", size, SHAFT + 2)
    check_int("arrows", "seed", seed, 0)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    images = np.stack([_one(rng, size, bool(y)) for y in labels])
    return torch.from_numpy(images), torch.from_numpy(labels).long()
