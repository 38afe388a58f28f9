"""Magnitude pruning of recurrent weights with persistent masks (Darji, "Investigating Sparsity in
Recurrent Neural Networks", arXiv 2407.20601), and Zhu & Gupta's gradual cubic schedule ("To
prune, or not to prune", arXiv 1710.01878).

Weight groups. A cell's non-bias weights split into input-to-hidden (``i2h``) and
hidden-to-hidden (``h2h``) by their names, the torch layout every torch-style cell keeps:

- ``weight_ih`` -> ``i2h`` (Elman ``rnn_tanh``/``rnn_relu``, GRU, LSTM, IndRNN, sLSTM);
- ``weight_hh`` -> ``h2h`` (GRU/LSTM: all gates' rows; IndRNN: its recurrent vector; sLSTM: its
  per-head blocks);
- ``weight_hr`` (LSTM's projection, on the recurrent path h' = W_hr (o * tanh c')) -> ``h2h``.

A cell with neither name (Mamba, GLA, ...) has no such split, and ``prunable`` says so rather
than guess. Biases are never pruned.

Masks. ``apply_masks`` keeps a pruned weight exactly zero however the model is trained or run:

- the mask is a bool buffer ``<weight>_mask`` beside the weight (so it is in ``state_dict``),
  and the weight is zeroed in place;
- a gradient hook zeroes the pruned entries' gradient (clipping and momentum never see them);
- a global optimizer step hook re-zeroes them after every step of every ``torch.optim``
  optimizer (Adam's momentum and weight decay would otherwise resurrect them);
- a forward pre-hook on the model re-zeroes anything written since (``copy_``, an optimizer
  outside ``torch.optim``) and re-enters a ``copy.deepcopy``'s weights in the hooks' registry;
- ``state_dict`` re-zeroes before it saves, so a saved pruned weight is exactly zero;
  ``masks_in(state_dict)`` rebuilds the masks of a fresh model before ``load_state_dict``.

Because the weight itself is zero, every engine (sequential, Newton, quasi-Newton, auto) runs
the same pruned cell: none needs to know about masks (the Newton engine's ``functional_call``
gets the very parameters, zeros included).
"""
from __future__ import annotations

import weakref
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

from ..cells.base import Cell
from ..checks import check_choice, check_int, check_number

GROUPS = ("i2h", "h2h", "both")
_GROUP_OF = {"weight_ih": "i2h", "weight_hh": "h2h", "weight_hr": "h2h"}
MASK_SUFFIX = "_mask"

# parameter -> (owning module, its name there); weak, so a deleted model leaves nothing behind
_MASKED: WeakIdKeyDictionary = WeakIdKeyDictionary()
_STEP_HOOK = []  # the global optimizer hook's handle, registered once


# --- which weights ------------------------------------------------------------------------
def weight_groups(cell: Cell) -> Dict[str, List[str]]:
    """``{"i2h": [names], "h2h": [names]}``: the cell's prunable weights by group."""
    names = [n for n, _ in cell.named_parameters(recurse=False) if n in _GROUP_OF]
    if not names:
        own = [n for n, _ in cell.named_parameters()]
        raise ValueError(f"prune: cannot tell input-to-hidden from hidden-to-hidden weights of "
                         f"{type(cell).__name__} (parameters {own}); supported: cells with "
                         f"weight_ih/weight_hh such as rnn_tanh, rnn_relu, gru, lstm, indrnn, "
                         f"slstm")
    return {g: [n for n in names if _GROUP_OF[n] == g] for g in ("i2h", "h2h")}


def prunable(model: nn.Module, group: str = "both") -> List[Tuple[str, nn.Parameter]]:
    """``[(qualified name, weight)]`` of every cell in ``model`` for ``group`` (``i2h``,
    ``h2h`` or ``both``), in ``named_modules`` order."""
    check_choice("prune", "group", group, GROUPS)
    wanted = ("i2h", "h2h") if group == "both" else (group,)
    out = []
    for prefix, module in model.named_modules():
        if isinstance(module, Cell):
            groups = weight_groups(module)
            for name in (n for g in wanted for n in groups[g]):
                out.append((f"{prefix}.{name}" if prefix else name, getattr(module, name)))
    if not out:
        raise ValueError(f"prune: model {type(model).__name__} holds no rnnlab cell to prune")
    return out


