"""Where trained models err on Tomita 3: per-prefix accuracy of each arena run of `tomita`
(grammar 3), split by the positions where membership turns on a run's parity.

Tomita 3 rejects an odd run of 1s followed later by an odd run of 0s. After an odd 1-run, each 0
of the next 0-run flips membership (DFA states 2 and 3), so there the label is the parity of
that 0-run's length so far; everywhere else it is not. The score over all positions weighs these
few positions like the rest; this prints accuracy on the other positions and on such 0-runs at
lengths 1–4, 5–16 and past 16, with each group's share of the positions.

    python bench/tomita_runs.py results/arena-full --length 256 --examples 1000
"""
import argparse
from pathlib import Path

import torch

from rnnlab.arena import spec
from rnnlab.arena.trained import config, trained
from rnnlab.tasks.languages import TOMITA_DFAS

GROUPS = ("other", "0-run 1-4", "0-run 5-16", "0-run >16")


def groups(x: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` group index of each position of the bit strings ``x`` (see ``GROUPS``)."""
    delta = torch.tensor(TOMITA_DFAS[3][0])  # (states, 2): next state on 0, on 1
    batch, length = x.shape
    state = torch.zeros(batch, dtype=torch.long)
    run = torch.zeros(batch, dtype=torch.long)  # length of the current run so far
    out = torch.zeros(batch, length, dtype=torch.long)
    for t in range(length):
        bit = x[:, t]
        run = torch.where((t > 0) & (bit == x[:, t - 1]), run + 1, torch.ones_like(run))
        state = delta[state, bit]
        parity_decides = ((state == 2) | (state == 3)) & (bit == 0)
        out[:, t] = torch.where(parity_decides, 1 + (run > 4).long() + (run > 16).long(), 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="an arena results directory with tomita runs")
    parser.add_argument("--length", type=int, default=256, help="test sequence length")
    parser.add_argument("--examples", type=int, default=1000, help="sequences per model")
    parser.add_argument("--seed", type=int, default=7, help="seed of the sampled sequences")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = config(args.out)
    tomita3 = spec.task("tomita(grammar=3)")[1]
    labels = [t for t in cfg.tasks if spec.task(t)[1] == tomita3]
    print(f"{'model':44} {'all':>6} " + " ".join(f"{g:>17}" for g in GROUPS))
    for label in labels:
        for model_label in cfg.models:
            for seed in cfg.seeds:
                run = trained(args.out, model_label, label, seed, cfg)
                if run is None:
                    continue
                model, task = run
                x, y, _ = task.sample(args.examples, args.length,
                                      torch.Generator().manual_seed(args.seed))
                with torch.no_grad():
                    right = model(x).argmax(-1) == y  # (B, T); every position is scored
                where = groups(x)
                cells = [f"{right[where == g].float().mean():.3f} ({(where == g).float().mean():.3f})"
                         for g in range(len(GROUPS))]
                print(f"{model_label[:38]:38} s{seed:<4} {right.float().mean():6.3f} "
                      + " ".join(f"{c:>17}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
