"""Why a trained DeltaNet-family layer does or does not extrapolate on a token task: for each
arena run of one model, the first block's Householder factor per input token.

A token that always acts as the same reflection ``I - beta k kᵀ`` (k fixed per token, beta = 2)
composes exactly at any length; one whose direction k drifts with the context (the published
layer's short causal conv mixes the 3 previous tokens into k) does not. Printed per token id:
the eigenvalue ``1 - beta`` along k (mean over heads and positions) and the cosine of each k to
that token's mean direction (mean, min), each head separately then averaged.

    python bench/householder_directions.py results/arena-quick "deltanet[-1,1]"
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnlab.arena.trained import config, trained


def factors(model, x):
    """``(1 - beta (B, T, heads), k (B, T, heads, K))`` of the first block's delta layer."""
    layer, seen = model.blocks[0].mixer, {}

    def keep(name, pick):
        def hook(module, inputs, output):  # returns None: the output is left as it is
            seen[name] = pick(output)
        return hook
    hooks = [layer.k_conv.register_forward_hook(keep("k", lambda o: o[0])),  # (y, conv state)
             layer.b_proj.register_forward_hook(keep("b", lambda o: o))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    cell = layer.rnn.cell
    k = F.normalize(F.silu(seen["k"].unflatten(-1, (-1, cell.key_dim))), dim=-1)  # as the cell
    beta = (2 if cell.allow_neg_eigval else 1) * torch.sigmoid(seen["b"])
    return 1 - beta, k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="an arena results directory")
    parser.add_argument("model", help="a model label of that arena, e.g. deltanet[-1,1]")
    parser.add_argument("--length", type=int, default=256, help="probe sequence length")
    args = parser.parse_args()
    cfg = config(args.out)
    for text in cfg.tasks:
        for seed in cfg.seeds:
            run = trained(args.out, args.model, text, seed, cfg)
            if run is None:  # not trained (yet)
                continue
            model, task = run
            x, _, _ = task.sample(256, args.length, torch.Generator().manual_seed(0))
            eig, k = factors(model, x)
            for token in x.unique().tolist():
                at = x == token
                kt = k[at]  # (n, heads, K)
                cos = (kt * F.normalize(kt.mean(0), dim=-1)).sum(-1)  # (n, heads)
                print(f"{text} seed {seed} token {token}: 1-beta {eig[at].mean():+.4f}, "
                      f"cos(k, mean k) mean {cos.mean():.4f} min {cos.min():.4f}")


if __name__ == "__main__":
    main()