# --- masks --------------------------------------------------------------------------------
def magnitude_masks(model: nn.Module, percentile: float, group: str = "both"
                    ) -> Dict[str, torch.Tensor]:
    """One global magnitude threshold over all of ``group``'s weights: the ``round(p N / 100)``
    smallest ``|w|`` of the N weights (all layers together) are pruned, the rest kept. This is
    Darji's "below the p-th percentile" without interpolation, so p = 0 prunes nothing, p = 100
    everything, and the sparsity is exactly p % (ties broken by position). Weights that are
    already zero (earlier masks) sort first, so masks only ever grow.

    Returns ``{qualified name: bool mask}`` (True = kept), shaped like each weight."""
    check_number("prune", "percentile", percentile, 0, 100)
    weights = prunable(model, group)
    flat = torch.cat([w.detach().abs().flatten().double().cpu() for _, w in weights])  # (N,)
    n_pruned = round(percentile * flat.numel() / 100)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:n_pruned]] = False
    masks, start = {}, 0
    for name, w in weights:
        masks[name] = keep[start:start + w.numel()].view(w.shape).to(w.device)
        start += w.numel()
    return masks


def apply_masks(model: nn.Module, masks: Dict[str, torch.Tensor]) -> None:
    """Make ``masks`` (``{qualified weight name: bool, True = kept}``) persistent on ``model``;
    a weight masked before keeps its old zeros too (the masks are combined with AND)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise ValueError(f"apply_masks: masks: {name!r} is not a parameter of the model; "
                             f"parameters: {sorted(params)}")
        weight = params[name]
        if not isinstance(mask, torch.Tensor) or mask.shape != weight.shape:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"apply_masks: masks[{name!r}] must be a tensor of the weight's "
                             f"shape {tuple(weight.shape)}, got {got}")
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        _attach(owner, attr, mask.to(torch.bool).to(weight.device))
    if not getattr(model, "_prune_hooked", False):
        model.register_forward_pre_hook(_before_forward)
        model._prune_hooked = True
    _ensure_step_hook()


def _attach(owner: nn.Module, attr: str, mask: torch.Tensor) -> None:
    buffer = getattr(owner, attr + MASK_SUFFIX, None)
    if buffer is None:
        owner.register_buffer(attr + MASK_SUFFIX, mask.clone())
        # hooks take the module they run on, so a deepcopy's hooks act on the copy
        owner.register_state_dict_pre_hook(lambda module, *_: _rezero_module(module))
        owner.register_load_state_dict_post_hook(lambda module, _: _rezero_module(module))
    else:
        buffer.logical_and_(mask)
    _adopt(owner, attr)
    _rezero_module(owner)


def _adopt(owner: nn.Module, attr: str) -> None:
    """Enter ``owner.attr`` in the registry the gradient and optimizer hooks read (again after
    a deepcopy or ``model.to``, whose parameters are new tensors or moved ones)."""
    weight = getattr(owner, attr)
    entry = _MASKED.get(weight)
    if entry is None or entry[0]() is not owner:
        if entry is None:
            weight.register_hook(lambda grad, w=weight: _masked_grad(w, grad))
        _MASKED[weight] = (weakref.ref(owner), attr)  # weak: the owner holds the weight


def _before_forward(root: nn.Module, _args) -> None:
    """Forward pre-hook of the model given to ``apply_masks``: adopt copied weights and undo
    any write (``copy_``, a foreign optimizer) since the last call."""
    for module in root.modules():
        for name, _ in module.named_buffers(recurse=False):
            if name.endswith(MASK_SUFFIX):
                _adopt(module, name[:-len(MASK_SUFFIX)])
        _rezero_module(module)


def _mask_of(weight: torch.Tensor):
    entry = _MASKED.get(weight)
    owner = None if entry is None else entry[0]()
    return None if owner is None else getattr(owner, entry[1] + MASK_SUFFIX, None)


def _masked_grad(weight, grad):
    mask = _mask_of(weight)
    return grad if mask is None else grad.masked_fill(~mask, 0)


def _zero(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Exact zeros at the pruned entries, written only if one drifted (so an autograd graph
    that saved the weight stays valid)."""
    with torch.no_grad():
        if weight.masked_select(~mask).ne(0).any():
            weight.masked_fill_(~mask, 0)


def rezero(weight: torch.Tensor) -> None:
    """Write exact zeros at ``weight``'s pruned entries, if it is masked and any drifted."""
    mask = _mask_of(weight)
    if mask is not None:
        _zero(weight, mask)


def _rezero_module(module: nn.Module) -> None:
    for name, mask in module.named_buffers(recurse=False):
        if name.endswith(MASK_SUFFIX) and mask.dtype == torch.bool:
            _zero(getattr(module, name[:-len(MASK_SUFFIX)]), mask)


def _after_step(optimizer, *_):
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p in _MASKED:
                rezero(p)


def _ensure_step_hook() -> None:
    if not _STEP_HOOK:
        _STEP_HOOK.append(register_optimizer_step_post_hook(_after_step))


