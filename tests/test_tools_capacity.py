"""``rnnlab.tools.capacity`` / ``collapse`` and ``rnnlab eval capacity`` / ``collapse``: a passkey
sample built at chosen depths and decoded back, the metrics on oracle models, the state traces,
the CLI (help, a tiny run, errors)."""
from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from rnnlab import tasks
from rnnlab.arena import spec as specs
from rnnlab.tasks.base import generator
from rnnlab.tools import capacity as cap
from rnnlab.tools import collapse as col
from rnnlab.tools.capacity_cli import register

TASK = tasks.get("passkey")  # 5 digits; tokens 0-9, 10 marker, 11 query, 12.. filler


def test_a_passkey_sample_decodes_to_its_digits_and_needle_position():
    x, y, mask, starts = cap.passkey_batch(TASK, 32, generator(0, "test"),
                                           depths=[0.0, 0.5, 1.0])
    # valid marker starts are 0 .. 32 - 2*5 - 1 = 21: depth 0 -> 0, 0.5 -> 11, 1 -> 21
    assert starts.tolist() == [0, 11, 21]
    for row in range(3):
        digits, where = cap.decode_passkey(TASK, x[row])
        assert where == starts[row]
        assert digits == "".join(str(int(t)) for t in y[row][mask[row]])  # the scored answer
        assert x[row, -5] == TASK.QUERY and x[row, -4:].tolist() == y[row][mask[row]][:4].tolist()
        others = torch.cat([x[row, :where], x[row, where + 6:-5]])
        assert bool((others >= TASK.FILL).all())  # haystack only: no stray digit or marker


def test_a_hand_built_sample_decodes():
    x = torch.tensor([12, 13, 10, 3, 1, 4, 1, 5, 14, 15, 11, 3, 1, 4, 1])
    assert cap.decode_passkey(TASK, x) == ("31415", 2)
    with pytest.raises(ValueError, match="expected one marker token 10, found 0"):
        cap.decode_passkey(TASK, torch.full((15,), 12))


def test_paper_depths_and_longest_retrieved_by_hand():
    assert cap.paper_depths(4).tolist() == [0.125, 0.375, 0.625, 0.875]
    assert cap.longest_retrieved({64: 1.0, 128: 0.95, 256: 0.5, 512: 0.95}, 0.9) == 128
    assert cap.longest_retrieved({64: 0.2, 128: 1.0}, 0.9) == 0
    assert cap.longest_retrieved({64: 0.9}, 0.9) == 64


def test_bad_batches_name_the_argument():
    gen = generator(0, "test")
    with pytest.raises(ValueError, match=r"depth must be in \[0, 1\], got 1.5"):
        cap.passkey_batch(TASK, 32, gen, depths=[1.5])
    with pytest.raises(ValueError, match=r"start must be an int in \[0, 21\], got 22"):
        cap.passkey_batch(TASK, 32, gen, starts=[22])
    with pytest.raises(TypeError, match="must be the passkey task"):
        cap.passkey_batch(tasks.get("mqar"), 32, gen, depths=[0.5])


class Oracle(torch.nn.Module):
    """Answers each query digit from the needle if it lies within the last ``reach`` tokens,
    else a wrong digit: a stand-in for a model with a perfect (or a windowed) memory."""

    def __init__(self, reach: int = 10 ** 9):
        super().__init__()
        self.reach = reach

    def forward(self, x):
        B, T = x.shape
        out = torch.zeros(B, T, TASK.vocab_size)
        for b in range(B):
            digits, where = cap.decode_passkey(TASK, x[b])
            for i, d in enumerate(digits):
                right = T - where <= self.reach
                out[b, T - 5 + i, int(d) if right else (int(d) + 1) % 10] = 1.0
        return out


def test_accuracy_by_length_on_oracles():
    assert cap.accuracy_by_length(Oracle(), TASK, [32, 100], examples=6) == {32: 1.0, 100: 1.0}
    # reach 40: needles at depths (i + 0.5) / 4 of 100 tokens; only the last quarter is in reach
    assert cap.accuracy_by_length(Oracle(40), TASK, [100], examples=4) == {100: 0.25}


def test_recent_needles_stay_within_the_last_l_tokens():
    acc = col.recent_needle_accuracy(Oracle(reach=33), TASK, [40, 300, 1000], recent=32,
                                     examples=8)
    assert acc == {40: 1.0, 300: 1.0, 1000: 1.0}


