"""Data for sequential recommendation (SASRec, Kang & McAuley 2018): a MovieLens-1M
``ratings.dat`` loader, a synthetic generator with known sequential structure, and the
leave-one-out split.

Items are numbered ``1..n_items``; 0 is padding. A user's sequence is their items in time order.

Leave-one-out (as the paper): the last item is the test target, the second-last the validation
target, the rest is training. Users with fewer than 3 items only train.

The synthetic generator puts items on a ring with shortcuts: every item has ``degree``
successors (mostly the next items on the ring, a few random ones) with random transition
weights. A user starts at a random item and walks: each step goes to a
successor (with probability ``1 - noise``, by the weights) or jumps to any item (``noise``),
never revisiting an item (as a rating log: each movie once), so the next item's distribution given
the walk so far is known exactly (``ItemGraph.next_distribution``). The Bayes-optimal ranking
puts the most likely unvisited items first; its expected HR@10 under full ranking (history
excluded) is the mean top-10 probability mass over the test cases (``best_hit_rate``): no model
can beat it in expectation.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..checks import check_int, check_number

FORMAT = "UserID::MovieID::Rating::Timestamp"


@dataclasses.dataclass
class Interactions:
    """Per-user item sequences (time order, items ``1..n_items``)."""
    sequences: List[List[int]]
    n_items: int
    item_ids: List[int]  # item_ids[i - 1]: the original id of item i


def load_ratings(path) -> Interactions:
    """Read a MovieLens ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp`` per line); each
    user's movies sorted by timestamp (ties keep file order), movies renumbered ``1..n`` in
    order of first appearance. A malformed line raises ValueError naming the file and line."""
    path = Path(path)
    events: Dict[int, List[Tuple[int, int, int]]] = {}
    with path.open(encoding="latin-1") as f:  # ML-1M's files are Latin-1
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            fields = line.split("::")
            try:
                if len(fields) != 4:
                    raise ValueError
                user, movie, _rating, stamp = (int(x) for x in fields)
            except ValueError:
                raise ValueError(f"{path}:{number}: expected '{FORMAT}' (four integers), "
                                 f"got {line[:80]!r}") from None
            events.setdefault(user, []).append((stamp, number, movie))
    if not events:
        raise ValueError(f"{path}: no ratings (expected lines of '{FORMAT}')")
    index: Dict[int, int] = {}
    sequences = []
    for user in sorted(events):
        movies = [movie for _, _, movie in sorted(events[user])]
        sequences.append([index.setdefault(m, len(index) + 1) for m in movies])
    return Interactions(sequences, len(index), list(index))


@dataclasses.dataclass
class Split:
    """Leave-one-out: per user, the training items, and the validation / test targets (0: the
    user has fewer than 3 items and only trains)."""
    train: List[List[int]]
    valid: List[int]
    test: List[int]

    def history(self, user: int, stage: str) -> List[int]:
        """What the model reads to predict ``stage``'s target: train (valid), train + valid
        (test)."""
        return self.train[user] + ([self.valid[user]] if stage == "test" else [])

    def users(self, stage: str) -> List[int]:
        """Users with a ``stage`` ("valid" or "test") target."""
        targets = self.valid if stage == "valid" else self.test
        return [u for u, t in enumerate(targets) if t]


def leave_one_out(sequences: Sequence[Sequence[int]]) -> Split:
    """Last item test, second-last validation, the rest training (< 3 items: all training)."""
    train, valid, test = [], [], []
    for seq in sequences:
        seq = list(seq)
        short = len(seq) < 3
        train.append(seq if short else seq[:-2])
        valid.append(0 if short else seq[-2])
        test.append(0 if short else seq[-1])
    return Split(train, valid, test)


# ---- the synthetic generator --------------------------------------------------------------------

class ItemGraph:
    """Items ``1..n`` on a weighted digraph: ``weights[i, j]`` is the probability of the step
    i -> j when not jumping (rows sum to 1; row and column 0, padding, are zero); ``noise`` the
    probability of a jump to a uniformly random item."""

    def __init__(self, weights: np.ndarray, noise: float):
        check_number("ItemGraph", "noise", noise, 0.0, 1.0)
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 2 or weights.shape[0] != weights.shape[1] or weights.shape[0] < 2:
            raise ValueError(f"ItemGraph: weights must be a square (n + 1, n + 1) matrix, got "
                             f"shape {weights.shape}")
        self.weights, self.noise, self.n_items = weights, float(noise), weights.shape[0] - 1

    @classmethod
    def ring(cls, n_items: int, degree: int, noise: float, seed: int,
             shortcuts: int = 2) -> "ItemGraph":
        """A ring with shortcuts: item i's successors are the next ``degree - shortcuts``
        items on the ring and ``shortcuts`` random others, with Dirichlet(1) weights (users
        drift along the ring, now and then taking a shortcut)."""
        check_int("ItemGraph.ring", "n_items", n_items, 2)
        check_int("ItemGraph.ring", "degree", degree, 1, n_items - 1)
        check_int("ItemGraph.ring", "shortcuts", shortcuts, 0, degree)
        rng = np.random.default_rng(seed)
        weights = np.zeros((n_items + 1, n_items + 1))
        for i in range(1, n_items + 1):
            near = [(i - 1 + s) % n_items + 1 for s in range(1, degree - shortcuts + 1)]
            others = np.setdiff1d(np.arange(1, n_items + 1), near + [i])
            far = rng.choice(others, shortcuts, replace=False).tolist()
            weights[i, near + far] = rng.dirichlet(np.ones(degree))
        return cls(weights, noise)

    def next_distribution(self, last: int, visited) -> np.ndarray:
        """P(next item | the walk so far): ``(1 - noise) * weights[last] + noise / n`` over the
        unvisited items, renormalised (uniform over them when that mass is 0); shape (n + 1,)."""
        p = (1 - self.noise) * self.weights[last] + self.noise / self.n_items
        p[0] = 0.0
        p[list(visited)] = 0.0
        total = p.sum()
        if total <= 0:  # every successor visited and no noise: any unvisited item
            p = np.ones(self.n_items + 1)
            p[0] = 0.0
            p[list(visited)] = 0.0
            total = p.sum()
        return p / total

    def walk(self, length: int, rng: np.random.Generator) -> List[int]:
        """A walk of ``length`` distinct items from a uniformly random start."""
        check_int("ItemGraph.walk", "length", length, 1, self.n_items)
        items = [int(rng.integers(1, self.n_items + 1))]
        while len(items) < length:
            p = self.next_distribution(items[-1], items)
            items.append(int(rng.choice(self.n_items + 1, p=p)))
        return items


def synthetic(n_users: int = 2000, n_items: int = 1000, length: int = 50, degree: int = 12,
              noise: float = 0.1, seed: int = 0) -> Tuple[Interactions, ItemGraph]:
    """``n_users`` walks on ``ItemGraph.ring(n_items, degree, noise, seed)``, each of a
    uniformly random length in ``[length // 2, length]`` (at least 3)."""
    check_int("synthetic", "n_users", n_users, 1)
    check_int("synthetic", "length", length, 3, n_items)
    graph = ItemGraph.ring(n_items, degree, noise, seed)
    rng = np.random.default_rng(seed + 1)
    sequences = [graph.walk(int(rng.integers(max(3, length // 2), length + 1)), rng)
                 for _ in range(n_users)]
    return Interactions(sequences, n_items, list(range(1, n_items + 1))), graph


def best_hit_rate(graph: ItemGraph, split: Split, stage: str = "test", k: int = 10) -> float:
    """The Bayes-optimal expected HR@k under full ranking with the history excluded: the mean,
    over ``stage``'s users, of the ``k`` most likely next items' probability mass given the
    user's history."""
    check_int("best_hit_rate", "k", k, 1)
    masses = []
    for user in split.users(stage):
        history = split.history(user, stage)
        p = graph.next_distribution(history[-1], history)
        masses.append(np.sort(p)[::-1][:k].sum())
    return float(np.mean(masses)) if masses else float("nan")


def oracle_scores(graph: ItemGraph, histories: Sequence[Sequence[int]]) -> torch.Tensor:
    """The generator's own next-item probabilities, one row per history: ``(B, n + 1)``; a
    ranking by them is the Bayes-optimal one."""
    return torch.tensor(np.stack([graph.next_distribution(h[-1], h) for h in histories]))
