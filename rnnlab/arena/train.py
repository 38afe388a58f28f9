"""Train one model on one task with one seed, then test it at every test length.

Readable top to bottom: build, (resume), train with AdamW + warm-up/cosine until ``steps`` or the
validation metric reaches ``early_stop`` twice, checkpoint every ``checkpoint_every`` steps, then
evaluate ``eval_examples`` fresh test sequences at each of the task's test lengths.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from .. import tasks as _tasks
from ..models.sequence import SequenceModel
from ..models.universal import UniversalTransformer
from ..tools import checkpoint
from ..tools.schedule import lr_at, optimizer_step
from .config import ArenaConfig
from .spec import ModelSpec

EVAL_CHUNK = 256  # test sequences per forward pass


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def build_model(spec: ModelSpec, task: _tasks.Task, cfg: ArenaConfig) -> torch.nn.Module:
    """The arena's model for ``spec`` on ``task``: a ``SequenceModel`` in ``spec.block`` (the
    published block for the aliases ``mamba[-1,1]`` etc.) of ``cfg.d_model``, ``cfg.n_layers``;
    in prefix mode (``spec.prefix``) only for a task that gives a context prefix. ``ut`` is a
    ``UniversalTransformer`` of ``cfg.d_model``: one shared block, its depth set by ACT up to
    ``max_steps`` (``cfg.n_layers`` does not apply)."""
    if spec.universal:
        return UniversalTransformer(task.vocab_size, task.n_outputs, d_model=cfg.d_model,
                                    kind=task.kind, **spec.options)
    if spec.prefix and not task.has_prefix:
        with_prefix = [n for n in _tasks.available() if _tasks.task_class(n).prefix
                       is not _tasks.Task.prefix]
        raise ValueError(f"{spec.label!r} runs in prefix mode, but task {task.name!r} gives no "
                         f"context prefix (tasks that do: {', '.join(with_prefix)})")
    return SequenceModel(task.vocab_size, task.n_outputs, d_model=cfg.d_model,
                         n_layers=cfg.n_layers, mixer=spec.mixer, kind=task.kind, mlp=cfg.mlp,
                         block=spec.block, prefix=spec.prefix, **spec.options)


def outputs(model: SequenceModel, task: _tasks.Task, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, given the task's context lengths when the model is in prefix mode."""
    return model(x, prefix=task.prefix(x)) if getattr(model, "prefix", False) else model(x)


def learning_rate(cfg: ArenaConfig, step: int, peak: Optional[float] = None) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 10% of the peak
    (``peak``: a model's own ``lr``; default the arena's ``cfg.lr``)."""
    return lr_at(cfg.lr if peak is None else peak, step, cfg.steps)


def ponder_cost(model: torch.nn.Module) -> Optional[torch.Tensor]:
    """The ACT ponder cost of the model's last forward (``UniversalTransformer``), else None."""
    return getattr(model, "ponder_cost", None)


def act_depth(model: torch.nn.Module) -> Optional[float]:
    """The mean depth steps (ACT's ``N``) over all positions of the model's last forward, for a
    ``UniversalTransformer`` with ACT; else None. A UT whose positions all halt after one step
    is a one-layer Transformer and stays one (a position halting at step 1 has ``R = 1``, so no
    gradient reaches its halting unit): this is how a run shows it."""
    steps = getattr(model, "n_updates", None) if getattr(model, "act", False) else None
    return None if steps is None else float(steps.float().mean())


def evaluate_all(model: torch.nn.Module, task: _tasks.Task, length: int, examples: int,
                 gen: torch.Generator, device: str) -> Dict[str, float]:
    """``{metric: value}``, the task's metric and its ``extra_metrics``, on ``examples``
    sequences of ``length`` (averaged over chunks, weighted by their sizes); for a model with
    ACT also ``act_depth``, the mean depth steps its positions took."""
    model.eval()
    totals: Dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, examples, EVAL_CHUNK):
            n = min(EVAL_CHUNK, examples - start)
            x, y, mask = (t.to(device) for t in task.sample(n, length, gen))
            scores = dict(task.scores(outputs(model, task, x), y, mask))
            depth = act_depth(model)
            if depth is not None:
                scores["act_depth"] = depth
            for name, value in scores.items():
                totals[name] = totals.get(name, 0.0) + value * n
    model.train()
    return {name: total / examples for name, total in totals.items()}


