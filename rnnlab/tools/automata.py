"""Deterministic finite automata, and their extraction from state-regularised RNNs.

- ``DFA``: states ``0..Q-1``, an alphabet of symbol names, a total transition table
  ``delta[q][a]``, a start state and the accepting states. ``transitions`` gives the same table
  as a dict ``{(q, symbol): q'}``.
- ``minimize`` (Hopcroft's partition refinement, then the reachable states renumbered in
  breadth-first order): two DFAs of one language minimise to the same table.
- ``equivalent(a, b)``: the product construction, searched breadth-first with symbols in
  alphabet order, so the counterexample it returns when the languages differ is the shortest
  word in one language and not the other, and the first of those in alphabet order.
- ``to_dot`` (Graphviz text) and ``draw`` (a PNG by matplotlib: no system graphviz needed).
- ``tomita(g)``: the reference DFA of Tomita grammar g, built from the task's own table
  (``rnnlab.tasks.languages.TOMITA_DFAS``) over the alphabet ``("0", "1")``.
- ``extract(model, task)``: Wang & Niepert's five steps on an ``SRAcceptor``
  (``rnnlab.nn.state_reg``): (1) each centroid accepts when the output layer applied to it says
  so; (2) the network runs on strings of the task's test split and every transition (argmax
  centroid before, symbol, argmax centroid after) is counted; (3) the start state is the
  centroid reached on the start symbol; (4) a breadth-first search from it keeps, for each
  (state, symbol), the most frequent successor; (5) ``minimize`` and ``equivalent`` follow.
"""
from __future__ import annotations

import dataclasses
from collections import Counter, deque
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

from ..checks import check_int, is_int


@dataclasses.dataclass(frozen=True)
class DFA:
    """A complete DFA: ``delta[q][a]`` is the state after symbol ``alphabet[a]`` in state q.

    ``names`` (optional): a label per state for drawings (an extracted DFA names each state by
    its centroid). Words are sequences of symbol indices (``accepts([0, 1, 1])``)."""

    delta: Tuple[Tuple[int, ...], ...]
    accepting: FrozenSet[int]
    start: int = 0
    alphabet: Tuple[str, ...] = ("0", "1")
    names: Optional[Tuple[str, ...]] = None

    def __post_init__(self):
        delta = tuple(tuple(row) for row in self.delta)
        object.__setattr__(self, "delta", delta)
        object.__setattr__(self, "accepting", frozenset(self.accepting))
        object.__setattr__(self, "alphabet", tuple(str(a) for a in self.alphabet))
        if not delta:
            raise ValueError("DFA: delta must have at least one state, got none")
        n, m = len(delta), len(self.alphabet)
        if m == 0 or len(set(self.alphabet)) != m:
            raise ValueError(f"DFA: alphabet must hold distinct symbols, got {self.alphabet}")
        for q, row in enumerate(delta):
            if len(row) != m or not all(is_int(t) and 0 <= t < n for t in row):
                raise ValueError(f"DFA: delta[{q}] must hold {m} states in [0, {n - 1}] (one "
                                 f"per symbol), got {row}")
        check_int("DFA", "start", self.start, 0, n - 1)
        bad = sorted(q for q in self.accepting if not (is_int(q) and 0 <= q < n))
        if bad:
            raise ValueError(f"DFA: accepting states must be in [0, {n - 1}], got {bad}")
        if self.names is not None:
            object.__setattr__(self, "names", tuple(str(s) for s in self.names))
            if len(self.names) != n:
                raise ValueError(f"DFA: names must give one label per state ({n}), got "
                                 f"{len(self.names)}")

    @property
    def n_states(self) -> int:
        return len(self.delta)

    @property
    def states(self) -> Tuple[int, ...]:
        return tuple(range(self.n_states))

    @property
    def transitions(self) -> Dict[Tuple[int, str], int]:
        """``{(q, symbol): q'}`` for every state and symbol."""
        return {(q, a): row[i] for q, row in enumerate(self.delta)
                for i, a in enumerate(self.alphabet)}

    def run(self, word: Sequence[int]) -> int:
        """The state after reading ``word`` (symbol indices) from the start."""
        q = self.start
        for a in word:
            q = self.delta[q][a]
        return q

    def accepts(self, word: Sequence[int]) -> bool:
        return self.run(word) in self.accepting

    def text(self, word: Sequence[int]) -> str:
        """``word`` in the alphabet's symbols (``"ε"`` for the empty word)."""
        return "".join(self.alphabet[a] for a in word) or "ε"

    def label(self, q: int) -> str:
        return self.names[q] if self.names is not None else str(q)


