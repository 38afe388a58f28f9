"""``import rnnlab`` is enough: every subpackage is reachable as an attribute, loaded on first
use; a misspelt one is a plain AttributeError."""
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
