"""How deep the trained Universal Transformers of an arena directory compute: for every UT run
with ACT and a checkpoint, the depth steps its positions take (ACT's ``N``) on fresh sequences of
the run's train length, beside the run's recorded score there.

    python bench/act_depth.py results/arena-full
    python bench/act_depth.py results/arena-full --examples 256 --json bench/out/act_depth.json

An ACT position that halts at the first step has ``R = 1`` whatever its halting probability, so
no gradient reaches the halting unit through it: a UT whose positions all halt at step 1 is a
one-layer Transformer and stays one. This reads how often that happened, as a histogram; the
arena's own records carry the mean (``act_depth``) for runs made since it records it.
"""
import argparse
import json
from pathlib import Path

import torch

from rnnlab.arena import spec
from rnnlab.arena.store import load_records
from rnnlab.arena.train import act_depth
from rnnlab.arena.trained import config, trained


def depth(model, task, length: int, examples: int, seed: int) -> dict:
    """Mean and histogram of the depth steps (``n_updates``) over ``examples`` sequences."""
    x, _, mask = task.sample(examples, length, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model(x)
    steps = model.n_updates.long()  # (B, T): ACT's N per position
    return {"mean": round(act_depth(model), 3),
            "mean_scored": round(float(steps[mask].float().mean()), 3),
            # positions that took 1, 2, ..., max_steps steps
            "histogram": torch.bincount(steps.flatten(), minlength=model.max_steps + 1)[1:]
            .tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="an arena results directory")
    parser.add_argument("--examples", type=int, default=256, help="sequences per run")
    parser.add_argument("--seed", type=int, default=1, help="seed of the sampled sequences")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = config(args.out)
    rows = []
    for record in load_records(args.out, print):  # one record per run and test length:
        if record["length"] != record["train_length"] or not spec.model(record["model"]).universal:
            continue  # a UT's record at the train length
        built = trained(args.out, record["model"], record["task"], record["seed"], cfg)
        if built is None or not getattr(built[0], "act", False):
            continue  # no checkpoint, or a fixed-depth UT
        row = {"model": record["model"], "task": record["task"], "seed": record["seed"],
               "length": record["train_length"], "value": record["value"],
               **depth(*built, record["train_length"], args.examples, args.seed)}
        rows.append(row)
        print(f"{row['model']:28.28} {row['task']:44.44} seed {row['seed']}  T {row['length']:4}"
              f"  depth {row['mean']:5.2f} (scored {row['mean_scored']:5.2f})  steps "
              f"{row['histogram']}  score {row['value']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
