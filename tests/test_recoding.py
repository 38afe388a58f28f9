"""Recoding (rnnlab.nn.recoding) and its recipe (rnnlab train recoding): the step against
hand-computed gradients, step size 0 = the plain cell exactly, training through the recoding
step, the LM adapter, argument errors, one tiny run through the CLI."""
import json

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from rnnlab import cells
from rnnlab.cells.base import as_tuple
from rnnlab.nn.recoding import Recoding, entropy
from rnnlab.train import recoding as recipe
from rnnlab.train.recoding_cli import register

SIGNALS = ("entropy", "surprisal", "mc_dropout")


class Shift(nn.Module):
    """A linear 2-dim toy cell: ``h_t = h_{t-1} + u_t``, read out as ``h_t``."""

    def project(self, x):
        return x

    def step(self, u_t, h):
        return h + u_t

    def readout(self, h, u_t):
        return h

    def init_state(self, batch, dtype=torch.float32, device=None):
        return torch.zeros(batch, 2, dtype=dtype, device=device)


def toy_head():
    head = nn.Linear(2, 3, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.3], [-1.0, 1.5]]))
    return head


def plain_run(cell, head, x, h0):
    """The plain cell, step by step, with the head on every step: logits (B, T, V)."""
    h, out = h0, []
    for u in cell.project(x).unbind(1):
        h = cell.step(u, h)
        out.append(head(cell.readout(h, u)))
    return torch.stack(out, 1)


def grads(fn, tensors):
    out = fn()
    out.square().sum().backward()
    got = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out.detach(), got


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("signal", SIGNALS)
@pytest.mark.parametrize("create_graph", [True, False])
def test_step_size_zero_is_the_plain_cell_exactly(name, signal, create_graph):
    torch.manual_seed(0)
    cell, head = cells.get(name, 5, 7), nn.Linear(7, 11)
    x, y = torch.randn(3, 6, 5), torch.randint(0, 11, (3, 6))
    h0 = tuple(t.clone().requires_grad_() for t in as_tuple(cell.init_state(3)))
    h0 = h0 if len(h0) > 1 else h0[0]
    leaves = [*cell.parameters(), *head.parameters(), *as_tuple(h0)]
    want, want_g = grads(lambda: plain_run(cell, head, x, h0), leaves)
    rec = Recoding(cell, head, signal=signal, step_size=0.0, create_graph=create_graph)
    got, got_g = grads(lambda: rec(x, h0, targets=y)[0], leaves)
    assert torch.equal(got, want)
    for a, b in zip(got_g, want_g):
        assert torch.equal(a, b)


def test_one_step_is_the_hand_computed_gradient_step():
    """Linear-softmax: logits = W h, entropy and surprisal gradients in closed form."""
    head, alpha = toy_head(), 0.7
    u = torch.tensor([[0.3, -0.4], [1.0, 0.2]], dtype=torch.float64)
    h0 = torch.tensor([[0.1, 0.2], [-0.5, 0.4]], dtype=torch.float64)
    h, w = h0 + u, head.weight.detach()
    p = torch.softmax(h @ w.T, -1)
    ent = -(p * p.log()).sum(-1, keepdim=True)
    d_ent = (-p * (p.log() + ent)) @ w  # dH/dh = W^T dH/dz, dH/dz_i = -p_i (log p_i + H)
    target = torch.tensor([2, 0])
    d_sur = (p - nn.functional.one_hot(target, 3)) @ w  # d(-log p_y)/dh
    for signal, grad in (("entropy", d_ent), ("surprisal", d_sur)):
        rec = Recoding(Shift(), head, signal=signal, step_size=alpha)
        with torch.no_grad():
            logits, new = rec.step(u, h0, target)
        assert torch.allclose(new, h - alpha * grad, atol=1e-12)
        leaf = h.clone().requires_grad_()
        z = head(leaf)
        delta = entropy(z) if signal == "entropy" else nn.functional.cross_entropy(
            z, target, reduction="none")
        (auto,) = torch.autograd.grad(delta.sum(), leaf)
        assert torch.allclose(new, h - alpha * auto, atol=1e-12)
        # entropy: the prediction is re-decoded from the new state; surprisal: never
        shown = new if signal == "entropy" else h
        assert torch.allclose(logits, shown @ w.T, atol=1e-12)


def test_two_steps_repeat_the_gradient_step():
    head, alpha = toy_head(), 0.3
    u, h0 = torch.tensor([[0.3, -0.4]], dtype=torch.float64), torch.zeros(1, 2).double()
    one = Recoding(Shift(), head, step_size=alpha)
    with torch.no_grad():
        _, h1 = one.step(u, h0)
        _, h2 = one.step(torch.zeros_like(u), h1)  # Shift with u = 0: recode h1 again
        _, both = Recoding(Shift(), head, step_size=alpha, steps=2).step(u, h0)
    assert torch.allclose(both, h2, atol=1e-12)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_entropy_signal_lowers_the_entropy_for_a_small_step(name):
    torch.manual_seed(1)
    cell, head = cells.get(name, 4, 6), nn.Linear(6, 9)
    u, h0 = torch.randn(8, cell.project(torch.randn(1, 1, 4)).shape[-1]), cell.init_state(8)
    plain = Recoding(cell, head, step_size=0.0)
    rec = Recoding(cell, head, step_size=0.05)
    with torch.no_grad():
        before, _ = plain.step(u, h0)
        after, new = rec.step(u, h0)
    assert (entropy(after) < entropy(before)).all()
    # every state tensor is recoded: the LSTM's c too (through h = o * tanh(c))
    for a, b in zip(as_tuple(new), as_tuple(plain.step(u, h0)[1])):
        assert not torch.allclose(a, b)


