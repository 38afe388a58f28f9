"""A finished arena run's trained model, for probes that look inside it (`bench/act_depth.py`,
`bench/householder_directions.py`, `bench/tomita_runs.py`): the model the run trained, built from
the results directory's config.json, with the weights of the run's checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..tasks import Task
from ..tools import checkpoint
from . import spec
from .config import ArenaConfig
from .runs import run_dir
from .train import build_model


def config(out: Path) -> ArenaConfig:
    """The configuration the results directory ``out`` was trained with (its config.json)."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"out: {path} does not exist; expected an arena results "
                                f"directory (one that `rnnlab arena --out` wrote)")
    try:
        fields = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"out: {path} is not JSON ({err}); expected the config.json that "
                         f"`rnnlab arena --out` wrote") from None
    known = {f.name for f in dataclasses.fields(ArenaConfig)}
    return ArenaConfig(**{k: v for k, v in fields.items() if k in known})


def trained(out: Path, model_label: str, task_label: str, seed: int,
            cfg: Optional[ArenaConfig] = None) -> Optional[Tuple[torch.nn.Module, Task]]:
    """``(model, task)``: the run's model in eval mode with its checkpoint's weights, and its
    task; None when the run has no checkpoint (not trained, or not yet)."""
    cfg = config(out) if cfg is None else cfg
    model_spec, (label, task) = spec.model(model_label), spec.task(task_label)
    path = run_dir(Path(out), model_spec, label, seed) / "checkpoint.safetensors"
    if not path.exists():
        return None
    model = build_model(model_spec, task, cfg)
    # checkpoint.load restores weights and optimizer moments together: this optimizer only
    # receives the moments
    checkpoint.load(path, model, torch.optim.AdamW(model.parameters()), {})
    return model.eval(), task
