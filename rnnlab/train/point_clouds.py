"""Synthetic point clouds: noisy samples on the surfaces of primitive shapes (numpy, seeded).

Two tasks, both drawn from five primitives (sphere, cube, cylinder, cone, torus):

- ``classify``: one primitive per cloud, random size, rotation about z, offset and noise; the
  label is the primitive.
- ``segment``: two different primitives side by side in one cloud; each point's label is the
  primitive it was sampled from (a per-point task that needs local context: a global shape
  code cannot tell which half of the cloud is which).

Surface samples are area-uniform enough for the purpose (cube faces by area, cylinder caps by
area, cone and torus by rejection-free parametrisations with the right densities).
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from ..checks import check_choice, check_int, check_number

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")
TASKS = ("classify", "segment")


def _sphere(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _cube(n: int, rng: np.random.Generator) -> np.ndarray:
    p = rng.uniform(-1, 1, size=(n, 3))
    axis = rng.integers(0, 3, size=n)  # each face has the same area: pick one of 6 uniformly
    p[np.arange(n), axis] = rng.choice([-1.0, 1.0], size=n)
    return p


def _cylinder(n: int, rng: np.random.Generator) -> np.ndarray:
    # radius 1, height 2: side area 4π, caps 2π together, so a point is on a cap with p = 1/3
    theta = rng.uniform(0, 2 * np.pi, size=n)
    cap = rng.uniform(size=n) < 1 / 3
    r = np.where(cap, np.sqrt(rng.uniform(size=n)), 1.0)
    z = np.where(cap, rng.choice([-1.0, 1.0], size=n), rng.uniform(-1, 1, size=n))
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)


def _cone(n: int, rng: np.random.Generator) -> np.ndarray:
    # lateral surface, apex at z = 1, base radius 1 at z = -1: density grows linearly to the
    # base, so the distance from the apex is sqrt(uniform)
    s = np.sqrt(rng.uniform(size=n))
    theta = rng.uniform(0, 2 * np.pi, size=n)
    return np.stack([s * np.cos(theta), s * np.sin(theta), 1 - 2 * s], axis=1)


def _torus(n: int, rng: np.random.Generator, major: float = 0.7, minor: float = 0.3
           ) -> np.ndarray:
    # the area element is (R + r cos φ): accept φ by rejection on that weight
    phi = np.empty(0)
    while phi.size < n:
        cand = rng.uniform(0, 2 * np.pi, size=2 * n)
        keep = rng.uniform(size=2 * n) < (major + minor * np.cos(cand)) / (major + minor)
        phi = np.concatenate([phi, cand[keep]])
    phi = phi[:n]
    theta = rng.uniform(0, 2 * np.pi, size=n)
    ring = major + minor * np.cos(phi)
    return np.stack([ring * np.cos(theta), ring * np.sin(theta), minor * np.sin(phi)], axis=1)


SAMPLERS = {"sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone,
            "torus": _torus}


def shape(kind: int, n: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """``n`` points ``(n, 3)`` on primitive ``SHAPES[kind]`` in [-1, 1]³, rotated about z, plus
    Gaussian noise of std ``noise``."""
    p = SAMPLERS[SHAPES[kind]](n, rng)
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return p @ rot.T + rng.normal(scale=noise, size=p.shape)


def make_clouds(task: str, n_clouds: int, points: int, seed: int, noise: float = 0.02
                ) -> Dict[str, torch.Tensor]:
    """``{"xyz": (n, points, 3) float32, "label": (n,) long, "point_label": (n, points) long}``.

    ``classify``: ``label`` is the primitive, ``point_label`` repeats it. ``segment``: two
    different primitives (half the points each, scaled to fit side by side along a random
    direction in the x-y plane); ``point_label`` is each point's primitive, ``label`` the
    first primitive.
    """
    check_choice("make_clouds", "task", task, TASKS)
    check_int("make_clouds", "n_clouds", n_clouds, 1)
    check_int("make_clouds", "points", points, 2)
    check_int("make_clouds", "seed", seed, 0)
    check_number("make_clouds", "noise", noise, 0, 1)
    rng = np.random.default_rng(seed)
    xyz = np.empty((n_clouds, points, 3), dtype=np.float32)
    point_label = np.empty((n_clouds, points), dtype=np.int64)
    label = np.empty(n_clouds, dtype=np.int64)
    for i in range(n_clouds):
        if task == "classify":
            kind = int(rng.integers(len(SHAPES)))
            scale = rng.uniform(0.6, 1.0)
            xyz[i] = shape(kind, points, rng, noise) * scale + rng.uniform(-0.1, 0.1, size=3)
            point_label[i], label[i] = kind, kind
        else:
            kinds = rng.choice(len(SHAPES), size=2, replace=False)
            a = rng.uniform(0, 2 * np.pi)
            side = np.array([np.cos(a), np.sin(a), 0.0]) * 0.5  # the two centres, 1.0 apart
            half = points // 2
            for j, (count, sign) in enumerate(((half, -1), (points - half, 1))):
                rows = slice(0, half) if j == 0 else slice(half, points)
                scale = rng.uniform(0.35, 0.45)
                xyz[i, rows] = shape(int(kinds[j]), count, rng, noise) * scale + sign * side
                point_label[i, rows] = kinds[j]
            label[i] = kinds[0]
            mix = rng.permutation(points)  # no information in the stored point order
            xyz[i], point_label[i] = xyz[i, mix], point_label[i, mix]
    return {"xyz": torch.from_numpy(xyz), "label": torch.from_numpy(label),
            "point_label": torch.from_numpy(point_label)}
