"""Lattice (poset) based pruning, RECONSTRUCTED from the description of Sengupta, "Lattice-Based
Pruning in Recurrent Neural Networks via Poset Modeling" (arXiv 2502.16525). The paper's full
algorithm could not be retrieved; every step below is our reading of its summary, and the
choices the summary leaves open are marked [choice].

Per recurrent layer (each rnnlab cell in the model, separately):

1. Neurons and adjacency. The nodes are the layer's D inputs and H hidden units. Input k feeds
   hidden j with weight ``max_g |W_ih[gH + j, k]|`` and hidden i feeds hidden j with
   ``max_g |W_hh[gH + j, i]|`` [choice: a gated cell's gates are one neuron, strongest gate
   wins]. The binary adjacency keeps the entries above a threshold θ, the ``percentile``-th
   percentile of all pruned weights' magnitudes [choice: the same global θ as magnitude
   pruning, so the lattice only ever removes more]. Self-loops are dropped: they do not order.
2. Order. u ≤ v when v is reachable from u (the transitive closure of the adjacency).
3. Strongly connected components are collapsed, turning the preorder into a partial order.
   Risk, as the notes say: recurrent cycles can merge all hidden units into one component.
4. The Hasse diagram (transitive reduction of the component DAG) gets a bottom ⊥ below every
   minimal and a top ⊤ above every maximal component.
5. A component is kept when it is meet-irreducible (exactly one upper cover in the diagram) or
   central (node betweenness in the diagram among the top ``central`` fraction) [choice: the
   summary names both criteria but not how they combine; we keep the union]. A weight survives
   when it is above θ and its edge touches a kept neuron [choice]; the rest are masked with
   ``prune.apply_masks``, then the model is fine-tuned by the caller.

``order="unrolled"`` [choice, ours, not the paper's]: with ``order="collapse"`` (the steps above) a
trained recurrent layer's W_hh is one strongly connected component up to high thresholds, so
every neuron is meet-irreducible and nothing beyond magnitude pruning is removed (measured:
``rnnlab prune lattice``). The unrolled order instead takes one time step as the poset: sources
are the inputs x_k and the previous state h_i, targets the next state h'_j, so the recurrence
makes no cycle. Every h'_j is then a coatom (meet-irreducible), so an edge is kept when its
SOURCE is kept: a source with exactly one upper cover (it feeds one unit) or one among the
``central`` fraction of sources with the highest betweenness.

Only the binary adjacency is reconstructed; the paper's continuous variant is not.
"""
from __future__ import annotations

from typing import Dict, Set, Tuple

import torch
from torch import nn

from ..cells.base import Cell
from ..checks import check_choice, check_number
from . import prune

BOTTOM, TOP = "bottom", "top"
ORDERS = ("collapse", "unrolled")


def neuron_graph(cell: Cell, theta: float, unrolled: bool = False):
    """The thresholded neuron graph of one cell: nodes ``("x", k)`` and ``("h", j)``, an edge
    ``u -> v`` where the strongest gate's weight from u to v exceeds ``theta``. ``unrolled``:
    the targets are ``("h'", j)``, the next step's units, so W_hh makes no cycle."""
    import networkx as nx
    groups = prune.weight_groups(cell)
    w_ih, w_hh = _dense(cell, groups["i2h"]), _dense(cell, groups["h2h"])
    H = cell.hidden_size
    graph = nx.DiGraph()
    graph.add_nodes_from([("x", k) for k in range(cell.input_size)])
    graph.add_nodes_from([("h", j) for j in range(H)])
    target = "h'" if unrolled else "h"
    graph.add_nodes_from([(target, j) for j in range(H)])
    for kind, w in (("x", w_ih), ("h", w_hh)):
        if w is None:
            continue
        strength = w.abs().unflatten(0, (-1, H)).amax(0)  # (G*H, S) -> (H, S)
        for j, k in (strength > theta).nonzero().tolist():
            if unrolled or not (kind == "h" and j == k):
                graph.add_edge((kind, k), (target, j))
    return graph


def _dense(cell: Cell, names) -> torch.Tensor | None:
    """The (G*H, S) matrix of a group (None when the cell has none, or not as a matrix)."""
    mats = [getattr(cell, n).detach() for n in names if getattr(cell, n).dim() == 2
            and getattr(cell, n).shape[0] % cell.hidden_size == 0]
    return mats[0] if mats else None