def _model(cell="mamba2(state_size=4,head_dim=8)", **extra):
    cfg = cap.TrainConfig(length=16, steps=2, batch=4, d_model=16, n_layers=2)
    torch.manual_seed(0)
    return cap.build(specs.model(cell), TASK, cfg, **extra), cfg


def test_state_numbers_count_every_layer_without_the_window_ring():
    model, _ = _model()
    assert cap.state_numbers(model) == 2 * (2 * 8 * 4)  # layers x heads x P x N
    assert cap.state_numbers(_model(window=4)[0]) == 2 * (2 * 8 * 4)
    assert cap.state_numbers(_model("gru")[0]) == 2 * 16


def test_state_trace_matches_the_layer_state_and_calibrates_the_bound():
    model, cfg = _model()
    x = cap.passkey_batch(TASK, 40, generator(0, "test"), batch=2)[0]
    trace = col.state_trace(model, x, train_length=16)
    assert len(trace) == 2 and trace[0]["norm"].shape == (40,)
    seen = []
    layer = [m for m in model.modules() if hasattr(m, "cell")][0]
    hook = layer.register_forward_hook(lambda m, a, o: seen.append(o[1]))
    model(x[:, :25])
    hook.remove()
    assert torch.allclose(trace[0]["norm"][24], seen[0].flatten(1).norm(dim=-1).mean(), rtol=1e-4)
    assert (trace[0]["exploding"][:16] == 0).all()  # nothing exceeds its own training range
    bounds = col.calibrate(model, x[:, :16])
    assert len(bounds) == 2
    capped = col.mitigated_copy(specs.model("mamba2(state_size=4,head_dim=8)"), model, TASK, cfg,
                                dict(state_norm=bounds))
    assert [m.cell.state_norm for m in capped.modules() if hasattr(m, "cell")] == bounds
    same = col.state_trace(capped, x, train_length=16)
    # the bound is the largest head norm within L: inside L the capped model is the plain one
    assert torch.allclose(same[0]["norm"][:16], trace[0]["norm"][:16], rtol=1e-5)


def _app():
    app, ev = typer.Typer(), typer.Typer()
    app.add_typer(ev, name="eval")
    register(app, ev)
    return app


@pytest.mark.parametrize("command", ["capacity", "collapse"])
def test_cli_help(command):
    result = CliRunner().invoke(_app(), ["eval", command, "--help"])
    assert result.exit_code == 0 and "--train-length" in result.output


def test_cli_capacity_tiny_run_writes_json_and_png(tmp_path):
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    result = CliRunner().invoke(_app(), [
        "eval", "capacity", "--models", "mamba2(state_size=2,head_dim=8),gru", "--steps", "2",
        "--train-length", "16", "--lengths", "16,32", "--examples", "2", "--d-model", "16",
        "--out", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [m["label"] for m in data["models"]] == ["mamba2(state_size=2,head_dim=8)", "gru"]
    assert set(data["models"][0]["scores"]) == {"16", "32"} and png.stat().st_size > 0


def test_cli_collapse_tiny_run(tmp_path):
    result = CliRunner().invoke(_app(), [
        "eval", "collapse", "--models", "mamba2(state_size=2,head_dim=8)", "--steps", "1",
        "--train-length", "16", "--lengths", "16,40", "--trace-length", "40", "--examples", "2",
        "--d-model", "16", "--out", str(tmp_path / "c.json"),
        "--plot-prefix", str(tmp_path / "col")])
    assert result.exit_code == 0, result.output
    runs = json.loads((tmp_path / "c.json").read_text())["models"][0]["runs"]
    assert list(runs) == ["plain", "decay_scale=1.25", "decay_scale=2",
                          list(runs)[3],
                          "window=16"]
    assert (tmp_path / "col_mamba2.png").exists()


@pytest.mark.parametrize("args, message", [
    (["capacity", "--threshold", "2"], "--threshold: must be in [0, 1], got 2"),
    (["capacity", "--lengths", "8,x"], "--lengths: expected comma-separated integers"),
    (["capacity", "--train-length", "5"], "--train-length"),
    (["capacity", "--models", "attention"], "--models"),
    (["collapse", "--models", "gru"], "the mitigations are options of mamba2, gla, mamba"),
    (["collapse", "--decay-scale", "1,0"], "--decay-scale: expected comma-separated numbers > 0"),
])
def test_cli_errors_are_one_line_and_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(_app(), ["eval", *args, "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
