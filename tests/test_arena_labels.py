"""One model or task under two labels: refused in a grid and in a directory that grows (the
runs would only repeat each other), with defaults filled in before labels are compared."""
import json
import re

import pytest

from rnnlab.arena import preset, run_arena, spec
from rnnlab.arena.config import PRESETS

from .test_arena import quiet, tiny


def test_no_preset_lists_one_model_or_task_twice():
    """Every preset passes the arena's check that two labels never build the same thing."""
    for name in PRESETS:
        cfg = preset(name)
        models = [spec.identity(spec.model(m), cfg.lr) for m in cfg.models]
        tasks = [spec.task(t)[1] for t in cfg.tasks]
        for built in (models, tasks):
            assert all(a != b for i, a in enumerate(built) for b in built[i + 1:]), name


@pytest.mark.parametrize("a, b, same", [
    ("gru", "gru()", True),
    ("gru", " gru ( ) ", True),
    ("transformer", "transformer(heads=4)", True),  # the default written out
    ("transformer", "transformer(heads=2)", False),
    ("mamba[0,1]", "mamba(allow_neg_eigval=false,block=published)", True),
    ("mamba[0,1]", "mamba(allow_neg_eigval=false)", False),  # the generic block
    ("mamba[0,1]", "mamba[-1,1]", False),
    ("gla", "gla(lr=1e-3)", True),  # the arena's own rate
    ("gla", "gla(lr=3e-3)", False),
    ("gla", "gla(prefix=true)", False),
    ("ut", "ut(act=true)", True),
    ("ut", "ut(act=false)", False),
    ("ut", "transformer", False),
])
def test_model_identity_fills_in_defaults_and_the_rate(a, b, same):
    assert (spec.identity(spec.model(a), 1e-3) == spec.identity(spec.model(b), 1e-3)) is same


def test_a_directory_refuses_a_new_label_for_a_model_or_task_it_holds(tmp_path):
    """``out`` holds gru on parity: ``gru()`` or ``parity(supervise='last')`` would train the
    same runs again under a second name, so they are refused with nothing written; the label
    it holds, or a new model, still grow the directory. A label there that no longer parses
    (another rnnlab version) is left out of the comparison."""
    cfg = tiny(models=["gru"], tasks=["parity"], expected={})
    run_arena(cfg, tmp_path, quiet())
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for models, tasks, message in (
            (["gru()"], ["parity"], "--models: 'gru()' is the model 'gru' that"),
            (["gru"], ["parity(supervise='last')"], "--tasks: \"parity(supervise='last')\" is "
                                                    "the task 'parity' that")):
        with pytest.raises(ValueError, match=re.escape(message)):
            run_arena(tiny(models=models, tasks=tasks, expected={}), tmp_path, quiet())
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "models": ["gru", "nosuch(x=1)"]}))
    records = run_arena(tiny(models=["gru", "lstm"], tasks=["parity"], expected={}), tmp_path,
                        quiet())
    assert {r["model"] for r in records} == {"gru", "lstm"}
