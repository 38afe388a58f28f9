"""rnnlab: write a recurrent cell once, run it every way."""
import importlib

from . import cells, engines, nn  # noqa: F401
from .cells.base import OptionTypeError  # noqa: F401
from .errors import ConvergenceError  # noqa: F401
from .nn.recurrent import Recurrent  # noqa: F401

__version__ = "0.1.0"

# The rest of the package loads on first use (``rnnlab.models.LM`` after ``import rnnlab``):
# models, tasks and the arena pull in more than a layer needs. Not ``hf``: it needs the optional
# transformers, and ``dir()`` then ``getattr`` (inspect, pydoc) must not raise ImportError.
_LAZY = ("arena", "benchmarks", "checks", "models", "ops", "tasks", "testing", "tools", "train")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'rnnlab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