def reachable(dfa: DFA) -> DFA:
    """The states reachable from the start, renumbered in breadth-first order (start = 0,
    successors in alphabet order), which makes the table of a minimal DFA canonical."""
    order, seen, queue = [], {dfa.start}, deque([dfa.start])
    while queue:
        q = queue.popleft()
        order.append(q)
        for t in dfa.delta[q]:
            if t not in seen:
                seen.add(t)
                queue.append(t)
    new = {q: i for i, q in enumerate(order)}
    return DFA(tuple(tuple(new[t] for t in dfa.delta[q]) for q in order),
               frozenset(new[q] for q in order if q in dfa.accepting), 0, dfa.alphabet,
               None if dfa.names is None else tuple(dfa.names[q] for q in order))


def minimize(dfa: DFA) -> DFA:
    """The minimal DFA of ``dfa``'s language (Hopcroft 1971), canonically numbered. A state
    merges several only when they are indistinguishable; its name lists theirs ("3/7")."""
    dfa = reachable(dfa)
    blocks = _hopcroft(dfa)
    block_of = {q: b for b, members in enumerate(blocks) for q in members}
    reps = [min(members) for members in blocks]
    names = None if dfa.names is None else tuple(
        "/".join(dfa.names[q] for q in sorted(members)) for members in blocks)
    quotient = DFA(tuple(tuple(block_of[t] for t in dfa.delta[r]) for r in reps),
                   frozenset(block_of[q] for q in dfa.accepting), block_of[dfa.start],
                   dfa.alphabet, names)
    return reachable(quotient)


def _hopcroft(dfa: DFA) -> List[FrozenSet[int]]:
    """The coarsest partition of the states that respects acceptance and the transitions."""
    states = set(dfa.states)
    accept, reject = frozenset(dfa.accepting), frozenset(states - dfa.accepting)
    partition = [b for b in (accept, reject) if b]
    work = [min(partition, key=len)] if len(partition) == 2 else []
    preimage = [dict() for _ in dfa.alphabet]  # preimage[a][q]: states going to q on a
    for p, row in enumerate(dfa.delta):
        for a, q in enumerate(row):
            preimage[a].setdefault(q, set()).add(p)
    while work:
        splitter = work.pop()
        for a in range(len(dfa.alphabet)):
            into = set().union(*(preimage[a].get(q, set()) for q in splitter))
            for block in list(partition):
                inside, outside = block & into, block - into
                if not inside or not outside:
                    continue
                partition.remove(block)
                partition += [frozenset(inside), frozenset(outside)]
                if block in work:  # both halves still have to split the others
                    work.remove(block)
                    work += [frozenset(inside), frozenset(outside)]
                else:  # the smaller half suffices (Hopcroft's n log n trick)
                    work.append(min(frozenset(inside), frozenset(outside), key=len))
    return sorted(partition, key=min)


def equivalent(a: DFA, b: DFA) -> Tuple[bool, Optional[Tuple[int, ...]]]:
    """``(True, None)`` when ``a`` and ``b`` accept the same language, else ``(False, w)``
    with w the shortest word (symbol indices) that one accepts and the other rejects, the
    first in alphabet order among those: a breadth-first search of the product automaton."""
    if a.alphabet != b.alphabet:
        raise ValueError(f"equivalent: the DFAs must share an alphabet, got {a.alphabet} and "
                         f"{b.alphabet}")
    start = (a.start, b.start)
    parent: Dict[Tuple[int, int], Optional[Tuple[Tuple[int, int], int]]] = {start: None}
    queue = deque([start])
    while queue:
        pair = queue.popleft()
        if (pair[0] in a.accepting) != (pair[1] in b.accepting):
            word = []
            while parent[pair] is not None:
                pair, symbol = parent[pair]
                word.append(symbol)
            return False, tuple(reversed(word))
        for s in range(len(a.alphabet)):
            nxt = (a.delta[pair[0]][s], b.delta[pair[1]][s])
            if nxt not in parent:
                parent[nxt] = (pair, s)
                queue.append(nxt)
    return True, None


