"""Moving-digit clips for the LRCN recipe, made from scikit-learn's bundled 8×8 digits.

One clip: a ``canvas × canvas`` black frame on which one 8×8 digit slides in a straight line at
``speed`` pixels per frame for ``frames`` frames, in one of 4 (right, left, down, up) or 8
(and the diagonals) directions. During a band of ``occluded`` consecutive frames, at a random
place in the clip, a grey occluder covers the digit's 8×8 box: the position stays visible (the
direction can still be read), the digit does not. Each clip has two labels: the direction of
motion and the digit's identity.

A model that pools frame features without order (the averaging baseline) sees the same set of
frames for a digit moving right from A to B as for one moving left from B to A, so it can tell
the axis of motion but not its sign: at most 50% direction accuracy, whatever its capacity.

Train and test clips come from disjoint digit images (``load_split``), so identity accuracy
measures reading unseen handwriting, not remembering images.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from ..checks import check_choice, check_int, check_number

DIGIT = 8  # side of the bundled images
OCCLUDER = 0.5  # grey: unlike the black background (0) and unlike most ink (up to 1)
# (dy, dx) per direction, in pixels per frame at speed 1; rows grow downwards
DIRECTIONS = {4: ((0, 1), (0, -1), (1, 0), (-1, 0)),
              8: ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))}
DIRECTION_NAMES = ("right", "left", "down", "up", "down-right", "down-left", "up-right",
                   "up-left")


def load_digits_images() -> Tuple[torch.Tensor, torch.Tensor]:
    """All 1797 bundled digits: images ``(N, 8, 8)`` in [0, 1] and labels ``(N,)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the moving-digit clips are made from scikit-learn's bundled digits: "
                          "pip install scikit-learn") from None
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16.0  # pixel values are 0..16
    return images, torch.tensor(data.target, dtype=torch.long)


def load_split(seed: int, test_fraction: float = 0.25) -> Dict[str, Tuple[torch.Tensor, ...]]:
    """``{"train": (images, labels), "test": (images, labels)}`` from disjoint images."""
    check_number("load_split", "test_fraction", test_fraction, 0, 1, low_open=True,
                 high_open=True)
    images, labels = load_digits_images()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(len(images) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


def check_geometry(frames: int, canvas: int, directions: int, occluded: int, speed: int) -> None:
    """The path must fit on the canvas; at least one frame shows the digit."""
    check_int("moving digits", "frames", frames, 2)
    check_int("moving digits", "speed", speed, 1)
    check_choice("moving digits", "directions", directions, sorted(DIRECTIONS))
    check_int("moving digits", "occluded", occluded, 0, frames - 1)
    travel = (frames - 1) * speed
    check_int("moving digits", "canvas", canvas, DIGIT + travel)


def _starts(velocity: torch.Tensor, room: int, travel: int, generator) -> torch.Tensor:
    """Start coordinates so that the whole path stays in ``[0, room]``: ``(n,)``."""
    low = torch.where(velocity < 0, travel, 0)
    high = torch.where(velocity > 0, room - travel, room)
    u = torch.rand(velocity.shape, generator=generator)
    return low + (u * (high - low + 1)).long().clamp(max=room)


def make_clips(images: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator,
               frames: int = 10, canvas: int = 20, directions: int = 4, occluded: int = 4,
               speed: int = 1) -> Dict[str, torch.Tensor]:
    """``n`` clips drawn with ``generator``: ``clips (n, T, canvas, canvas)``, ``direction
    (n,)`` (index into ``DIRECTIONS[directions]``), ``digit (n,)``, ``corner (n, T, 2)`` (the
    digit box's top-left (row, col) per frame) and ``hidden (n, T)`` (frames under the
    occluder)."""
    check_int("make_clips", "n", n, 1)
    check_geometry(frames, canvas, directions, occluded, speed)
    pick = torch.randint(len(images), (n,), generator=generator)
    direction = torch.randint(directions, (n,), generator=generator)
    velocity = torch.tensor(DIRECTIONS[directions])[direction] * speed  # (n, 2)
    room, travel = canvas - DIGIT, (frames - 1) * speed
    start = torch.stack([_starts(velocity[:, a], room, travel, generator) for a in (0, 1)], 1)
    t = torch.arange(frames)
    corner = start[:, None, :] + t[None, :, None] * velocity[:, None, :]  # (n, T, 2)
    onset = torch.randint(frames - occluded + 1, (n,), generator=generator)
    hidden = (t[None] >= onset[:, None]) & (t[None] < (onset + occluded)[:, None])  # (n, T)

    ink = images[pick][:, None].expand(n, frames, DIGIT, DIGIT)  # (n, T, 8, 8)
    ink = torch.where(hidden[..., None, None], torch.full_like(ink, OCCLUDER), ink)
    offsets = torch.arange(DIGIT)
    rows = corner[..., 0, None, None] + offsets[:, None]  # (n, T, 8, 1)
    cols = corner[..., 1, None, None] + offsets[None, :]  # (n, T, 1, 8)
    clip_idx = torch.arange(n)[:, None, None, None]
    frame_idx = t[None, :, None, None]
    clips = torch.zeros(n, frames, canvas, canvas)
    clips[clip_idx, frame_idx, rows, cols] = ink  # paste each 8×8 box at its corner
    return {"clips": clips, "direction": direction, "digit": labels[pick], "corner": corner,
            "hidden": hidden}
