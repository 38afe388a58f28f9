"""API errors speak the user's terms (issue 12, item 10): LM ids outside ``[0, vocab)``
(forward, streaming, generate), bad ``generate`` arguments, a state on another device;
``Recurrent`` and the drop-ins: state/input on another device, their own argument names in
messages; ``Recurrent('gru', 4, 8)``; unknown names suggest the closest; ``from_pretrained`` of
a missing directory or file. Also: engines name the state as their caller does (``state`` for
``Recurrent.step``), and the sequential engine's outputs for all-empty sequences backpropagate
zero gradients."""
from __future__ import annotations

import json

import pytest
import torch

import rnnlab
from rnnlab import cells, engines, tasks
from rnnlab import nn as rnn
from rnnlab.arena import spec
from rnnlab.cells.base import as_tuple
from rnnlab.models.lm import LM


# ---- engines: the caller's names; empty sequences ----------------------------------------------

def test_recurrent_step_errors_can_name_the_state():
    layer = rnnlab.Recurrent("lstm", input_size=3, hidden_size=4)
    x, bad = torch.randn(2, 5, 3), (torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"^state\[1\]: expected shape \(2, 4\)"):
        layer.engine(layer.cell, x, bad, state_name="state")
    with pytest.raises(ValueError, match=r"^x_chunk: expected feature size D=3"):
        layer.engine(layer.cell, x[..., :2], input_name="x_chunk")
    with pytest.raises(ValueError, match=r"^initial_state\[1\]: expected shape"):
        layer(x, bad)  # the default names stay the forward's


@pytest.mark.parametrize("name", ["gru", "lstm", "mamba", "s4d"])
def test_sequential_engine_backpropagates_through_all_empty_sequences(name):
    torch.manual_seed(0)
    cell = cells.get(name, 3, 4)
    x = torch.randn(2, 5, 3, requires_grad=True)
    y, h = engines.Sequential()(cell, x, lengths=torch.tensor([0, 0]))
    assert torch.equal(y, torch.zeros_like(y))
    (y.sum() + sum(t.real.sum() for t in as_tuple(h))).backward()  # raised: no grad_fn
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in cell.parameters())


# ---- item 10: clearer API errors -------------------------------------------------------------

@pytest.fixture
def lm():
    torch.manual_seed(0)
    return LM(10, 8, 1)


@pytest.mark.parametrize("bad", [10, -1])
def test_lm_ids_out_of_range_name_ids(lm, bad):
    ids = torch.tensor([[1, bad]])
    match = r"LM: ids must be token ids in \[0, vocab_size=10\), got min"
    with pytest.raises(ValueError, match=match):
        lm(ids)
    with pytest.raises(ValueError, match=match):
        lm(ids, lm.initial_state(1))
    with pytest.raises(ValueError, match=match):
        lm.generate(ids, 3)
    with pytest.raises(ValueError, match=match):
        lm.generate(ids, 0)


def test_lm_ids_shape_and_type(lm):
    with pytest.raises(ValueError, match=r"LM: ids must hold at least one token.*\(1, 0\)"):
        lm(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(TypeError, match=r"LM: ids must be an integer tensor \(B, T\), got list"):
        lm([[1, 2]])


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(temperature=float("nan")), ValueError, r"temperature must be a number, got nan"),
    (dict(temperature=float("inf")), ValueError, r"temperature must be in \[0, inf\) \(finite; "
                                                 r"0: greedy\), got inf"),
    (dict(temperature=-0.5), ValueError, r"temperature must be in \[0, inf\) .*got -0.5"),
    (dict(temperature="1"), TypeError, r"temperature must be a number, got '1'"),
    (dict(top_k=True), TypeError, r"top_k must be an int or None, got True"),
    (dict(top_k=0), ValueError, r"top_k must be an int >= 1 or None, got 0"),
    (dict(max_new_tokens=2.0), TypeError, r"max_new_tokens must be an int, got 2.0"),
    (dict(generator=5), TypeError, r"generator must be a torch.Generator or None, got int"),
])
def test_generate_arguments(lm, kwargs, err, match):
    with pytest.raises(err, match=rf"generate: {match}"):
        lm.generate(torch.tensor([[1, 2]]), **{"max_new_tokens": 2, **kwargs})


def test_state_on_another_device_is_named(lm):
    ids = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match=r"LM: state\[0\] is on meta but ids are on cpu"):
        lm(ids, lm.initial_state(1, "meta"))
    with pytest.raises(ValueError, match=r"LM: state\[0\] holds 2 sequences but ids hold B=1"):
        lm(ids, lm.initial_state(2))
    layer = rnnlab.Recurrent("lstm", input_size=3, hidden_size=4)
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"initial_state\[1\]: expected the device of x \(cpu\), "
                                         r"got meta"):
        layer(x, (torch.zeros(2, 4), torch.zeros(2, 4, device="meta")))
    with pytest.raises(ValueError, match=r"state\[0\]: expected the device of x"):
        layer.step(x, layer.initial_state(2, "meta"))
    with pytest.raises(ValueError, match=r"x: expected the device of the layer's parameters"):
        layer(x.to("meta"))