def tomita(grammar: int) -> DFA:
    """The reference DFA of Tomita grammar 1..7 (the task's table), minimal."""
    from ..tasks.languages import TOMITA_DFAS
    check_int("tomita", "grammar", grammar, 1, 7)
    delta, accept = TOMITA_DFAS[grammar]
    return minimize(DFA(delta, frozenset(accept), 0, ("0", "1")))


def to_dot(dfa: DFA, name: str = "dfa") -> str:
    """Graphviz text: accepting states as double circles, an arrow from a point into the
    start, one edge per (state, successor) labelled with its symbols, comma-separated."""
    lines = [f"digraph {name} {{", "  rankdir=LR;", "  __start [shape=point];"]
    for q in dfa.states:
        shape = "doublecircle" if q in dfa.accepting else "circle"
        lines.append(f'  {q} [shape={shape}, label="{dfa.label(q)}"];')
    lines.append(f"  __start -> {dfa.start};")
    for q, t, symbols in _edges(dfa):
        lines.append(f'  {q} -> {t} [label="{",".join(symbols)}"];')
    return "\n".join(lines + ["}"]) + "\n"


def _edges(dfa: DFA) -> List[Tuple[int, int, List[str]]]:
    """``(q, successor, symbols)`` per distinct edge, in state then symbol order."""
    edges: Dict[Tuple[int, int], List[str]] = {}
    for q, row in enumerate(dfa.delta):
        for a, t in enumerate(row):
            edges.setdefault((q, t), []).append(dfa.alphabet[a])
    return [(q, t, s) for (q, t), s in edges.items()]


def draw(dfa: DFA, ax, title: str = "") -> None:
    """Draw ``dfa`` on a matplotlib axis: states on a circle (start on top), accepting ones
    doubled, self-loops as small rings, two-way edges bent apart, symbols on the edges."""
    import math

    from matplotlib.patches import Circle, FancyArrowPatch
    n, r = dfa.n_states, 0.16
    angle = [math.pi / 2 - 2 * math.pi * i / n for i in range(n)]  # start on top
    pos = [(0.0, 0.0)] if n == 1 else [(math.cos(t), math.sin(t)) for t in angle]
    for q, (x, y) in enumerate(pos):
        ax.add_patch(Circle((x, y), r, fill=False, lw=1.4))
        if q in dfa.accepting:
            ax.add_patch(Circle((x, y), r * 0.8, fill=False, lw=1.0))
        ax.text(x, y, dfa.label(q), ha="center", va="center", fontsize=8)
    sx, sy = pos[dfa.start]
    ax.add_patch(FancyArrowPatch((sx - 0.55, sy), (sx - r, sy), arrowstyle="-|>",
                                 mutation_scale=10, lw=1.2))
    for q, t, symbols in _edges(dfa):
        (x0, y0), (x1, y1), text = pos[q], pos[t], ",".join(symbols)
        if q == t:  # a ring outside the circle of states, its label beyond it
            ox, oy = (x0, y0) if n > 1 else (0.0, 1.0)
            norm = math.hypot(ox, oy) or 1.0
            cx, cy = x0 + 1.35 * r * ox / norm, y0 + 1.35 * r * oy / norm
            ax.add_patch(Circle((cx, cy), 0.5 * r, fill=False, lw=1.0))
            ax.text(cx + 1.2 * r * ox / norm, cy + 1.2 * r * oy / norm, text, fontsize=7,
                    ha="center", va="center")
            continue
        bend = 0.25 if dfa.delta[t].count(q) else 0.0  # two-way: bend both apart
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=10,
                                     lw=1.0, shrinkA=14, shrinkB=14,
                                     connectionstyle=f"arc3,rad={bend}"))
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        ax.text(mx - bend * (y1 - y0) * 0.55, my + bend * (x1 - x0) * 0.55, text, fontsize=7,
                ha="center", va="center", backgroundcolor="white")
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.45, 1.45)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)


