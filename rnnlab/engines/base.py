"""What every engine shares: input checks, the dtype rule, and running a cell with given
parameters. An engine subclass implements ``run(cell, x, h0, lengths) -> (y, h_T)`` (and
``run_call`` when a call has statistics or options of its own)."""
from __future__ import annotations

import functools
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from ..cells.base import Cell, State, as_tuple, map_state
from .checks import check_input, check_lengths, check_state


def compute_dtype(x: torch.Tensor, tensors) -> torch.dtype:
    """The dtype a run computes and keeps its state in: at least fp32, and at least the
    precision of every floating tensor given (parameters, initial state; a complex one counts
    by its real part): an fp64 one makes the run fp64 rather than being rounded down."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    for t in tensors:
        if t.is_complex():
            dtype = torch.promote_types(dtype, t.real.dtype)
        elif t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def state_dtype(leaf: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """The dtype a state leaf is kept in: ``dtype``, or its complex counterpart for complex
    leaves (complex64 for fp32, complex128 for fp64)."""
    return torch.promote_types(dtype, torch.complex64) if leaf.is_complex() else dtype


class _Bound(nn.Module):
    """``fn(cell, *args)`` as a module's forward, so ``functional_call`` can swap the cell's
    parameters for the duration of one run."""

    def __init__(self, cell: Cell, fn: Callable):
        super().__init__()
        self.cell, self.fn = cell, fn

    def forward(self, *args):
        return self.fn(self.cell, *args)


def call_with_params(cell: Cell, tensors: Dict[str, torch.Tensor], fn: Callable, *args):
    """Call ``fn(cell, *args)`` with the cell's parameters/buffers replaced by ``tensors``
    (differentiable: gradients flow to the given tensors). The cell itself is not modified."""
    named = {f"cell.{k}": v for k, v in tensors.items()}
    return torch.func.functional_call(_Bound(cell, fn), named, args)


def _zero_padding(x: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """``x (B, T, D)`` with the steps past each sequence's length set to 0, before any engine
    sees them. Engines make padded steps the identity, but their values still flow through
    the projection and the parameter gradients (``x^T @ grad``: 0 * NaN is NaN), and a huge
    finite value overflows a gate; a select (not a mask product, which keeps NaN) cuts them
    out of the forward and gives their inputs a gradient of exactly 0."""
    if lengths is None or int(lengths.min()) == x.shape[1]:
        return x
    valid = torch.arange(x.shape[1], device=x.device) < lengths[:, None]  # (B, T)
    return torch.where(valid[..., None], x, x.new_zeros(()))


class Engine:
    """Runs a cell over a sequence. Call: ``y, h_T = engine(cell, x, initial_state, lengths)``.

    - ``x: (B, T, D)`` floating; ``y: (B, T, H_out)`` in ``x.dtype``.
    - The state is computed and returned in at least fp32 (bf16/fp16 inputs get an fp32 state,
      fp64 stays fp64, also when only the parameters or ``initial_state`` are fp64);
      parameters are cast to that dtype for the run (autocast-like).
    - ``lengths: (B,)`` ints in [0, T]: steps past a sequence's end leave its state untouched and
      output zeros; whatever they hold (NaN, inf, 1e30) reaches no output and no gradient, and
      their inputs get a gradient of exactly 0.
    - ``params``: optional ``{name: tensor}`` used instead of the cell's own parameters.
    - ``input_name``, ``state_name``: what the caller calls ``x`` and ``initial_state``, for
      error messages (``Recurrent.step(x_chunk, state)``).
    - ``stats``: a dict that receives this call's statistics (at least ``engine``, the name of
      the engine that ran it; Newton adds its iterations, residuals...). Engines keep nothing
      of a call: one engine object may serve many layers, each with its own ``stats``.
    - ``options``: per-call options of an engine (Newton's warm start ``guess``); an engine
      that takes none refuses them.
    """

    name = "engine"

    def supports(self, cell: Cell) -> bool:
        return True

    def run(self, cell: Cell, x: torch.Tensor, h0: State,
            lengths: Optional[torch.Tensor]) -> Tuple[torch.Tensor, State]:
        raise NotImplementedError

    def run_call(self, cell: Cell, x: torch.Tensor, h0: State, lengths: Optional[torch.Tensor],
                 stats: dict, **options) -> Tuple[torch.Tensor, State]:
        """``run`` for one call whose statistics go into ``stats``; engines with statistics
        or per-call options override it."""
        if options:
            raise TypeError(f"engine {self.name!r} takes no per-call options, got "
                            f"{sorted(options)}")
        stats["engine"] = self.name
        return self.run(cell, x, h0, lengths)

    def __call__(self, cell: Cell, x: torch.Tensor, initial_state: Optional[State] = None,
                 lengths=None, params: Optional[Dict[str, torch.Tensor]] = None, *,
                 input_name: str = "x", state_name: str = "initial_state",
                 stats: Optional[dict] = None, **options):
        check_input(cell, x, input_name)
        if not self.supports(cell):
            raise ValueError(f"engine {self.name!r} cannot run {type(cell).__name__} "
                             f"(structure {cell.structure})")
        B, T, _ = x.shape
        lengths = check_lengths(lengths, B, T, x.device)
        if initial_state is not None:
            check_state(cell, initial_state, B, state_name)
        tensors = dict(cell.named_parameters()) if params is None else dict(params)
        tensors.update({k: v for k, v in cell.named_buffers()
                        if k not in tensors and v.is_floating_point()})
        state = () if initial_state is None else as_tuple(initial_state)
        dtype = compute_dtype(x, [*tensors.values(), *state])
        h0 = (cell.init_state(B, dtype, x.device) if initial_state is None
              else map_state(lambda t: t.to(state_dtype(t, dtype)), initial_state))
        xc = _zero_padding(x, lengths).to(dtype)
        if stats is None:
            stats = {}
        stats.clear()  # this call's alone
        run = functools.partial(self.run_call, stats=stats, **options)
        if params is None and all(t.dtype == dtype for t in tensors.values()):
            y, h = run(cell, xc, h0, lengths)
        else:
            cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
            y, h = call_with_params(cell, cast, run, xc, h0, lengths)
        return y.to(x.dtype), h

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
