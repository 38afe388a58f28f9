"""A small JRT pilot (issue 20, part 4): set disjointness at vocab 128, both set orders, GLA read
once / read twice / in prefix mode, and a transformer; 2 layers, d 64, one seed per call.

The ``jrt`` arena preset is the full-size version (vocab 512, test lengths to 256, 3000 steps);
this pilot fits on a laptop core: vocab 128 only holds sets up to length 64, so the test lengths
are (32, 64). Appends one JSON line per run to ``OUT/results.jsonl``.

    OMP_NUM_THREADS=1 python bench/jrt_pilot.py --steps 1000 --seed 0 --out bench/out/jrt
"""
import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from rnnlab.arena import spec
from rnnlab.arena.config import ArenaConfig
from rnnlab.arena.train import run_ids, train_run

GRID = [(m, f"set_disjointness(vocab=128,ratio={r}{reads})")
        for m, reads in [("gla", ""), ("gla", ",reads=2"), ("gla(prefix=true)", "")]
        for r in (0.25, 0.75)]
GRID += [("transformer", f"set_disjointness(vocab=128,ratio={r})") for r in (0.25, 0.75)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/jrt"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = ArenaConfig(models=["gla"], tasks=["set_disjointness"], d_model=64, n_layers=2,
                      steps=args.steps, eval_examples=512, checkpoint_every=args.steps)
    for model, text in GRID:
        _, task = spec.task(text)
        task = dataclasses.replace(task)  # a copy whose test lengths fit vocab 128
        object.__setattr__(task, "test_lengths", (32, 64))
        start = time.perf_counter()
        result = train_run(spec.model(model), task, args.seed, cfg,
                           args.out / "runs" / run_ids([model, text, str(args.seed)]))
        row = {"model": model, "task": text, "seed": args.seed,
               "wall_s": round(time.perf_counter() - start, 1), **result}
        print(json.dumps(row), flush=True)
        with open(args.out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
