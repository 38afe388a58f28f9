"""The README's Python examples run as written."""
import re
from pathlib import Path

import torch

import rnnlab
from rnnlab import cells
from rnnlab.cells import registry

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run(monkeypatch):
    # The example registers a cell: keep that registration inside this test.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    scope: dict = {}
    for block in blocks:  # later blocks use names from earlier ones, as a reader would
        exec(compile(block, str(README), "exec"), scope)
    layer = rnnlab.Recurrent(cells.get("leaky_tanh", 3, 4))
    assert layer(torch.randn(2, 5, 3))[0].shape == (2, 5, 4)
    # "Write a linear cell" and "Check a cell": minGRU ran on every engine and passed them all.
    report = scope["report"]
    assert report.cell == "MinGRU" and not report.skipped
    assert report.engines == ["sequential", "scan", "newton", "quasi"]
    assert str(report).startswith("MinGRU: 16 checks passed on sequential, scan, newton, quasi")
