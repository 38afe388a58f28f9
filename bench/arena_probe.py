"""One arena run with its training curve, for controlled experiments on a disagreement: the
arena's own ``train_run`` (same model, data streams, optimizer and scores), with the step budget,
size and train lengths given here and no early stop, printing the loss every ``--every`` steps
(and for a UT with ACT the mean depth steps of its positions over those steps: when ACT
collapses to one step, and whether it comes back).

    python bench/arena_probe.py lstm mod_arith --steps 12000 --layers 2
    python bench/arena_probe.py lstm mod_arith --steps 1500 --train-max 12   # short sequences
    python bench/arena_probe.py "ut(ponder_weight=0)" dlr_context_shift --every 100
"""
import argparse
import json
import time
from pathlib import Path

import torch

from rnnlab.arena import spec
from rnnlab.arena.config import ArenaConfig
from rnnlab.arena import train
from rnnlab.arena.train import act_depth, train_run


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

    window, depths = [], []  # since the last print: one batch's loss depends on its length
    built = []  # the run's model, to read its ACT depth after each step
    build = train.build_model
    train.build_model = lambda *a: built.append(build(*a)) or built[-1]

    def show(step, loss, val):
        window.append(loss)
        depth = act_depth(built[-1])  # of this step's batch (the validation's on eval steps)
        if depth is not None:
            depths.append(depth)
        if step % args.every == 0:
            deep = f", ACT depth {sum(depths) / len(depths):.3f}" if depths else ""
            print(f"step {step}: loss {sum(window) / len(window):.3f}{deep} (mean of the last "
                  f"{len(window)} steps)", flush=True)
            window.clear()
            depths.clear()
    start = time.perf_counter()
    result = train_run(spec.model(args.model), task, args.seed, cfg, run, show)
    print(json.dumps({"model": args.model, "task": args.task, "steps": args.steps,
                      "scores": result["scores"], "extra": result["extra_scores"],
                      "act_depth": result["act_depth"],
                      "curve": result["curve"],  # [step, mean loss, validation] every 100
                      "depth_curve": result["depth_curve"],  # [step, ACT depth at validation]
                      "wall_s": round(time.perf_counter() - start)}), flush=True)


if __name__ == "__main__":
    main()
