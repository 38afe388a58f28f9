"""A finished arena run's model comes back with the weights its run trained, in eval mode; a run
without a checkpoint gives None, and a directory without config.json a clear error."""
import pytest
import torch
from safetensors.torch import load_file

from rnnlab.arena import run_arena, spec
from rnnlab.arena.runs import run_dir
from rnnlab.arena.trained import config, trained

from .test_arena import quiet, tiny


def test_trained_model_has_the_checkpoints_weights_and_the_runs_task(tmp_path):
    cfg = tiny(models=["gru", "ut(max_steps=2)"], tasks=["tomita(grammar=5)"], expected={},
               early_stop=None)
    run_arena(cfg, tmp_path, quiet())
    assert config(tmp_path).d_model == cfg.d_model and config(tmp_path).steps == cfg.steps
    for label in cfg.models:
        model, task = trained(tmp_path, label, "tomita(grammar=5)", 0)
        assert not model.training and task == spec.task("tomita(grammar=5)")[1]
        saved = load_file(str(run_dir(tmp_path, spec.model(label), "tomita(grammar=5)", 0)
                              / "checkpoint.safetensors"))
        state = model.state_dict()
        assert state and all(torch.equal(v, saved["model." + k]) for k, v in state.items())
    assert trained(tmp_path, "gru", "tomita(grammar=5)", 1) is None  # seed 1 never ran
    assert trained(tmp_path, "lstm", "tomita(grammar=5)", 0) is None


def test_a_directory_without_config_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"out: .*config\.json does not exist"):
        config(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        trained(tmp_path, "gru", "parity", 0)
    (tmp_path / "config.json").write_text('{"models": ["gru"')  # a torn write
    with pytest.raises(ValueError, match=r"out: .*config\.json is not JSON"):
        config(tmp_path)
