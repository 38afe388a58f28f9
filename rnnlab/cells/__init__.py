"""Cells: one file per family, each registered by name. See ``base.py`` for the contract.

Every module of this package is imported here, so a cell file dropped into ``rnnlab/cells/``
registers itself (its ``@register``) with no other edit; the imports below only give the
classes their ``rnnlab.cells.Name``."""
import importlib
import pkgutil

from .base import (Block, Cell, Dense, Diagonal, Heads, Linear, NewtonWins, State,  # noqa: F401
                   as_tuple, map_state)
from .registry import available, get, register  # noqa: F401

# Importing a family's module registers its cells.
from .aaren import Aaren  # noqa: F401,E402
from .delta import DeltaNet, DeltaProduct, GatedDeltaNet  # noqa: F401,E402
from .dlr import DLR  # noqa: F401,E402
from .elman import Elman  # noqa: F401,E402
from .gla import GLA  # noqa: F401,E402
from .gru import GRU  # noqa: F401,E402
from .indrnn import IndRNN  # noqa: F401,E402
from .lru import LRU  # noqa: F401,E402
from .lssl import LSSL  # noqa: F401,E402
from .lstm import LSTM  # noqa: F401,E402
from .m2rnn import M2RNN  # noqa: F401,E402
from .mamba import Mamba  # noqa: F401,E402
from .mamba2 import Mamba2  # noqa: F401,E402
from .minmax import MinMax  # noqa: F401,E402
from .mlstm import MLSTM  # noqa: F401,E402
from .paragru import ParaGRU  # noqa: F401,E402
from .paralstm import ParaLSTM  # noqa: F401,E402
from .s4d import S4D  # noqa: F401,E402
from .slstm import SLSTM  # noqa: F401,E402


def _discover() -> None:
    """Import every module of the package: each registers the cells it defines."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_discover()
