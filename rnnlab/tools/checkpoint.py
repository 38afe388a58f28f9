"""Resumable run checkpoints in one safetensors file: model, optimizer, data-stream positions.

Everything needed to continue a run exactly where it stopped: the model's weights, AdamW's moment
estimates, the state of every random generator and the step counter (in the file's metadata).
Written to a temporary file and renamed, so a kill mid-write leaves the previous checkpoint.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional

import torch
from safetensors.torch import load_file, safe_open, save_file


def save(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         generators: Dict[str, torch.Generator], meta: dict) -> None:
    tensors, aliases, seen = {}, {}, {}
    for k, v in model.state_dict().items():  # tied weights are stored once
        key = (v.data_ptr(), v.dtype, tuple(v.shape))
        if v.numel() and key in seen:
            aliases[f"model.{k}"] = seen[key]
            continue
        seen[key] = f"model.{k}"
        tensors[f"model.{k}"] = v.detach().contiguous()
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{index}.{key}"] = value.detach().contiguous()
    for name, gen in generators.items():
        tensors[f"rng.{name}"] = gen.get_state()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta),
                                           "aliases": json.dumps(aliases)})
    os.replace(tmp, path)


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         generators: Dict[str, torch.Generator]) -> Optional[dict]:
    """Restore a checkpoint into the objects given; its metadata, or None when there is none."""
    if not path.exists():
        return None
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        aliases = json.loads(f.metadata().get("aliases", "{}"))
    for alias, target in aliases.items():
        tensors[alias] = tensors[target]
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items()
                           if k.startswith("model.")})
    state: Dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    for name, gen in generators.items():
        gen.set_state(tensors[f"rng.{name}"])
    return meta
