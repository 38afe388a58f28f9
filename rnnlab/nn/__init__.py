"""User-facing modules: ``Recurrent(cell, engine)`` and drop-in ``RNN``/``GRU``/``LSTM``."""
from .recurrent import Recurrent  # noqa: F401
from .torch_compat import GRU, LSTM, RNN  # noqa: F401
