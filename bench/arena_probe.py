"""One arena run with its training curve, for controlled experiments on a disagreement: the
arena's own ``train_run`` (same model, data streams, optimizer and scores), with the step budget,
size and train lengths given here and no early stop, printing the loss every ``--every`` steps.

    python bench/arena_probe.py lstm mod_arith --steps 12000 --layers 2
    python bench/arena_probe.py lstm mod_arith --steps 1500 --train-max 12   # short sequences
"""
import argparse
import json
import time
from pathlib import Path

import torch

from rnnlab.arena import spec
from rnnlab.arena.config import ArenaConfig
from rnnlab.arena.train import train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="an arena model spec, e.g. lstm or deltanet[-1,1]")
    parser.add_argument("task", help="an arena task spec, e.g. mod_arith")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=ArenaConfig.lr)
    parser.add_argument("--train-max", type=int, default=None,
                        help="longest train length (tests at it and twice it); default: the task's")
    parser.add_argument("--train-min", type=int, default=None,
                        help="shortest train length; default: the task's (at most --train-max)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--every", type=int, default=250, help="steps between printed losses")
    parser.add_argument("--out", type=Path, default=Path("bench/out/probe"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = ArenaConfig(models=[args.model], tasks=[args.task], d_model=args.d_model,
                      n_layers=args.layers, steps=args.steps, eval_examples=512, lr=args.lr,
                      early_stop=None, checkpoint_every=args.steps,
                      device=args.device)
    _, task = spec.task(args.task)
    if args.train_max is not None:  # this instance only: the registry's task is unchanged
        low = min(task.train_lengths[0], args.train_max) if args.train_min is None \
            else args.train_min
        object.__setattr__(task, "train_lengths", (low, args.train_max))
        object.__setattr__(task, "test_lengths", (args.train_max, 2 * args.train_max))
    run = args.out / f"{args.model}-{args.task}-{args.steps}-{args.seed}-{time.time_ns()}"

    window = []  # the losses since the last print: one batch's loss depends on its length

    def show(step, loss, val):
        window.append(loss)
        if step % args.every == 0:
            print(f"step {step}: loss {sum(window) / len(window):.3f} (mean of the last "
                  f"{len(window)} steps)", flush=True)
            window.clear()
    start = time.perf_counter()
    result = train_run(spec.model(args.model), task, args.seed, cfg, run, show)
    print(json.dumps({"model": args.model, "task": args.task, "steps": args.steps,
                      "scores": result["scores"], "extra": result["extra_scores"],
                      "curve": result["curve"],  # [step, mean loss, validation] every 100
                      "wall_s": round(time.perf_counter() - start)}), flush=True)


if __name__ == "__main__":
    main()
