"""What every check shares: a factory turned into seeded layers, and the wrapper that makes each
check a public function ``check_x(factory, *, input_size, hidden_size, seed, dtype, ...)`` whose
every failure is one AssertionError naming the cell and the property."""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable, Union

import torch

from .. import cells, engines
from ..cells.base import Cell, State, map_state
from ..checks import check_choice, check_int
from ..nn.recurrent import Recurrent

# A registered cell's name, or anything called as ``factory(input_size, hidden_size) -> Cell``
# (a Cell subclass, a function, a ``functools.partial`` fixing options).
Factory = Union[str, Callable[..., Cell]]

DTYPES = (torch.float32, torch.float64)  # what the checks may run in


def check_dtype(owner: str, dtype) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"{owner}: dtype must be torch.float32 or torch.float64, got {dtype!r}")


class NotApplicable(ValueError):
    """The check cannot run as asked: it says nothing about this cell (``check_transition`` on
    a nonlinear cell, ``check_padding(engine="scan")`` on one the scan cannot run), or an
    option names no engine. Not a failure of the cell: a ValueError, never an AssertionError."""


def resolve(factory: Factory):
    """``(label, make)``: how failures name the cell, and ``make(D, H) -> Cell``."""
    if isinstance(factory, str):
        cells.registry.constructor(factory)  # an unknown name: ValueError with the closest one
        return factory, functools.partial(cells.get, factory)
    if not callable(factory):
        raise TypeError(f"factory: expected a registered cell name or a callable "
                        f"(input_size, hidden_size) -> Cell, got {factory!r}")
    inner = factory.func if isinstance(factory, functools.partial) else factory
    return getattr(inner, "__name__", repr(factory)), factory


def cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The module's floating parameters in ``dtype``; complex ones stay as they are (the engines
    cast them by their real part's precision), which ``Module.to(dtype)`` would not do."""
    return module.double() if dtype == torch.float64 else module.float()


@dataclass(frozen=True)
class Setup:
    """One check's cell factory and sizes: builds seeded layers and random states."""
    label: str
    make: Callable[..., Cell]
    input_size: int
    hidden_size: int
    seed: int
    dtype: torch.dtype

    def cell(self, seed: int | None = None, dtype: torch.dtype | None = None) -> Cell:
        """A fresh cell, its parameters drawn under ``seed`` (default: the check's)."""
        torch.manual_seed(self.seed if seed is None else seed)
        cell = self.make(self.input_size, self.hidden_size)
        if not isinstance(cell, Cell):
            raise TypeError(f"the factory returned {type(cell).__name__}, not an rnnlab Cell")
        return cast(cell, dtype or self.dtype)

    def layer(self, engine="sequential", seed: int | None = None,
              dtype: torch.dtype | None = None) -> Recurrent:
        return Recurrent(self.cell(seed, dtype), engine=engine)

    def state(self, cell: Cell, batch: int, seed: int = 1, dtype: torch.dtype | None = None,
              requires_grad: bool = False) -> State:
        """A random state (0.5 N(0, 1) per entry) in the dtype runs keep state in."""
        g = torch.Generator().manual_seed(self.seed * 1000 + seed)
        zero = cell.init_state(batch, dtype or self.dtype)
        return map_state(lambda z: (0.5 * torch.randn(z.shape, generator=g, dtype=z.dtype))
                         .requires_grad_(requires_grad), zero)

    def input(self, *shape: int, dtype: torch.dtype | None = None, seed: int = 2,
              requires_grad: bool = False) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1000 + seed)
        x = torch.randn(*shape, generator=g, dtype=dtype or self.dtype)
        return x.requires_grad_(requires_grad)


def check_property(name: str):
    """Make ``fn(setup, **options)`` the public check ``check_<name>(factory, *, input_size=3,
    hidden_size=4, seed=0, dtype=torch.float32, **options)``: arguments checked first (their
    errors stay ValueError/TypeError), then the run, under a forked RNG so the caller's random
    stream is untouched; whatever fails in it is an AssertionError
    ``"<cell>: <name>: <what>"``."""
    def deco(fn):
        @functools.wraps(fn)
        def check(factory: Factory, *, input_size: int = 3, hidden_size: int = 4,
                  seed: int = 0, dtype: torch.dtype = torch.float32, **options):
            owner = f"check_{name}"
            label, make = resolve(factory)
            check_int(owner, "input_size", input_size, 1)
            check_int(owner, "hidden_size", hidden_size, 1)
            check_int(owner, "seed", seed, 0)
            check_dtype(owner, dtype)
            try:  # a misspelt option is the caller's TypeError, not the cell's failure
                inspect.signature(fn).bind(None, **options)
            except TypeError as err:
                raise TypeError(f"{owner}: {err}") from None
            if "engine" in options:
                check_choice(owner, "engine", options["engine"], engines.available())
            setup = Setup(label, make, input_size, hidden_size, seed, dtype)
            with torch.random.fork_rng(devices=[]):
                try:
                    return fn(setup, **options)
                except NotApplicable as err:
                    raise NotApplicable(f"{label}: {name}: {err}") from None
                except AssertionError as err:
                    raise AssertionError(f"{label}: {name}: {err}") from err
                except Exception as err:  # a cell that crashes fails the property it crashed in
                    raise AssertionError(f"{label}: {name}: raised {type(err).__name__}: "
                                         f"{err}") from err
        check.property = name
        return check
    return deco