def test_training_backpropagates_through_the_recoding_step():
    """create_graph=True: the loss gradient equals finite differences of the loss (the
    recoding gradient moves with the weights); create_graph=False drops that term."""
    torch.manual_seed(2)
    cell, head = cells.get("gru", 3, 4).double(), nn.Linear(4, 5).double()
    x, y = torch.randn(2, 4, 3, dtype=torch.float64), torch.randint(0, 5, (2, 4))

    def loss(create_graph=True):
        rec = Recoding(cell, head, signal="entropy", step_size=0.8, create_graph=create_graph)
        logits, _ = rec(x, cell.init_state(2, torch.float64))
        return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())

    weight = head.weight
    (second,) = torch.autograd.grad(loss(True), weight)
    (first,) = torch.autograd.grad(loss(False), weight)
    numeric = torch.zeros_like(weight)
    with torch.no_grad():
        for i in range(weight.numel()):
            w = weight.view(-1)
            w[i] += 1e-6
            up = loss()
            w[i] -= 2e-6
            down = loss()
            w[i] += 1e-6
            numeric.view(-1)[i] = (up - down) / 2e-6
    assert torch.allclose(second, numeric, atol=1e-6)
    assert not torch.allclose(first, numeric, atol=1e-4)


def test_inference_under_no_grad_matches_and_is_detached():
    torch.manual_seed(3)
    cell, head = cells.get("lstm", 3, 4), nn.Linear(4, 5)
    x = torch.randn(2, 5, 3)
    rec = Recoding(cell, head, step_size=0.5)
    want, _ = rec(x)
    with torch.no_grad():
        got, state = rec(x)
    assert not got.requires_grad and not any(t.requires_grad for t in state)
    assert torch.allclose(got, want, atol=1e-6)
    assert rec.last_delta_after < rec.last_delta


@pytest.mark.parametrize("kwargs, words", [
    (dict(signal="entropyy"), ["signal", "entropyy"]),
    (dict(step_size=-0.1), ["step_size", "-0.1"]),
    (dict(step_size=float("nan")), ["step_size"]),
    (dict(steps=0), ["steps", "0"]),
    (dict(dropout=1.0), ["dropout", "1.0"]),
    (dict(samples=1), ["samples", "1"]),
    (dict(create_graph="yes"), ["create_graph", "yes"]),
])
def test_bad_arguments_are_named(kwargs, words):
    with pytest.raises((ValueError, TypeError)) as err:
        Recoding(cells.get("gru", 2, 3), nn.Linear(3, 4), **kwargs)
    for word in words:
        assert word in str(err.value)


def test_bad_inputs_are_named():
    with pytest.raises(TypeError, match="cell must be a rnnlab cell.*Linear"):
        Recoding(nn.Linear(2, 3), nn.Linear(3, 4))
    rec = Recoding(cells.get("gru", 2, 3), nn.Linear(3, 4), signal="surprisal")
    with pytest.raises(ValueError, match="surprisal.*targets.*None"):
        rec(torch.randn(1, 2, 2))
    with pytest.raises(ValueError, match=r"targets must be \(B, T\) = \(1, 2\), got \(1, 3\)"):
        rec(torch.randn(1, 2, 2), targets=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must be a tensor \(B, T, ...\).*\(2,\)"):
        rec(torch.randn(2))


def test_lm_adapter_equals_the_lm_and_refuses_attention():
    torch.manual_seed(4)
    lm = recipe.LM(13, 8, 2, cell="lstm")
    ids = torch.randint(0, 13, (2, 7))
    rec = Recoding(recipe.LMCell(lm), recipe.LMHead(lm), step_size=0.0)
    with torch.no_grad():
        assert torch.allclose(rec(ids)[0], lm(ids), atol=1e-5)
    with pytest.raises(ValueError, match="block 1 is not a plain recurrent block"):
        recipe.LMCell(recipe.LM(13, 8, 2, cell="gru", attention_every=2))


def app():
    train = typer.Typer()
    register(train)
    train.command("other")(lambda: None)  # a group of two: `recoding` stays a subcommand
    return train


def test_cli_runs_end_to_end_at_toy_size(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app(), [
        "recoding", "--steps", "2", "--d-model", "8", "--length", "6", "--batch", "3",
        "--max-chars", "6000", "--eval-windows", "2", "--step-sizes", "0,0.5",
        "--samples", "2", "--plain-seeds", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["trained_with_recoding"]) == set(SIGNALS)
    assert len(metrics["plain_bpc_other_seeds"]) == 1
    assert set(metrics["test_time_sweep"]) == {*SIGNALS, "entropy, state only",
                                                "mc_dropout, state only"}
    # step size 0 at test time is the plain model (up to the engines' float differences)
    for rows in metrics["test_time_sweep"].values():
        assert rows[0]["bpc"] == pytest.approx(metrics["plain_bpc"], abs=1e-4)
    assert (out / "recoding.png").stat().st_size > 0


def test_cli_help_and_bad_options(tmp_path):
    runner = CliRunner()
    assert "--step-sizes" in runner.invoke(app(), ["recoding", "--help"]).output
    for args, words in ((["--signals", "entropy,foo"], ["--signals", "foo"]),
                        (["--step-sizes", "0.1,x"], ["--step-sizes", "x"]),
                        (["--step-size", "-1"], ["--step-size", "-1"])):
        result = runner.invoke(app(), ["recoding", *args, "--out", str(tmp_path / "o")])
        assert result.exit_code == 2
        for word in words:
            assert word in result.output