def train_run(spec: ModelSpec, task: _tasks.Task, seed: int, cfg: ArenaConfig, run_dir: Path,
              on_step: Optional[Callable[[int, float, Optional[float]], None]] = None,
              warn: Callable[[str], None] = _warn) -> dict:
    """Train (resuming from ``run_dir/checkpoint.safetensors`` if present) and test one run.

    A damaged checkpoint is moved aside and the run restarts from step 0 after ``warn``; one
    past ``cfg.steps`` raises ``CheckpointError`` (it is never taken as a finished run).

    Returns ``{"scores": {length: value}, "extra_scores": {length: {metric: value}},
    "act_depth": {length: steps}, "steps": n, "stopped_early": bool, "train_seconds": s,
    "eval_seconds": s, "parameters": n, "engine": name, "resumed_from": step, "curve": [[step,
    loss, val], ...], "depth_curve": [[step, depth], ...]}``; ``extra_scores`` holds the task's
    ``extra_metrics``; ``act_depth`` the mean ACT steps per position (empty but for a UT with
    ACT); ``curve`` is the learning curve, a point every ``cfg.eval_every`` steps: the mean
    training loss since the previous point and the validation metric at the longest train
    length; ``depth_curve`` the ACT depth of those validation batches (empty without ACT: where
    a UT's depth collapses, and when). Both are kept in the checkpoint, so a resumed run
    continues them.
    """
    torch.manual_seed(seed)
    model = build_model(spec, task, cfg).to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr if spec.lr is None else spec.lr,
                            weight_decay=cfg.weight_decay)
    gens = {"data": _tasks.generator(seed, "train"),
            "length": torch.Generator().manual_seed(1_000_003 * (seed + 1)),
            "val": torch.Generator().manual_seed(2_000_003 * (seed + 1))}
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "checkpoint.safetensors"
    meta = checkpoint.load_or_restart(ckpt, model, opt, gens, warn, max_step=cfg.steps) or {}
    resumed_from = step = int(meta.get("step", 0))
    hits = meta.get("hits", 0)
    curve = meta.get("curve", [])  # [[step, mean loss since the last point, val], ...]
    depth_curve = meta.get("depth_curve", [])  # [[step, mean ACT depth at val], ...]
    loss_sum, loss_n = meta.get("pending", [0.0, 0])  # the losses since the last point
    lo, hi = task.train_lengths
    start = time.perf_counter() - meta.get("seconds", 0.0)
    done = meta.get("done", False)
    while not done and step < cfg.steps:
        length = int(torch.randint(lo, hi + 1, (1,), generator=gens["length"]))
        x, y, mask = (t.to(cfg.device) for t in task.sample(cfg.batch, length, gens["data"]))
        loss = task.loss(outputs(model, task, x), y, mask)
        ponder = ponder_cost(model)
        loss = loss if ponder is None else loss + ponder
        if not torch.isfinite(loss):
            raise FloatingPointError(f"arena: {spec.label} on {task.name} (seed {seed}) hit a "
                                     f"non-finite loss at step {step}")
        optimizer_step(model, opt, loss, learning_rate(cfg, step, spec.lr), cfg.clip)
        step += 1
        value = loss.item()
        loss_sum, loss_n = loss_sum + value, loss_n + 1
        val = None
        if step % cfg.eval_every == 0:
            scores = evaluate_all(model, task, hi, EVAL_CHUNK, gens["val"], cfg.device)
            val = scores[task.metric]
            curve.append([step, round(loss_sum / loss_n, 6), round(val, 6)])
            if "act_depth" in scores:
                depth_curve.append([step, round(scores["act_depth"], 6)])
            loss_sum, loss_n = 0.0, 0
            if cfg.early_stop is not None:
                hits = hits + 1 if val >= cfg.early_stop else 0
                done = hits >= 2
        if on_step is not None:
            on_step(step, value, val)
        if step % cfg.checkpoint_every == 0 or done or step == cfg.steps:
            checkpoint.save(ckpt, model, opt, gens, {
                "step": step, "hits": hits, "done": done, "curve": curve,
                "depth_curve": depth_curve,
                "pending": [loss_sum, loss_n], "seconds": time.perf_counter() - start})
    train_seconds = time.perf_counter() - start
    t0 = time.perf_counter()
    test_gen = _tasks.generator(seed, "test")
    tested = {n: evaluate_all(model, task, n, cfg.eval_examples, test_gen, cfg.device)
              for n in task.test_lengths}
    depth = {n: values.pop("act_depth") for n, values in tested.items() if "act_depth" in values}
    first = model.step_block(1) if spec.universal else model.blocks[0]
    engine = getattr(first.mixer, "rnn", None)
    return {"scores": {n: values[task.metric] for n, values in tested.items()},
            "extra_scores": {n: {k: v for k, v in values.items() if k != task.metric}
                             for n, values in tested.items()},
            "act_depth": depth,
            "steps": step, "stopped_early": done and step < cfg.steps,
            "train_seconds": round(train_seconds, 2),
            "eval_seconds": round(time.perf_counter() - t0, 2),
            "parameters": sum(p.numel() for p in model.parameters()),
            "engine": engine.engine_name if engine is not None else "attention",
            "resumed_from": resumed_from, "curve": curve, "depth_curve": depth_curve}


def run_ids(labels: List[str]) -> str:
    """A file-name-safe id for a (model, task, seed) run."""
    import hashlib
    import re
    text = "__".join(labels)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]
    return f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