def masks_of(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The masks ``model`` holds: ``{qualified weight name: bool mask}``."""
    return {name[:-len(MASK_SUFFIX)]: buf for name, buf in model.named_buffers()
            if name.endswith(MASK_SUFFIX) and buf.dtype == torch.bool}


def masks_in(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The masks saved in a pruned model's ``state_dict``: give them to ``apply_masks`` on a
    fresh model, then ``load_state_dict``."""
    return {k[:-len(MASK_SUFFIX)]: v for k, v in state_dict.items()
            if k.endswith(MASK_SUFFIX) and v.dtype == torch.bool}


def prune_magnitude(model: nn.Module, percentile: float, group: str = "both"
                    ) -> Dict[str, torch.Tensor]:
    """One-shot global magnitude pruning: ``magnitude_masks`` then ``apply_masks``."""
    masks = magnitude_masks(model, percentile, group)
    apply_masks(model, masks)
    return masks_of(model)


def sparsity(model: nn.Module, group: str = "both") -> float:
    """Fraction of ``group``'s weights that are exactly zero."""
    weights = [w for _, w in prunable(model, group)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


# --- gradual schedule ----------------------------------------------------------------------
def cubic_sparsity(step: int, final: float, begin: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule, ``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (t_end - t_0))^3``
    for ``t_0 <= t <= t_end``: ``s_i`` before ``begin``, ``s_f`` after ``end``; it prunes fast
    early, while redundant weights abound, and slowly near the final sparsity."""
    check_int("cubic_sparsity", "step", step, 0)
    check_number("cubic_sparsity", "final", final, 0, 1)
    check_number("cubic_sparsity", "initial", initial, 0, final)
    check_int("cubic_sparsity", "begin", begin, 0)
    check_int("cubic_sparsity", "end", end, begin + 1)
    frac = min(max((step - begin) / (end - begin), 0.0), 1.0)
    return final + (initial - final) * (1 - frac) ** 3


class GradualPruner:
    """Prune ``model`` along ``cubic_sparsity`` every ``every`` steps: call ``step(t)`` after each
    optimizer step; returns the sparsity set at ``t`` (``None`` when ``t`` is not a pruning
    step)."""

    def __init__(self, model: nn.Module, final: float, begin: int, end: int, every: int = 1,
                 group: str = "both", initial: float = 0.0):
        cubic_sparsity(begin, final, begin, end, initial)  # checks the schedule's arguments
        check_int("GradualPruner", "every", every, 1)
        check_choice("GradualPruner", "group", group, GROUPS)
        self.model, self.final, self.begin, self.end = model, final, begin, end
        self.every, self.group, self.initial = every, group, initial

    def step(self, t: int):
        if t < self.begin or t > self.end or (t - self.begin) % self.every:
            return None
        target = cubic_sparsity(t, self.final, self.begin, self.end, self.initial)
        prune_magnitude(self.model, 100 * target, self.group)
        return target



# --- the thesis's model and its training ---------------------------------------------------
class StackedRNN(nn.Module):
    """Darji's classifier: one-hot tokens -> ``layers`` recurrent layers of ``hidden`` units ->
    Linear(``n_outputs``) at every step. ``x: (B, T)`` long -> logits ``(B, T, n_outputs)``."""

    def __init__(self, cell: str, vocab_size: int, n_outputs: int = 2, hidden: int = 50,
                 layers: int = 3, engine: str = "auto"):
        super().__init__()
        from ..nn import Recurrent  # nn imports tools' neighbours; keep this module light
        check_int("StackedRNN", "hidden", hidden, 1)
        check_int("StackedRNN", "layers", layers, 1)
        self.vocab_size = vocab_size
        sizes = [vocab_size] + [hidden] * layers
        self.layers = nn.ModuleList(Recurrent(cell, engine, input_size=a, hidden_size=b)
                                    for a, b in zip(sizes, sizes[1:]))
        self.out = nn.Linear(hidden, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.one_hot(x, self.vocab_size).float()  # (B, T) -> (B, T, V)
        for layer in self.layers:
            h, _ = layer(h)
        return self.out(h)


def fit(model: nn.Module, task, data, epochs: int, lr: float = 1e-3, batch: int = 32,
        clip: float = 5.0, seed: int = 0, optimizer=None):
    """Darji's training: Adam(``lr``), shuffled batches, gradient norm clipped to ``clip``.
    ``data = (inputs, targets, mask)``, all ``(N, T)``. Returns the optimizer (to go on)."""
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = data[0].shape[0]
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(batch):
            x, y, mask = (t[idx] for t in data)
            loss = task.loss(model(x), y, mask)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
    return opt


@torch.no_grad()
def evaluate(model: nn.Module, task, data, batch: int = 500) -> float:
    """Accuracy of ``model`` on ``data = (inputs, targets, mask)`` (one answer per example)."""
    model.eval()
    right = total = 0
    for x, y, mask in zip(*(t.split(batch) for t in data)):
        pred = model(x).argmax(-1)  # (B, T)
        right += int((pred[mask] == y[mask]).sum())
        total += int(mask.sum())
    return right / total
