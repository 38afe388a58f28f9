"""On CUDA (skipped without it): the arena end to end with ``device="cuda"``, every model of the
``full`` preset on one task and every task of it with one model, two training steps each: the
models, the tasks' data and the arena's training, evaluation and records all run on the card
(values checked finite and in range; training at this size is not meant to learn)."""
from __future__ import annotations

import math

import pytest
import torch
from rich.console import Console

from rnnlab.arena import ArenaConfig, preset, run_arena

DEVICE = "cuda"
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)


def _grid(tmp_path, models, tasks):
    cfg = ArenaConfig(models=models, tasks=tasks, seeds=[0], d_model=16, steps=2, batch=4,
                      eval_every=2, eval_examples=4, checkpoint_every=2, device=DEVICE, jobs=1)
    records = run_arena(cfg, tmp_path, Console(file=open("/dev/null", "w"), width=140))
    assert {(r["model"], r["task"]) for r in records} == {(m, t) for m in models for t in tasks}
    for r in records:
        assert math.isfinite(r["value"]), r
        # accuracies are in [0, 1]; R^2 and chance-scaled accuracy can be negative
        low = -math.inf if r["metric"] in ("r2", "scaled_accuracy") else 0.0
        assert low <= r["value"] <= 1.0, r


def test_every_model_trains_in_the_arena_on_cuda(tmp_path):
    _grid(tmp_path, preset("full").models, ["parity"])


def test_every_task_trains_in_the_arena_on_cuda(tmp_path):
    _grid(tmp_path, ["gru"], preset("full").tasks)
