"""The state-regularisation experiments behind ``rnnlab automata ...``: training an acceptor,
Tomita 1-7 (train, extract, minimise, compare) and balanced parentheses by nesting depth, with
their figures."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

PAREN_TOKENS = ("(", ")", "a")  # ids 0, 1, 2; "a" stands for the paper's letters a-z


# --- training, shared by both experiments ------------------------------------------------------
def train_acceptor(model, draw, steps: int, lr: float = 0.01, seed: int = 0,
                   final_temperature: Optional[float] = None,
                   final_mode: Optional[str] = None) -> float:
    """Adam on the masked cross-entropy of every prefix; ``draw(gen)`` gives ``(tokens (B, T),
    targets (B, T + 1), mask (B, T + 1), lengths (B,) or None)``. Returns the last loss.

    Two schedules of ours, not the paper's (a soft cell learns to code its state in mixtures
    of centroids, which argmax extraction cannot see): ``final_temperature``, tau stays the
    cell's own for the first half of the run, then falls geometrically to this value by 90%
    of it; ``final_mode``, the cell's mode from then on (from half-way without an annealed
    tau; ``"hard"``: the state is then exactly a centroid, so the network itself is a DFA
    over its centroids)."""
    import torch
    import torch.nn.functional as F
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(2 * seed)  # the train stream (tasks.generator's rule)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    tau0 = model.cell.temperature
    for step in range(steps):
        at = step / max(1, steps - 1)  # 0 .. 1 through the run
        if final_temperature is not None:  # tau0 to 50%, geometric to the final by 90%
            frac = min(1.0, max(0.0, (at - 0.5) / 0.4))
            model.cell.temperature = tau0 * (final_temperature / tau0) ** frac
        if final_mode is not None and at >= (0.9 if final_temperature is not None else 0.5):
            model.cell.mode = final_mode
        tokens, targets, mask, lengths = draw(gen)
        logits = model(tokens, None if lengths is None else lengths + 1)  # (B, T + 1, 2)
        loss = F.cross_entropy(logits[mask], targets[mask])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {loss.item()})")
    return float(loss.detach())


def tomita_batch(task, batch: int, max_length: int):
    """A ``draw`` for ``train_acceptor``: strings of one length U{1..max_length} per batch,
    every prefix scored, the empty prefix (accepted by every Tomita grammar) first."""
    import torch

    def draw(gen):
        length = int(torch.randint(1, max_length + 1, (), generator=gen))
        tokens, labels, _ = task.sample(batch, length, gen)
        targets = torch.cat([torch.ones(batch, 1, dtype=torch.long), labels], 1)  # (B, T + 1)
        return tokens, targets, torch.ones_like(targets, dtype=torch.bool), None
    return draw


# --- Tomita 1-7 --------------------------------------------------------------------------------
def run_tomita(grammars: List[int], hidden: int, centroids: int, temperature: float,
               steps: int, seed: int, mode: str = "soft", final_temperature=None,
               final_mode=None, log=print) -> dict:
    """Per grammar: train an SR-GRU, measure accuracy, extract, minimise, compare."""
    import torch

    from .. import tasks
    from ..nn.state_reg import SRAcceptor
    from ..tasks.base import generator
    from .automata import equivalent, extract, minimize, to_dot, tomita, word_agreement
    rows, drawings = [], []
    for g in grammars:
        start = time.time()
        task = tasks.get("tomita", grammar=g)
        torch.manual_seed(seed)  # the init, whatever ran before in this process
        model = SRAcceptor(2, 2, hidden, "gru", centroids, temperature, mode, seed=seed)
        loss = train_acceptor(model, tomita_batch(task, 64, 16), steps, seed=seed,
                              final_temperature=final_temperature, final_mode=final_mode)
        model.eval()
        accuracy = {}
        for length in (16, 64):
            tokens, labels, _ = task.sample(500, length, generator(seed + 1, "test"))
            with torch.no_grad():
                pred = model(tokens)[:, 1:].argmax(-1)  # (B, T)
            accuracy[length] = float((pred == labels).float().mean())
        dfa = minimize(extract(model, task, strings=1000, length=20, seed=seed))
        same, word = equivalent(dfa, tomita(g))
        tokens, _, _ = task.sample(500, 64, generator(seed + 2, "test"))
        row = dict(grammar=g, accuracy_len16=accuracy[16], accuracy_len64=accuracy[64],
                   final_loss=loss, extracted_states=dfa.n_states,
                   true_states=tomita(g).n_states, equivalent=same,
                   counterexample=None if same else dfa.text(word),
                   fidelity_len64=word_agreement(model, dfa, tokens), dot=to_dot(dfa),
                   seconds=round(time.time() - start, 1))
        rows.append(row)
        verdict = "= true DFA" if same else f"differs on {row['counterexample']}"
        drawings.append((dfa, f"Tomita {g}: {dfa.n_states} states, {verdict}"))
        log(f"tomita {g}: acc@16 {accuracy[16]:.3f} acc@64 {accuracy[64]:.3f}  extracted "
            f"{dfa.n_states} states (true {row['true_states']})  {verdict}")
    return dict(rows=rows, drawings=drawings)


# --- balanced parentheses ----------------------------------------------------------------------
def paren_string(depth: int, gen, base_pairs: int = 10, filler: float = 0.15) -> List[int]:
    """A balanced string whose deepest nesting is exactly ``depth``: a random walk of up to
    ``base_pairs`` pairs capped at ``depth``, a climb to ``depth`` and back inserted at a
    random point, and filler ``a`` tokens sprinkled with probability ``filler``."""
    import torch
    rand = lambda: float(torch.rand((), generator=gen))  # noqa: E731
    pairs = int(torch.randint(0, base_pairs + 1, (), generator=gen))
    walk, level = [], 0
    for left in range(2 * pairs, 0, -1):
        can_open = level < depth and level + 1 <= left - 1
        opened = level == 0 or (can_open and rand() < 0.5)
        walk.append(0 if opened else 1)
        level += 1 if opened else -1
    at = int(torch.randint(0, len(walk) + 1, (), generator=gen))
    level = sum(1 if t == 0 else -1 for t in walk[:at])
    s = walk[:at] + [0] * (depth - level) + [1] * (depth - level) + walk[at:]
    out = []
    for t in s:
        while rand() < filler:
            out.append(2)
        out.append(t)
    return out


def balanced_prefixes(s: List[int]) -> List[int]:
    """1 for each prefix (the empty one first) that is balanced, else 0; a prefix that closed
    below depth 0 stays unbalanced whatever follows."""
    out, level, dead = [1], 0, False
    for t in s:
        level += {0: 1, 1: -1}.get(t, 0)
        dead = dead or level < 0
        out.append(int(not dead and level == 0))
    return out


def paren_batch(batch: int, depths, gen):
    """``(tokens (B, T), targets (B, T + 1), mask, lengths, depth (B,))``: half balanced
    strings of a uniform depth in ``depths``, half the same with one bracket flipped."""
    import torch
    strings, depth_of = [], []
    for b in range(batch):
        d = depths[int(torch.randint(0, len(depths), (), generator=gen))]
        s = paren_string(d, gen)
        if b % 2:  # flip one bracket: the counts now differ by 2, never balanced
            spots = [i for i, t in enumerate(s) if t < 2]
            i = spots[int(torch.randint(0, len(spots), (), generator=gen))]
            s = s[:i] + [1 - s[i]] + s[i + 1:]
        strings.append(s)
        depth_of.append(d)
    lengths = torch.tensor([len(s) for s in strings])
    T = int(lengths.max())
    tokens = torch.full((batch, T), 2, dtype=torch.long)
    targets = torch.zeros(batch, T + 1, dtype=torch.long)
    for b, s in enumerate(strings):
        tokens[b, :len(s)] = torch.tensor(s, dtype=torch.long)
        targets[b, :len(s) + 1] = torch.tensor(balanced_prefixes(s))
    mask = torch.arange(T + 1)[None] <= lengths[:, None]  # (B, T + 1): real prefixes
    return tokens, targets, mask, lengths, torch.tensor(depth_of)


def run_parens(cells: List[str], hidden: int, centroids: int, temperature: float,
               train_depth: int, test_depth: int, steps: int, seed: int, log=print) -> dict:
    """Per model: train at depths 1..train_depth, whole-string accuracy at each depth up to
    test_depth (500 strings each, half balanced)."""
    import torch

    from ..nn.state_reg import SRAcceptor
    results = {}
    for name in cells:
        start = time.time()
        peephole = name == "sr-lstm-p"
        torch.manual_seed(seed)  # the init, whatever ran before in this process
        model = SRAcceptor(3, 2, hidden, "lstm", centroids, temperature, seed=seed,
                           peephole=peephole)
        train_depths = list(range(1, train_depth + 1))
        loss = train_acceptor(model, lambda g: paren_batch(32, train_depths, g)[:4], steps,
                              seed=seed)
        model.eval()
        gen = torch.Generator().manual_seed(2 * seed + 1)  # the test stream
        by_depth = {}
        for d in range(1, test_depth + 1):
            tokens, targets, _, lengths, _ = paren_batch(500, [d], gen)
            with torch.no_grad():
                logits = model(tokens, lengths + 1)  # (B, T + 1, 2)
            final = logits[torch.arange(len(lengths)), lengths].argmax(-1)
            by_depth[d] = float((final == targets[torch.arange(len(lengths)), lengths])
                                .float().mean())
        results[name] = dict(accuracy_by_depth=by_depth, final_loss=loss,
                             seconds=round(time.time() - start, 1))
        log(f"{name}: " + " ".join(f"d{d} {a:.3f}" for d, a in by_depth.items()))
    return results


def plot_parens(results: dict, train_depth: int, path) -> Path:
    """Accuracy by nesting depth per model (``results`` as ``run_parens`` gives it, or as its
    JSON holds it), the trained depths shaded; written atomically."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import write_atomic
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for name, r in results.items():
        points = sorted((int(d), a) for d, a in r["accuracy_by_depth"].items())  # JSON: str keys
        ax.plot(*zip(*points), marker="o", label=name)
    ax.axvspan(0.5, train_depth + 0.5, color="0.9", label="trained depths")
    ax.set_xlabel("nesting depth")
    ax.set_ylabel("accuracy (balanced?)")
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")  # half the strings are balanced
    ax.set_ylim(0.0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Balanced parentheses, SR-LSTM vs SR-LSTM-P", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return write_atomic(Path(path), buf.getvalue())


def write_json(path: Path, data: dict) -> None:
    from .files import write_atomic
    write_atomic(path, json.dumps(data, indent=2) + "\n")
