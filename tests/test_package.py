"""``import rnnlab`` is enough: every subpackage is reachable as an attribute, loaded on first
use; a misspelt one is a plain AttributeError."""
import os
import pathlib
import subprocess
import sys

import pytest

import rnnlab


def test_subpackages_load_on_first_use():
    code = ("import rnnlab, sys\n"
            "assert 'rnnlab.models' not in sys.modules\n"
            "assert rnnlab.models.LM and rnnlab.tasks.get\n"
            "assert rnnlab.tools.largest_lyapunov_exponent\n"
            "assert 'rnnlab.models' in sys.modules and 'models' in dir(rnnlab)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'rnnlab' has no attribute 'modles'"):
        rnnlab.modles  # noqa: B018


def test_every_listed_name_resolves():
    """``inspect.getmembers`` (pydoc, IDEs) reads every name ``dir`` lists."""
    code = ("import inspect, rnnlab\n"
            "names = dict(inspect.getmembers(rnnlab))\n"
            "assert {'models', 'tasks', 'tools', 'Recurrent'} <= set(names)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


MINGRU = '''"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): a test cell dropped in."""
import torch
from torch import nn

from .base import Cell, Diagonal
from .registry import register


@register("mingru_dropped_in")
class MinGRU(Cell):
    structure = Diagonal()

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.lin = nn.Linear(input_size, 2 * hidden_size)

    def project(self, x):
        return self.lin(x)

    def step(self, u_t, h):
        z, cand = u_t.chunk(2, dim=-1)
        z = torch.sigmoid(z)
        return (1 - z) * h + z * cand
'''


def test_a_cell_file_dropped_into_the_package_registers_itself(tmp_path):
    """Adding a cell is one file: no import line anywhere else."""
    import shutil

    shutil.copytree(pathlib.Path(rnnlab.__file__).parent, tmp_path / "rnnlab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "rnnlab" / "cells" / "mingru_dropped_in.py").write_text(MINGRU)
    code = ("import torch, rnnlab\n"
            "layer = rnnlab.Recurrent('mingru_dropped_in', input_size=3, hidden_size=4)\n"
            "y, h = layer(torch.randn(2, 5, 3))\n"
            "assert y.shape == (2, 5, 4) and 'mingru_dropped_in' in rnnlab.cells.available()\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env,
                   cwd=tmp_path)
