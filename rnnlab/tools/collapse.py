"""State collapse beyond the training length (Chen et al. 2024, "Stuffed Mamba", arXiv 2410.07145).

The paper's observation: a recurrent model trained at length L fails beyond L even when what it
must recall is recent, because its state keeps growing (a few heads/channels "explode") where it
never learned to forget. Its diagnosis: the state's statistics per step and per channel; its
training-free mitigations: forget more, normalise the state, keep a sliding window of the state
(options ``decay_scale``, ``state_norm``, ``window`` of the cells, ``cells/mamba2.py``).

Here, for a model trained on passkey at L (``tools.capacity``):

- ``state_trace``: per step, every recurrent layer's state norm (mean over the batch), the
  largest and median channel norm (a channel: one row of a matrix state, ``_channels``), the
  largest |entry|, and the share of channels whose norm exceeds ``factor`` x their own largest
  norm within the training length (the "exploding" channels);
- ``recent_needle_accuracy``: passkey accuracy with the needle always within the last L tokens,
  at growing total lengths: a model that forgets keeps it; a collapsed one loses it. The
  **collapse point** is the first length where it falls below a threshold;
- ``calibrate``: each layer's ``state_norm`` bound, the largest head norm on training
  sequences (the window's W is L);
- ``collapse_study`` runs a model plain and with each mitigation, ``plot_collapse`` draws it.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from ..cells.base import as_tuple
from ..tasks import recall
from ..tasks.base import generator
from .capacity import TrainConfig, build, longest_retrieved, passkey_batch


def _recurrent_layers(model: torch.nn.Module) -> list:
    from ..nn import Recurrent
    return [m for m in model.modules() if isinstance(m, Recurrent)]


def _inputs_of(model: torch.nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    """The input ``(B, T, D)`` of each recurrent layer when the model runs on ``x``."""
    seen: List[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
             for layer in _recurrent_layers(model)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _channels(h) -> torch.Tensor:
    """The cell's own state (a window's ring left out) as ``(B, channels, last dim)``: a channel
    is one row of a matrix state (Mamba-2: one of heads x P rows of N; GLA: heads x K rows of V;
    Mamba: H rows of N), one number of a vector state (GRU)."""
    S = as_tuple(h)[0]
    return S.reshape(S.shape[0], -1, S.shape[-1]) if S.dim() > 2 else S.unsqueeze(-1)


def state_trace(model: torch.nn.Module, x: torch.Tensor, train_length: int,
                factor: float = 2.0) -> List[Dict[str, torch.Tensor]]:
    """Per recurrent layer, per step ``t`` (each ``(T,)``, mean over the batch unless said):
    ``norm`` (Frobenius norm of the state), ``channel_max`` / ``channel_median`` (largest and
    median channel norm, ``_channels``), ``entry_max`` (largest |entry|), ``exploding`` (share
    of channels whose norm is above ``factor`` x that channel's largest norm within the first
    ``train_length`` steps)."""
    out = []
    with torch.no_grad():
        for layer, u_in in zip(_recurrent_layers(model), _inputs_of(model, x)):
            cell = layer.cell
            u = cell.project(u_in)  # (B, T, D) -> (B, T, P)
            h = cell.init_state(u.shape[0], u.dtype)
            rows = []
            for t in range(u.shape[1]):
                h = cell.step(u[:, t], h)
                rows.append(_channels(h))
            H = torch.stack(rows, dim=1)  # (B, T, channels, last)
            per = H.norm(dim=-1)  # (B, T, channels)
            ref = per[:, :train_length].amax(dim=1, keepdim=True)  # (B, 1, channels)
            out.append(dict(
                norm=H.flatten(2).norm(dim=-1).mean(0),
                channel_max=per.amax(-1).mean(0), channel_median=per.median(-1).values.mean(0),
                entry_max=H.abs().flatten(2).amax(-1).mean(0),
                exploding=(per > factor * ref).float().mean(dim=(0, 2))))
    return out


def recent_needle_accuracy(model: torch.nn.Module, task: recall.Passkey, lengths: Sequence[int],
                           recent: int, examples: int = 32, seed: int = 0) -> Dict[int, float]:
    """Passkey accuracy at each length with the needle's marker ``recent * (i + 0.5) /
    examples`` tokens (rounded) before the query tail: always inside the last ``recent`` tokens,
    so only an inability to forget the haystack can lose it."""
    k = task.digits
    out = {}
    with torch.no_grad():
        for length in lengths:
            last = length - 2 * k - 1
            span = min(recent - 2 * k, last + 1)
            starts = [last - int(span * (i + 0.5) / examples) for i in range(examples)]
            x, y, mask, _ = passkey_batch(task, length, generator(seed, "test"), starts=starts)
            out[int(length)] = task.score(model(x), y, mask)
    return out


def calibrate(model: torch.nn.Module, x: torch.Tensor) -> List[float]:
    """The ``state_norm`` bound of each recurrent layer from the plain model on training-like
    sequences ``x`` (B, L): the largest norm a head's state (the option's unit:
    ``cells/mamba2.py``) reaches on them. ``x`` must hold the needles and queries of the
    training data: a haystack alone writes less, and a bound set there erases the passkey."""
    bounds = []
    with torch.no_grad():
        for layer, u_in in zip(_recurrent_layers(model), _inputs_of(model, x)):
            u = layer.cell.project(u_in)  # (B, L, D) -> (B, L, P)
            h = layer.cell.init_state(u.shape[0], u.dtype)
            big = 0.0
            for t in range(u.shape[1]):
                h = layer.cell.step(u[:, t], h)
                head_norms = as_tuple(h)[0].flatten(2).norm(dim=-1)  # (B, heads)
                big = max(big, float(head_norms.max()))
            bounds.append(big)
    return bounds


def mitigated_copy(spec, model: torch.nn.Module, task: recall.Passkey, cfg: TrainConfig,
                   options: dict) -> torch.nn.Module:
    """The trained ``model`` rebuilt with cell ``options`` (same weights, eval mode); a list
    ``state_norm`` gives each recurrent layer its own bound."""
    bounds = options.get("state_norm")
    per_layer = isinstance(bounds, (list, tuple))
    m = build(spec, task, cfg, **{**options, **({"state_norm": max(bounds)} if per_layer
                                                 else {})})
    m.load_state_dict(model.state_dict())
    if per_layer:
        for layer, c in zip(_recurrent_layers(m), bounds):
            layer.cell.state_norm = c
    return m.eval()


def variants(decay_scales: Sequence[float], state_norm: Sequence[float],
             window: int) -> Dict[str, dict]:
    """The runs of the study: the plain model and each mitigation alone (cell options)."""
    runs: Dict[str, dict] = {"plain": {}}
    runs.update({f"decay_scale={s:g}": dict(decay_scale=s) for s in decay_scales})
    runs["state_norm=" + "/".join(f"{c:.3g}" for c in state_norm)] = dict(state_norm=state_norm)
    runs[f"window={window}"] = dict(window=window)
    return runs


def collapse_study(spec, model: torch.nn.Module, task: recall.Passkey, cfg: TrainConfig,
                   lengths: Sequence[int], trace_length: int,
                   decay_scales: Sequence[float] = (1.25, 2.0),
                   window: Optional[int] = None, threshold: float = 0.9, examples: int = 32,
                   trace_batch: int = 4) -> dict:
    """The trained ``model`` of ``spec``, plain and with each mitigation (same weights): state
    traces on ``trace_batch`` passkey sequences of ``trace_length`` and the recent-needle
    accuracy at ``lengths``; the collapse point of each (first length below ``threshold``).
    The norm bound of each layer is calibrated on 64 training sequences (length L, test
    stream)."""
    x = passkey_batch(task, trace_length, generator(cfg.seed, "test"), batch=trace_batch)[0]
    runs = {}
    window = cfg.length if window is None else window
    steps = log_steps(trace_length)
    bound = calibrate(model, task.sample(64, cfg.length, generator(cfg.seed, "test"))[0])
    for name, options in variants(decay_scales, bound, window).items():
        m = mitigated_copy(spec, model, task, cfg, options) if options else model
        trace = state_trace(m, x, cfg.length)
        acc = recent_needle_accuracy(m, task, lengths, cfg.length, examples, cfg.seed)
        longest = longest_retrieved(acc, threshold)
        after = [n for n in sorted(acc) if n > longest]
        runs[name] = dict(options=options, accuracy=acc, collapse_point=after[0] if after else None,
                          trace=[{k: v[steps].tolist() for k, v in t.items()} for t in trace])
    return dict(model=spec.label, train_length=cfg.length, trace_length=trace_length,
                threshold=threshold, steps=[s + 1 for s in steps.tolist()], runs=runs)


def log_steps(T: int, points: int = 160) -> torch.Tensor:
    """About ``points`` step indices in ``[0, T)``, log-spaced (every step at first), for the
    traces kept in the JSON and drawn."""
    idx = torch.logspace(0, torch.log10(torch.tensor(float(T))), points).long() - 1
    return torch.unique(idx.clamp(0, T - 1))


def plot_collapse(result: dict, path, layer: int = -1) -> None:
    """One figure per model: the state norm per step (one layer, log-log), the share of
    exploding heads, and the recent-needle accuracy against length, plain vs each mitigation;
    the training length dashed, collapse points dotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    L = result["train_length"]
    for i, (name, run) in enumerate(result["runs"].items()):
        color = f"C{i}"
        tr, steps = run["trace"][layer], result["steps"]
        axes[0].plot(steps, tr["norm"], color=color, lw=1, label=name)
        axes[0].plot(steps, tr["channel_max"], color=color, lw=0.6, ls=":")
        axes[1].plot(steps, tr["exploding"], color=color, lw=1, label=name)
        acc = {int(k): v for k, v in run["accuracy"].items()}
        ks = sorted(acc)
        axes[2].plot(ks, [acc[k] for k in ks], marker=".", color=color, label=name)
        if run["collapse_point"]:
            axes[2].axvline(run["collapse_point"], color=color, ls=":", lw=1)
    titles = ("state norm (solid) / largest channel norm (dotted)",
              "share of channels > 2x their largest norm within L",
              "passkey accuracy, needle in the last L tokens")
    for ax, title in zip(axes, titles):
        ax.axvline(L, ls="--", c="gray", lw=1)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step" if ax is not axes[2] else "context length")
    axes[0].set_yscale("log")
    axes[2].legend(fontsize=7)
    which = "last layer" if layer == -1 else f"layer {layer}"
    fig.suptitle(f"{result['model']}: trained at L = {L} (states of the {which})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
