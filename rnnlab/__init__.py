"""rnnlab: write a recurrent cell once, run it every way."""
from . import cells, engines, nn  # noqa: F401
from .cells.base import OptionTypeError  # noqa: F401
from .errors import ConvergenceError  # noqa: F401
from .nn.recurrent import Recurrent  # noqa: F401

__version__ = "0.1.0"
