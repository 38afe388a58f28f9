"""Robot-like 2-D trajectories: Lissajous movement primitives with random switches.

A trajectory is a run of cycles. Each cycle draws one primitive, a closed Lissajous curve
``x = ax (sin(fx φ + px) − sin px)``, ``y = ay (sin(fy φ + py) − sin py)`` traced once as the
phase φ goes from 0 to 2π in ``period`` steps. Every primitive starts and ends at the home point
(0, 0), so switching between primitives at a cycle boundary keeps the arm's path continuous (as
in Tani's robot experiments, where primitives are chained through a home posture). At each
boundary the next primitive repeats the current one, or with probability ``switch_prob`` is
drawn uniformly among the others: the switches are the stochastic part a model must infer from
the observations; the shape of a cycle, once begun, is deterministic. Gaussian observation noise
of std ``noise`` is added last.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from ..checks import check_int, check_number

# name -> (ax, fx, px, ay, fy, py); all pass through (0, 0) at φ = 0 and stay in [-1, 1]²
PRIMITIVES = {
    "eight": (0.8, 1, 0.0, 0.5, 2, 0.0),  # figure eight lying on its side
    "circle_down": (0.5, 1, 0.0, 0.5, 1, math.pi / 2),  # clockwise circle below home
    "circle_up": (-0.5, 1, 0.0, -0.5, 1, math.pi / 2),  # the same circle above home, reversed
    "triple": (0.6, 1, 0.0, 0.6, 3, 0.0),  # 1:3 Lissajous (three lobes)
}
NAMES = tuple(PRIMITIVES)


def primitive_cycle(name: str, period: int) -> torch.Tensor:
    """One cycle of a primitive ``(period, 2)``; step k is at φ = 2π (k + 1) / period, so the
    cycle ends at the home point and the next cycle's first step moves away from it."""
    ax, fx, px, ay, fy, py = PRIMITIVES[name]
    phi = 2 * math.pi * torch.arange(1, period + 1, dtype=torch.float64) / period
    x = ax * (torch.sin(fx * phi + px) - math.sin(px))
    y = ay * (torch.sin(fy * phi + py) - math.sin(py))
    return torch.stack([x, y], -1).float()  # (period, 2)


def check_args(n: int, cycles: int, period: int, switch_prob: float, noise: float) -> None:
    owner = "make_trajectories"
    check_int(owner, "n", n, 1)
    check_int(owner, "cycles", cycles, 1)
    check_int(owner, "period", period, 3)
    check_number(owner, "switch_prob", switch_prob, 0, 1)
    check_number(owner, "noise", noise, 0, 1)


def make_trajectories(n: int, cycles: int = 8, period: int = 20, switch_prob: float = 0.3,
                      noise: float = 0.01, generator: Optional[torch.Generator] = None
                      ) -> Dict[str, torch.Tensor]:
    """``n`` trajectories of ``cycles * period`` steps: ``{"x": (n, T, 2) float32 positions with
    noise, "clean": (n, T, 2) without, "primitive": (n, T) long index into NAMES}``."""
    check_args(n, cycles, period, switch_prob, noise)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    shapes = torch.stack([primitive_cycle(name, period) for name in NAMES])  # (P, period, 2)
    k = len(NAMES)
    ids = torch.empty(n, cycles, dtype=torch.long)
    ids[:, 0] = torch.randint(k, (n,), generator=g)
    for c in range(1, cycles):
        switch = torch.rand(n, generator=g) < switch_prob
        # a different primitive, uniformly among the k - 1 others
        other = (ids[:, c - 1] + torch.randint(1, k, (n,), generator=g)) % k
        ids[:, c] = torch.where(switch, other, ids[:, c - 1])
    clean = shapes[ids].reshape(n, cycles * period, 2)  # (n, cycles, period, 2) -> (n, T, 2)
    x = clean + noise * torch.randn(clean.shape, generator=g)
    primitive = ids.repeat_interleave(period, dim=1)  # (n, T)
    return {"x": x, "clean": clean, "primitive": primitive}