def save_png(dfas: Sequence[Tuple[DFA, str]], path, columns: int = 4) -> Path:
    """Draw ``(dfa, title)`` pairs in a grid and write the PNG atomically."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import write_atomic
    rows = max(1, -(-len(dfas) // columns))
    cols = min(columns, max(1, len(dfas)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (dfa, title) in zip(axes.flat, dfas):
        draw(dfa, ax, title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return write_atomic(Path(path), buf.getvalue())


def extract(model, task, strings: int = 1000, length: int = 20, seed: int = 0,
            accept_class: int = 1) -> DFA:
    """The DFA of a trained ``SRAcceptor`` on ``task`` (steps 1-4 of the module docstring;
    step 5 is ``minimize``). ``strings`` strings of ``length`` tokens are drawn from the
    task's test split (seed ``seed``); a centroid accepts when the output layer's argmax on it
    is ``accept_class``. A (state, symbol) that the strings never take gets the network's own
    answer from the centroid itself (the inner cell stepped from it, other state leaves zero).
    States are named by their centroid's index."""
    import torch

    from ..tasks.base import generator
    for name, v, low in (("strings", strings, 1), ("length", length, 1), ("seed", seed, 0)):
        check_int("extract", name, v, low)
    check_int("extract", "accept_class", accept_class, 0, model.head.out_features - 1)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            tokens, _, _ = task.sample(strings, length, generator(seed, "test"))
            path = model.states(tokens)  # (B, T + 1)
            accepts = model.head(model.cell.centroids).argmax(-1) == accept_class  # step 1
            counts = Counter(zip(path[:, :-1].reshape(-1).tolist(), tokens.reshape(-1).tolist(),
                                 path[:, 1:].reshape(-1).tolist()))  # step 2
            start = Counter(path[:, 0].tolist()).most_common(1)[0][0]  # step 3
            return _breadth_first(model, counts, start, accepts.tolist(), task.vocab_size)
    finally:
        model.train(was)


def _breadth_first(model, counts: Counter, start: int, accepts: List[bool],
                   symbols: int) -> DFA:
    """Step 4: from ``start``, each (state, symbol)'s most frequent successor."""
    best: Dict[Tuple[int, int], Tuple[int, int]] = {}
    for (q, a, t), c in counts.items():
        if (q, a) not in best or (c, -t) > (best[(q, a)][1], -best[(q, a)][0]):
            best[(q, a)] = (t, c)  # ties: the lower centroid index
    order, seen, queue, rows = [], {start}, deque([start]), {}
    while queue:
        q = queue.popleft()
        order.append(q)
        rows[q] = [best[(q, a)][0] if (q, a) in best else _from_centroid(model, q, a)
                   for a in range(symbols)]
        for t in rows[q]:
            if t not in seen:
                seen.add(t)
                queue.append(t)
    index = {q: i for i, q in enumerate(order)}
    return DFA(tuple(tuple(index[t] for t in rows[q]) for q in order),
               frozenset(index[q] for q in order if accepts[q]), 0,
               tuple(str(a) for a in range(symbols)), tuple(str(q) for q in order))


def _from_centroid(model, q: int, symbol: int) -> int:
    """The argmax centroid after ``symbol`` from the state whose vector leaf is centroid q."""
    import torch
    cell = model.cell
    state = cell.init_state(1, cell.centroids.dtype, cell.centroids.device)
    leaves = (state,) if not isinstance(state, tuple) else state
    leaves = (cell.centroids[q][None],) + leaves[1:]  # (1, H)
    u = cell.project(model.one_hot(torch.tensor([[symbol]]))[:, 1:])[:, 0]  # (1, P)
    _, alpha = cell.step_alpha(u, leaves if len(leaves) > 1 else leaves[0])
    return int(alpha.argmax(-1))


def word_agreement(model, dfa: DFA, tokens) -> float:
    """The share of prefixes of ``tokens (B, T)`` (the empty one included) on which ``dfa``
    and the network (argmax of its output, class 1 = accept) agree: the DFA's fidelity."""
    import torch
    with torch.no_grad():
        net = model(tokens).argmax(-1).eq(1)  # (B, T + 1)
    q = [dfa.start] * tokens.shape[0]
    agree = sum(int(net[b, 0]) == (q[b] in dfa.accepting) for b in range(len(q)))
    for t in range(tokens.shape[1]):
        q = [dfa.delta[s][a] for s, a in zip(q, tokens[:, t].tolist())]
        agree += sum(int(net[b, t + 1]) == (q[b] in dfa.accepting) for b in range(len(q)))
    return agree / net.numel()
