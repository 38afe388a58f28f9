"""Resumable run checkpoints in one safetensors file: model, optimizer, data-stream positions.

Everything needed to continue a run exactly where it stopped: the model's weights, AdamW's moment
estimates, the state of every random generator and the step counter (in the file's metadata).
Written to a temporary file and renamed, so a kill mid-write leaves the previous checkpoint.

A sha256 of the tensors is stored in the metadata and checked, with the names and shapes the
model and optimizer expect, before anything is loaded: a damaged or foreign file raises
``CheckpointError`` and leaves the model, optimizer and generators as they were.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from ..errors import CheckpointError
from .files import write_atomic

FORMAT = "rnnlab-checkpoint-1"


def digest(tensors: Dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors``, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
    metadata = {"format": FORMAT, "meta": json.dumps(meta), "aliases": json.dumps(aliases),
                "sha256": digest(tensors)}
    write_atomic(Path(path), save_bytes({k: v.cpu() for k, v in tensors.items()}, metadata))


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         generators: Dict[str, torch.Generator], max_step: Optional[int] = None) -> Optional[dict]:
    """Restore a checkpoint into the objects given; its metadata, or None when there is none.

    Raises ``CheckpointError`` (nothing restored) when the file is damaged, is not a checkpoint
    of this model, or its ``step`` is past ``max_step``."""
    path = Path(path)
    if not path.exists():
        return None
    tensors, meta = _read_verified(path)
    model_state = _check_fits(path, tensors, model, optimizer, generators)
    if max_step is not None and int(meta.get("step", 0)) > max_step:
        raise CheckpointError(f"{path}: checkpoint is at step {meta['step']}, past the step "
                              f"budget {max_step}; raise the budget to continue it, or use "
                              f"another output directory", corrupt=False)
    model.load_state_dict(model_state)
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


def load_or_restart(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    generators: Dict[str, torch.Generator], warn: Callable[[str], None],
                    max_step: Optional[int] = None) -> Optional[dict]:
    """``load``, but a damaged or foreign checkpoint is moved aside to ``<name>.corrupt`` and the
    run restarts from scratch (returns None) after ``warn(message)``. A checkpoint that is
    intact but does not fit (step past the budget) still raises."""
    try:
        return load(path, model, optimizer, generators, max_step)
    except CheckpointError as err:
        if not err.corrupt:
            raise
        aside = Path(path).with_name(Path(path).name + ".corrupt")
        os.replace(path, aside)
        warn(f"{err}; moved it to {aside.name} and restarting this run from step 0")
        return None


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: unusable checkpoint ({why}); delete it to restart the run "
                           f"from scratch", corrupt=True)


def _read_verified(path: Path):
    """The tensors (aliases resolved) and metadata of ``path``, checksum verified."""
    try:
        raw = path.read_bytes()
        tensors = load_bytes(raw)
        header_size = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8:8 + header_size]).get("__metadata__") or {}
    except Exception as err:  # safetensors raises its own error types for a torn file
        raise _corrupt(path, f"cannot be read as safetensors: {err}") from None
    if metadata.get("format") != FORMAT or "sha256" not in metadata:
        raise _corrupt(path, "not an rnnlab checkpoint of this version")
    if digest(tensors) != metadata["sha256"]:
        raise _corrupt(path, "checksum mismatch: the file was damaged")
    try:
        meta = json.loads(metadata["meta"])
        aliases = json.loads(metadata.get("aliases", "{}"))
        for alias, target in aliases.items():
            tensors[alias] = tensors[target]
    except (ValueError, KeyError, TypeError) as err:
        raise _corrupt(path, f"malformed metadata: {err}") from None
    if not isinstance(meta, dict):
        raise _corrupt(path, "malformed metadata: 'meta' is not an object")
    return tensors, meta


def _check_fits(path: Path, tensors, model, optimizer, generators) -> dict:
    """The model's state dict from ``tensors``, after checking that every name and shape the
    model, optimizer and generators need is there (so loading cannot fail half-way)."""
    want = model.state_dict()
    got = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if set(got) != set(want):
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        raise _corrupt(path, f"weights of another model: missing {missing[:3]}, "
                             f"unexpected {extra[:3]}")
    for k, v in want.items():
        if got[k].shape != v.shape:
            raise _corrupt(path, f"weights of another model: {k} has shape "
                                 f"{tuple(got[k].shape)}, the model's is {tuple(v.shape)}")
    n_params = sum(len(g["params"]) for g in optimizer.state_dict()["param_groups"])
    indices = {int(k.split(".")[1]) for k in tensors if k.startswith("optim.")}
    if any(i >= n_params for i in indices):
        raise _corrupt(path, "optimizer state of another model")
    for name in generators:
        if f"rng.{name}" not in tensors:
            raise _corrupt(path, f"no state for the random generator {name!r}")
    return got
