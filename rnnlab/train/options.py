"""Checks of the trainers' settings, run before anything is read or written; each error names
the command-line option that sets the field, the range expected and the value given."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import checks
from ..errors import OptionTypeError

INT_MAX = 2 ** 31 - 1  # no count or size here comes near it; far above, torch overflows
SEED_MAX = 2 ** 32 - 1  # torch takes more, but the trainers derive further seeds from it
OPTIONS = {"n_layers": "--layers"}  # config field -> its option, where the names differ


def option(field: str) -> str:
    """The command-line option that sets the config field ``field``."""
    return OPTIONS.get(field, "--" + field.replace("_", "-"))


def check_int(name: str, value, low: int = 1, high: int = INT_MAX) -> None:
    """``value`` (of the option ``name``) must be an int in ``[low, high]``: a CLI-style
    ``rnnlab.checks.check_int`` whose error names only the bound crossed (``--steps: expected an
    integer >= 1, got 0``), as a user who typed one number needs no upper bound near 2**31."""
    checks.check_int(None, name, value)  # the type first: "expected an integer, got 2.5"
    checks.check_int(None, name, value, low=low)
    checks.check_int(None, name, value, high=high)


def integer(cfg, field: str, low: int = 1, high: int = INT_MAX) -> None:
    """``cfg.field`` must be an int in ``[low, high]``."""
    check_int(option(field), getattr(cfg, field), low, high)


def number(cfg, field: str, low: float = 0.0, strict: bool = True, high: float = math.inf,
           infinite: bool = False) -> None:
    """``cfg.field`` must be a real number above ``low`` (or equal to it unless ``strict``)
    and at most ``high``; finite unless ``infinite`` (an unlimited budget)."""
    value = getattr(cfg, field)
    if not checks.is_number(value):
        raise OptionTypeError(f"{option(field)}: expected a number, got {value!r}")
    above = value > low if strict else value >= low
    if not (above and value <= high and (infinite or math.isfinite(value))):
        bound = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf
                                                       else "")
        raise ValueError(f"{option(field)}: expected a {'' if infinite else 'finite '}number "
                         f"{bound}, got {value!r}")


def parameter_count(make: Callable[[int], torch.nn.Module], n_layers: int) -> int:
    """The parameters of ``make(n_layers)``, extrapolated from ``make(1)`` and ``make(2)``
    built on the meta device: no memory and no time, whatever the sizes asked for. The
    constructor's own errors (an unknown option, a size it refuses) propagate."""
    with torch.device("meta"):
        one, two = (sum(p.numel() for p in make(n).parameters()) for n in (1, 2))
    return one + (n_layers - 1) * (two - one)


def check_memory(params: int, activations: int, device: torch.device, sizes: str) -> None:
    """Refuse a run when a lower bound of what a training step holds, fp32 weights, gradients
    and AdamW's two moments (16 bytes a parameter) plus ``activations`` bytes, is more than
    ``device`` has free: a mistyped size is then an error naming the ``sizes`` options instead
    of an allocator failure (or the machine swapping) mid-run. Unknown free memory: no check."""
    needed = 16 * params + activations
    free = free_bytes(device)
    if free is not None and needed > free:
        raise ValueError(f"{sizes}: a training step needs at least {needed / 2 ** 30:.1f} GiB, "
                         f"more than the {free / 2 ** 30:.1f} GiB free on {device}; choose "
                         f"smaller sizes")


def free_bytes(device: torch.device) -> Optional[int]:
    """Memory available for a new run on ``device`` (None where unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:  # Linux: MemAvailable counts reclaimable caches, unlike MemFree
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_models_and_tasks(owner: str, models, tasks, task_names, baseline: str) -> None:
    """A recipe's ``models`` (registered cells or its ``baseline``) and ``tasks`` (among
    ``task_names``): both non-empty, each name known (the error suggests the closest)."""
    from .. import cells
    from ..checks import check_choice
    if not models or not tasks:
        raise ValueError(f"{owner}: models and tasks must be non-empty, got {models!r} and "
                         f"{tasks!r}")
    for name in models:
        check_choice(owner, "models", name, [*cells.available(), baseline])
    for task in tasks:
        check_choice(owner, "tasks", task, task_names)