@pytest.mark.parametrize("call, err, match", [
    (lambda m: m(torch.randn(0, 2, 3)), ValueError,
     (r"GRU: input must have at least one time step \(T >= 1\); \(T, B, D\) shape expected, "
      r"got \(0, 2, 3\)")),
    (lambda m: m(torch.randn(4, 0, 3)), ValueError, r"GRU: input must have at least one sequence"),
    (lambda m: m(torch.randn(4, 2, 3), torch.zeros(1, 2, 5, dtype=torch.long)), TypeError,
     r"GRU: hx h_0 must have a floating dtype, got torch.int64"),
    (lambda m: m(torch.randn(4, 2, 3), torch.zeros(1, 2, 5, device="meta")), ValueError,
     r"GRU: hx h_0 is on meta but input is on cpu"),
    (lambda m: m(torch.randn(4, 2, 3, device="meta")), ValueError,
     r"GRU: input is on meta but the module's parameters are on cpu"),
])
def test_drop_in_errors_use_torch_names(call, err, match):
    with pytest.raises(err, match=match) as info:
        call(rnn.GRU(3, 5))
    assert "x:" not in str(info.value) and "initial_state" not in str(info.value)


def test_recurrent_with_positional_sizes_says_how_to_call_it():
    with pytest.raises(TypeError, match=r"engine \(the second argument\) must be .*got 4; give "
                                        r"the sizes by name: Recurrent\('gru', input_size=4, "
                                        r"hidden_size=8\)"):
        rnnlab.Recurrent("gru", 4, 8)


@pytest.mark.parametrize("call, match", [
    (lambda: cells.get("gur", 3, 4), r"cell: unknown name 'gur' \(did you mean 'gru'\?\)"),
    (lambda: tasks.get("partiy"), r"task: unknown name 'partiy' \(did you mean 'parity'\?\)"),
    (lambda: tasks.get("parity", supervize="all"), r"\(did you mean 'supervise'\?\)"),
    (lambda: spec.model("lsmt"), r"--models: unknown model 'lsmt' \(did you mean 'lstm'\?\)"),
    (lambda: spec.task("partiy"), r"--tasks: unknown task 'partiy' \(did you mean 'parity'\?\)"),
    (lambda: spec.cell_options("a=1", "mambaa"),
     r"--cell: unknown cell 'mambaa' \(did you mean 'mamba'\?\)"),
    (lambda: LM(10, 8, 1, cell="gur"), r"LM: cell must be .*\(did you mean 'gru'\?\)"),
])
def test_unknown_names_suggest_the_closest(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _pretrained_cases(tmp_path, lm):
    lm.save_pretrained(tmp_path / "full")
    (tmp_path / "empty").mkdir()
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text(json.dumps({"vocab_size": 10}))
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "config.json").write_text('{"vocab_')
    (tmp_path / "torn" / "model.safetensors").write_bytes(b"")
    return tmp_path


def test_from_pretrained_says_what_is_missing(tmp_path, lm):
    root = _pretrained_cases(tmp_path, lm)
    for path, match in [
        ("/no/such/dir", r"LM.from_pretrained: directory '/no/such/dir' does not exist"),
        (root / "nothing", r"directory '.*nothing' does not exist"),
        (root / "empty", r"directory '.*empty' has no config.json and no model.safetensors"),
        (root / "config_only", r"directory '.*config_only' has no model.safetensors"),
        (root / "full" / "config.json", r"config.json' is a file; expected the directory"),
        (root / "torn", r"torn/config.json' is not a JSON object"),
    ]:
        with pytest.raises(ValueError, match=match):
            LM.from_pretrained(path)
    with pytest.raises(OSError, match=r"does not exist"):  # what huggingface users catch
        LM.from_pretrained("/no/such/dir")
    back = LM.from_pretrained(root / "full")
    assert all(torch.equal(a, b) for a, b in zip(lm.state_dict().values(),
                                                 back.state_dict().values()))


def test_hf_wrappers_say_what_is_missing(tmp_path):
    pytest.importorskip("transformers")
    from rnnlab.hf import RnnlabConfig, RnnlabForCausalLM
    with pytest.raises(ValueError, match=r"RnnlabForCausalLM.from_pretrained: directory "
                                         r"'/no/such/dir' does not exist"):
        RnnlabForCausalLM.from_pretrained("/no/such/dir")
    with pytest.raises(ValueError, match=r"RnnlabConfig.from_pretrained: directory "
                                         r"'/no/such/dir' does not exist"):
        RnnlabConfig.from_pretrained("/no/such/dir")
    RnnlabConfig(vocab_size=10, d_model=8, n_layers=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"has no model.safetensors or .*pytorch_model.bin"):
        RnnlabForCausalLM.from_pretrained(tmp_path)
    model = RnnlabForCausalLM(RnnlabConfig(vocab_size=10, d_model=8, n_layers=1))
    with pytest.raises(ValueError, match=r"LM: ids must be token ids in \[0, vocab_size=10\)"):
        model(torch.tensor([[3, 10]]))
