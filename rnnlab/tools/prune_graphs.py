"""Sparse RNNs shaped by random graphs (Darji, "Investigating Sparsity in RNNs", ch. 5): a random
undirected graph becomes a stack of masked recurrent layers, and the graph's properties are set
beside the trained accuracy.

Construction (the thesis's, via pypaddle's ``LayeredGraph``; the layering rule is our reading):

1. Orient every edge from the lower to the higher node index: a DAG.
2. A node's layer is the length of the longest path reaching it, so layer 0 holds the sources
   (nodes with no incoming edge) and every edge goes to a strictly later layer.
3. Layer l is a recurrent layer with one unit per node of the layer (dense hidden-to-hidden).
   Layer 0 reads the input densely; layer l >= 1 reads layer l - 1 through an input-to-hidden
   mask that keeps exactly the graph's edges (the same mask for every gate's rows).
4. Edges from layer s to layer l > s + 1 skip layers: each such pair (s, l) gets its own
   masked recurrent "skip" layer from s's outputs to l's width, whose output is added to layer
   l's output (as the thesis's ``ArbitraryRNN`` does).
5. The last layer feeds Linear(n_outputs).

Masks go through ``prune.apply_masks``, so they stay exact through training and every engine.
Properties are those the thesis correlates with accuracy, on the undirected graph: nodes, edges,
source nodes (the width of layer 0), layers, and the sample variances of degree centrality,
closeness centrality and node betweenness centrality.
"""
from __future__ import annotations

import random
import statistics
import time
from typing import Dict, List

import torch
from torch import nn

from ..checks import check_choice, check_int
from . import prune

GRAPH_KINDS = ("barabasi_albert", "watts_strogatz")
PROPERTIES = ("source_nodes", "nodes", "edges", "layers", "closeness_variance",
              "betweenness_variance", "degree_variance")


def random_graph(kind: str, n: int, seed: int):
    """The thesis's graphs: Barabási–Albert with m = n // 10 (at least 1), or connected
    Watts–Strogatz with k = n // 5 and rewiring probability 1."""
    import networkx as nx
    check_choice("random_graph", "kind", kind, GRAPH_KINDS)
    check_int("random_graph", "n", n, 5)
    if kind == "barabasi_albert":
        return nx.barabasi_albert_graph(n, max(1, n // 10), seed=seed)
    return nx.connected_watts_strogatz_graph(n, max(2, n // 5), 1.0, tries=100, seed=seed)


def layers_of(graph) -> List[List[int]]:
    """The nodes of each layer (sorted), edges oriented low -> high index, layer = longest
    path from a source."""
    depth: Dict[int, int] = {}
    for v in sorted(graph.nodes):  # increasing index is a topological order of the DAG
        depth[v] = max((depth[u] + 1 for u in graph.neighbors(v) if u < v), default=0)
    out: List[List[int]] = [[] for _ in range(max(depth.values()) + 1)]
    for v in sorted(depth):
        out[depth[v]].append(v)
    return out


def _edge_mask(graph, sources: List[int], targets: List[int]) -> torch.Tensor:
    """``(len(targets), len(sources))`` bool: True where the graph has the edge."""
    return torch.tensor([[graph.has_edge(s, t) for s in sources] for t in targets],
                        dtype=torch.bool)


class GraphRNN(nn.Module):
    """The layered sparse RNN of ``graph``: ``x (B, T)`` long -> logits ``(B, T, n_outputs)``."""

    def __init__(self, graph, cell: str, vocab_size: int, n_outputs: int = 2,
                 engine: str = "auto"):
        super().__init__()
        from ..nn import Recurrent
        self.vocab_size = vocab_size
        self.node_layers = layers_of(graph)
        widths = [len(layer) for layer in self.node_layers]
        self.layers = nn.ModuleList(
            Recurrent(cell, engine, input_size=vocab_size if i == 0 else widths[i - 1],
                      hidden_size=w) for i, w in enumerate(widths))
        masks = {f"layers.{i}.cell.weight_ih":
                 _edge_mask(graph, self.node_layers[i - 1], self.node_layers[i])
                 for i in range(1, len(widths))}
        self.skip_pairs = [(s, t) for t in range(2, len(widths)) for s in range(t - 1)
                           if _edge_mask(graph, self.node_layers[s], self.node_layers[t]).any()]
        self.skips = nn.ModuleList(Recurrent(cell, engine, input_size=widths[s],
                                             hidden_size=widths[t]) for s, t in self.skip_pairs)
        for k, (s, t) in enumerate(self.skip_pairs):
            masks[f"skips.{k}.cell.weight_ih"] = _edge_mask(graph, self.node_layers[s],
                                                            self.node_layers[t])
        gated = {}
        for name, mask in masks.items():  # one row block per gate: (G*H, D) from (H, D)
            weight = self.get_parameter(name)
            gated[name] = mask.repeat(weight.shape[0] // mask.shape[0], 1)
        prune.apply_masks(self, gated)
        self.out = nn.Linear(widths[-1], n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.one_hot(x, self.vocab_size).float()  # (B, T) -> (B, T, V)
        outs = []
        for t, layer in enumerate(self.layers):
            h, _ = layer(h)
            for k, (s, target) in enumerate(self.skip_pairs):
                if target == t:
                    h = h + self.skips[k](outs[s])[0]
            outs.append(h)
        return self.out(h)


def properties(graph) -> Dict[str, float]:
    """The thesis's graph properties (variances are sample variances, as it takes them)."""
    import networkx as nx
    variance = lambda d: statistics.variance(d.values())  # noqa: E731
    return {"source_nodes": len(layers_of(graph)[0]), "nodes": graph.number_of_nodes(),
            "edges": graph.number_of_edges(), "layers": len(layers_of(graph)),
            "closeness_variance": variance(nx.closeness_centrality(graph)),
            "betweenness_variance": variance(nx.betweenness_centrality(graph)),
            "degree_variance": variance(nx.degree_centrality(graph))}


def pearson(xs, ys) -> float:
    """Pearson's r (NaN when either side is constant)."""
    import numpy as np
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def study(cell: str, task, train, test, graphs: int, nodes=(10, 50), epochs: int = 3,
          batch: int = 128, lr: float = 1e-3, seed: int = 0, engine: str = "auto",
          log=print) -> dict:
    """Train one ``GraphRNN`` per random graph (``graphs`` of each kind, n uniform in
    ``nodes``) and correlate each property with test accuracy."""
    rng = random.Random(seed)
    runs, t0 = [], time.time()
    for kind in GRAPH_KINDS:
        for g in range(graphs):
            n, gseed = rng.randint(*nodes), rng.randrange(2 ** 31)
            graph = random_graph(kind, n, gseed)
            torch.manual_seed(gseed)
            model = GraphRNN(graph, cell, task.vocab_size, task.n_outputs, engine)
            prune.fit(model, task, train, epochs, lr=lr, batch=batch, seed=gseed)
            run = dict(kind=kind, graph_seed=gseed, **properties(graph),
                       accuracy=prune.evaluate(model, task, test))
            runs.append(run)
            log(f"{cell} {kind} #{g}: n={n} layers={run['layers']} skips="
                f"{len(model.skip_pairs)} acc={run['accuracy']:.3f} ({time.time() - t0:.0f} s)")
    acc = [r["accuracy"] for r in runs]
    return {"cell": cell, "runs": runs,
            "pearson": {p: pearson([r[p] for r in runs], acc) for p in PROPERTIES}}
