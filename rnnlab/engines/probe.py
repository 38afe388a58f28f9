"""The structure probe: before Newton trusts a cell's declared structure (and its closed-form
``jacobian`` / ``quasi_jacobian`` hooks), it compares them with torch.func's JVPs at a random
state, so a wrong declaration is a loud error instead of a silently wrong step or gradient."""
from __future__ import annotations

from typing import Optional

import torch

from ..cells.base import Cell
from .linearize import (Layout, closed_form, flatten, kept_columns, linearize, matvec, sizes,
                        unflatten)

PROBE_SEED = 1234  # the structure probe's private generator: any fixed seed


def probe(cell: Cell, u: torch.Tensor, like: torch.Tensor, lay: Layout,
          quasi: Optional[Layout] = None) -> None:
    """Raise if the declared structure is false: at a random state (shaped, typed and placed
    like ``like (B, S)``), a random tangent's full JVP must equal the block-structured product
    (relative difference <= 1e-3; rounding stays near 1e-6 in fp32, a false declaration gives
    O(1)). The draws come from a private, fixed-seed generator: probing must not move the
    global RNG (a seeded run would then differ from the same run on another engine).

    A cell's closed-form ``jacobian`` must then give the same step and the same columns as the
    JVPs (same tolerance, over the whole of f and A), else a wrong hook is as loud an error;
    so must its ``quasi_jacobian`` when a quasi-Newton layout ``quasi`` is given."""
    gen = torch.Generator(device=like.device).manual_seed(PROBE_SEED)
    h_prev, tangent = (torch.randn(like.shape, generator=gen, dtype=like.dtype,
                                   device=like.device) for _ in range(2))
    fn = lambda v: flatten(cell.step(u, unflatten(v, lay)), lay)  # noqa: E731
    with torch.no_grad():
        f, A = linearize(cell, u, h_prev, lay, jvp=True)
        _, full = torch.func.jvp(fn, (h_prev.clone(),), (tangent,))
        err = (full - matvec(A, tangent, lay)).norm() / (full.norm() + 1e-30)
        if not err <= 1e-3:
            raise ValueError(f"{type(cell).__name__} declares structure {cell.structure}, but "
                             f"its step mixes state entries outside it (relative mismatch "
                             f"{err:.2e} on a random tangent); declare a wider structure "
                             f"(e.g. Dense())")
        if closed_form(cell) is not None:
            _check_closed_form(cell, u, h_prev, lay, f, A, "jacobian")
        if quasi is not None and quasi.exact is not None \
                and getattr(cell, "quasi_jacobian", None) is not None:
            kept = kept_columns(A.split(sizes(lay), -1), quasi)
            _check_closed_form(cell, u, h_prev, quasi, f, torch.cat(kept, -1), "quasi_jacobian")


def _check_closed_form(cell: Cell, u, h_prev, lay: Layout, f, A, hook: str) -> None:
    """Raise unless the cell's ``hook`` (``jacobian`` or ``quasi_jacobian``, per ``lay``) gives
    f and the columns A (the JVPs') at h_prev."""
    name, what = f"{type(cell).__name__}.{hook}", ("per-channel blocks of " if lay.exact else "")
    try:
        f2, A2 = linearize(cell, u, h_prev, lay)
    except RuntimeError as err:  # a wrong layout: a reshape or cat that does not fit
        raise ValueError(f"{name}: expected per state leaf columns (B, {lay.width}, leaf size) "
                         f"for the {what}structure {cell.structure}, got an error: {err}") from err
    if A2.shape != A.shape:
        raise ValueError(f"{name}: expected columns (B, M, S) = (B, {lay.width}, {lay.size}) "
                         f"for the {what}structure {cell.structure}, got {tuple(A2.shape)}")
    for part, got, ref in (("state", f2, f), ("Jacobian", A2, A)):
        err = (got - ref).norm() / (ref.norm() + 1e-30)
        if not err <= 1e-3:
            raise ValueError(f"{name}: its closed-form {part} differs from torch.func's on a "
                             f"random state (relative mismatch {err:.2e}); fix the hook or "
                             f"delete it to use JVPs")