def kept_neurons(graph, central: float = 0.25, candidates=None) -> Tuple[Set, Dict[str, int]]:
    """Steps 2-5: the neurons to keep, and counts of what the lattice looked like.
    ``candidates``: the neurons whose keeping matters (the unrolled order's sources); the
    ``central`` fraction is taken among their components only (None: all)."""
    import networkx as nx
    check_number("lattice", "central", central, 0, 1)
    dag = nx.condensation(graph)  # step 3: one node per SCC, members in dag.nodes[c]["members"]
    hasse = nx.transitive_reduction(dag)  # step 4
    hasse.add_nodes_from([BOTTOM, TOP])
    for c in dag.nodes:
        if dag.in_degree(c) == 0:
            hasse.add_edge(BOTTOM, c)
        if dag.out_degree(c) == 0:
            hasse.add_edge(c, TOP)
    irreducible = {c for c in dag.nodes if hasse.out_degree(c) == 1}
    between = nx.betweenness_centrality(hasse)
    pool = [c for c in dag.nodes if candidates is None
            or set(dag.nodes[c]["members"]) & candidates]
    ranked = sorted(pool, key=lambda c: -between[c])
    central_set = set(ranked[:round(central * len(ranked))])
    keep = {n for c in irreducible | central_set for n in dag.nodes[c]["members"]}
    largest = max(len(dag.nodes[c]["members"]) for c in dag.nodes)
    return keep, {"components": dag.number_of_nodes(), "largest_component": largest,
                  "meet_irreducible": len(irreducible), "central": len(central_set),
                  "kept_neurons": len(keep), "neurons": graph.number_of_nodes()}


def lattice_masks(model: nn.Module, percentile: float, central: float = 0.25,
                  order: str = "collapse") -> Tuple[Dict[str, torch.Tensor], list]:
    """``({qualified weight name: bool mask}, [per-cell lattice counts])``."""
    check_choice("lattice", "order", order, ORDERS)
    unrolled = order == "unrolled"
    magnitude = prune.magnitude_masks(model, percentile, "both")  # step 1's θ, elementwise
    masks, info = {}, []
    theta = _threshold(model, magnitude)
    for prefix, cell in model.named_modules():
        if not isinstance(cell, Cell):
            continue
        names = prune.weight_groups(cell)
        graph = neuron_graph(cell, theta, unrolled)
        sources = {n for n in graph.nodes if n[0] != "h'"} if unrolled else None
        keep, counts = kept_neurons(graph, central, sources)
        info.append({"cell": prefix, **counts})
        H = cell.hidden_size
        for group, kind in (("i2h", "x"), ("h2h", "h")):
            for name in names[group]:
                full = f"{prefix}.{name}" if prefix else name
                w = getattr(cell, name)
                touch = torch.ones(w.shape, dtype=torch.bool, device=w.device)  # not a graph
                if w.dim() == 2 and w.shape[0] % H == 0:
                    rows = torch.tensor([("h", r % H) in keep for r in range(w.shape[0])])
                    cols = torch.tensor([(kind, k) in keep for k in range(w.shape[1])])
                    rows = rows & (not unrolled)  # unrolled: the source decides alone
                    touch = (rows[:, None] | cols[None, :]).to(w.device)  # (G*H, S)
                masks[full] = magnitude[full] & touch
    return masks, info


def _threshold(model: nn.Module, magnitude: Dict[str, torch.Tensor]) -> float:
    """θ: the largest pruned magnitude (every kept weight lies above it); -1 if none pruned."""
    params = dict(model.named_parameters())
    pruned = [params[n].detach().abs()[~m] for n, m in magnitude.items()]
    pruned = torch.cat([p.flatten() for p in pruned])
    return float(pruned.max()) if pruned.numel() else -1.0


def prune_lattice(model: nn.Module, percentile: float, central: float = 0.25,
                  order: str = "collapse") -> list:
    """Steps 1-5 on every cell of ``model``, masks applied; returns the per-cell counts."""
    masks, info = lattice_masks(model, percentile, central, order)
    prune.apply_masks(model, masks)
    return info
