"""PV-RNN: the Gaussian KL and the loss by hand, the MTRNN step (τ = 1 is a plain RNN), streaming
equals one run, error regression (frozen weights, a lower window loss), the trajectory
generator, argument errors, and the recipe end to end through its CLI at toy size."""
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from rnnlab.models.pvrnn import PVRNN, AdaptiveVariables, MTRNNLayer, gaussian_kl, loss
from rnnlab.models.pvrnn_regression import error_regression, prior_prediction
from rnnlab.train import trajectories as tj
from rnnlab.train.pvrnn_cli import register

from .helpers import command_group


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return PVRNN(2, **{"d_sizes": (5, 3), "z_sizes": (2, 1), "taus": (2.0, 4.0), **kw})


def window(model, batch, steps, seed=1, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(batch, steps, z, generator=g),
             scale * torch.randn(batch, steps, z, generator=g)) for z in model.z_sizes]


def test_gaussian_kl_by_hand():
    # KL(N(0.5, 1) ‖ N(0, 2²)) = log 2 + (1 + 0.25) / 8 − 1/2
    kl = gaussian_kl(torch.tensor(0.5), torch.tensor(1.0), torch.tensor(0.0), torch.tensor(2.0))
    assert kl.item() == pytest.approx(math.log(2) + 1.25 / 8 - 0.5, abs=1e-7)
    assert gaussian_kl(torch.tensor(0.3), torch.tensor(0.7), torch.tensor(0.3),
                       torch.tensor(0.7)).item() == pytest.approx(0.0, abs=1e-7)


def test_model_kl_term_by_hand():
    """First step: prior N(0, I), posterior N(tanh A^μ, exp A^σ); second step: the prior from
    d_1 through the layer's heads, checked against torch.distributions."""
    model = PVRNN(1, d_sizes=(4,), z_sizes=(2,), taus=(3.0,))
    a_mu = torch.tensor([[[0.3, -0.2], [0.1, 0.4]]])
    a_sigma = torch.tensor([[[0.1, -0.4], [-0.2, 0.3]]])
    run = model([(a_mu, a_sigma)], noise="mean")
    by_hand = sum(-s + (math.exp(2 * s) + math.tanh(m) ** 2) / 2 - 0.5
                  for m, s in zip([0.3, -0.2], [0.1, -0.4])) / 2
    assert run.kl[0][0, 0].item() == pytest.approx(by_hand, rel=1e-5)
    first = model([(a_mu[:, :1], a_sigma[:, :1])], noise="mean").state
    layer = model.layers[0]
    mu_p, sigma_p = torch.tanh(layer.prior_mu(first.d[0])), torch.exp(layer.prior_sigma(first.d[0]))
    q = torch.distributions.Normal(torch.tanh(a_mu[:, 1]), torch.exp(a_sigma[:, 1]))
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(mu_p, sigma_p))
    assert run.kl[0][0, 1].item() == pytest.approx(expected.mean().item(), rel=1e-5)


def test_loss_with_w_zero_is_the_prediction_error():
    model = tiny()
    a = window(model, 3, 6)
    x = torch.randn(3, 6, 2)
    run = model(a, noise="mean")
    value, parts = loss(run, x, 0.0)
    prediction = ((run.out - x) ** 2).sum(-1).mean()
    assert torch.equal(value, prediction) and torch.equal(parts["prediction"], prediction)
    weighted, parts = loss(run, x, [0.5, 2.0])
    assert weighted.item() == pytest.approx(
        prediction.item() + 0.5 * run.kl[0].mean().item() + 2.0 * run.kl[1].mean().item(),
        rel=1e-6)
    assert all(k > 0 for k in parts["kl"])


def test_mtrnn_step_with_tau_one_is_a_plain_rnn_step():
    torch.manual_seed(0)
    layer = MTRNNLayer(d_size=5, z_size=2, top_size=3, tau=1.0)
    cell = torch.nn.RNNCell(5, 5)  # input = [z, d_top]
    with torch.no_grad():
        cell.weight_ih.copy_(torch.cat([layer.w_zd.weight, layer.w_top.weight], 1))
        cell.weight_hh.copy_(layer.w_dd.weight)
        cell.bias_ih.copy_(layer.w_dd.bias)
        cell.bias_hh.zero_()
    z, top, d = torch.randn(4, 2), torch.randn(4, 3), torch.tanh(torch.randn(4, 5))
    u, d_new = layer.update(torch.randn(4, 5), d, layer.external(z, top))  # old u is forgotten
    torch.testing.assert_close(d_new, cell(torch.cat([z, top], 1), d))
    torch.testing.assert_close(u, torch.atanh(d_new), rtol=1e-4, atol=1e-5)


def test_mtrnn_leak_by_hand():
    torch.manual_seed(0)
    layer = MTRNNLayer(d_size=3, z_size=1, top_size=0, tau=4.0)
    u0, d0, z = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 1)
    u, d = layer.update(u0, d0, layer.external(z, None))
    drive = d0 @ layer.w_dd.weight.T + layer.w_dd.bias + z @ layer.w_zd.weight.T
    torch.testing.assert_close(u, 0.75 * u0 + drive / 4)
    torch.testing.assert_close(d, torch.tanh(u))


def test_streaming_in_two_parts_equals_one_run():
    model = tiny()
    a = window(model, 2, 7)
    whole = model(a, noise="mean")
    head = model([(m[:, :3], s[:, :3]) for m, s in a], noise="mean")
    tail = model([(m[:, 3:], s[:, 3:]) for m, s in a], state=head.state, noise="mean")
    torch.testing.assert_close(torch.cat([head.out, tail.out], 1), whole.out)
    for k in range(2):
        torch.testing.assert_close(torch.cat([head.kl[k], tail.kl[k]], 1), whole.kl[k])
        torch.testing.assert_close(tail.state.u[k], whole.state.u[k])


def test_prior_roll_streams_and_starts_like_the_posterior_path():
    """Rolling the prior in two parts equals one roll; at the first step a zero A (posterior
    N(0, I), the first prior) gives the prior roll's output and a zero KL."""
    model = tiny()
    whole = model(None, steps=6, batch=2, noise="mean")
    head = model(None, steps=2, batch=2, noise="mean")
    tail = model(None, steps=4, state=head.state, noise="mean")
    torch.testing.assert_close(torch.cat([head.out, tail.out], 1), whole.out)
    a = [(torch.zeros(2, 1, z), torch.zeros(2, 1, z)) for z in model.z_sizes]
    first = model(a, noise="mean")
    torch.testing.assert_close(first.out, whole.out[:, :1])
    assert all(k.abs().max() < 1e-6 for k in first.kl)
    sampled = model(None, steps=6, batch=2, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(sampled.out, whole.out)  # "sample" draws z, "mean" does not


def test_error_regression_freezes_the_weights_and_lowers_the_window_loss():
    model = tiny()
    x = tj.make_trajectories(3, cycles=2, period=10, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    er = error_regression(model, x["x"], 0.01, window=8, steps=10, lr=0.1, horizon=4, stride=4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert er["times"] == [8, 12, 16]
    assert er["predictions"].shape == (3, 3, 4, 2)
    assert all(h[-1] < h[0] for h in er["window_loss"])
    prior = prior_prediction(model, x["x"], er["times"], 4)
    assert prior["predictions"].shape == er["predictions"].shape
    torch.testing.assert_close(er["targets"][1], x["x"][:, 12:16])


def test_error_regression_without_steps_is_the_prior_alone():
    """K = 0: each window starts at the prior that predicted it, so every prediction is the
    prior's roll from the sequence start; any gain of error regression comes from its steps."""
    model = tiny()
    x = torch.randn(2, 24, 2)
    er = error_regression(model, x, 0.1, window=6, steps=0, horizon=5, stride=3)
    prior = prior_prediction(model, x, er["times"], 5)
    torch.testing.assert_close(er["predictions"], prior["predictions"], rtol=1e-4, atol=1e-5)
    last = error_regression(model, x, 0.1, window=6, steps=0, horizon=5, stride=3,
                            new_steps="last")
    assert not torch.allclose(last["predictions"], prior["predictions"], atol=1e-3)


def test_adaptive_variables_start_at_the_unit_gaussian():
    post = AdaptiveVariables([2, 1], n=4, steps=5)
    w = post.window(torch.tensor([1, 3]))
    assert [tuple(m.shape) for m, _ in w] == [(2, 5, 2), (2, 5, 1)]
    assert all(not m.detach().any() and not s.detach().any() for m, s in w)


def test_trajectories_are_continuous_seeded_and_switch_as_asked():
    g = torch.Generator
    data = tj.make_trajectories(6, cycles=5, period=12, switch_prob=1.0, noise=0.0,
                                generator=g().manual_seed(3))
    clean, ids = data["clean"], data["primitive"]
    assert clean.shape == (6, 60, 2) and torch.equal(data["x"], clean)
    ends = clean[:, 11::12]  # every cycle ends at home (0, 0)
    assert ends.abs().max() < 1e-6
    assert clean.abs().max() <= 1.0 + 1e-6
    moves = torch.diff(clean, dim=1).norm(dim=-1)  # (n, T - 1)
    at_switch = moves[:, 11::12]  # from a cycle's last step to the next one's first
    inside = torch.cat([moves[:, c * 12:c * 12 + 11] for c in range(5)], 1)
    assert at_switch.max() <= inside.max() + 1e-6  # no jumps at the switches
    assert (ids[:, 12::12] != ids[:, 11:-1:12]).all()  # switch_prob 1: always a new one
    same = tj.make_trajectories(6, cycles=5, period=12, switch_prob=0.0,
                                generator=g().manual_seed(3))["primitive"]
    assert (same == same[:, :1]).all()
    again = tj.make_trajectories(6, cycles=5, period=12, generator=g().manual_seed(3))
    torch.testing.assert_close(again["x"], tj.make_trajectories(
        6, cycles=5, period=12, generator=g().manual_seed(3))["x"])


@pytest.mark.parametrize("call, words", [
    (lambda: PVRNN(2, d_sizes=(4,), z_sizes=(1,), taus=(0.5,)), ["taus", "[1, inf)", "0.5"]),
    (lambda: PVRNN(2, d_sizes=(4, 3), z_sizes=(1,), taus=(2.0,)), ["z_sizes", "2, 1 and 1"]),
    (lambda: PVRNN(0), ["output_size", ">= 1", "0"]),
    (lambda: loss(tiny()(None, steps=2), torch.zeros(1, 2, 2), -0.1), ["w", "0.1"]),
    (lambda: loss(tiny()(None, steps=2), torch.zeros(1, 2, 2), [0.1]), ["w", "2", "1"]),
    (lambda: loss(tiny()(None, steps=2), torch.zeros(1, 3, 2), 0.1), ["target", "(1, 3, 2)"]),
    (lambda: tiny()([(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))] * 2), ["posterior[1]",
                                                                           "(1, 2, 1)"]),
    (lambda: tiny()(None), ["steps", "None"]),
    (lambda: tiny()(None, steps=2, noise="noisy"), ["noise", "noisy"]),
    (lambda: error_regression(tiny(), torch.zeros(1, 10, 2), 0.1, window=8, horizon=4,
                              stride=4),
     ["window + horizon", "10", "8 + 4"]),
    (lambda: error_regression(tiny(), torch.zeros(1, 30, 2), 0.1, window=8, stride=9),
     ["stride", "[1, 8]", "9"]),
    (lambda: error_regression(tiny(), torch.zeros(1, 30, 2), 0.1, lr=0.0), ["lr", "0.0"]),
    (lambda: error_regression(tiny(), torch.zeros(1, 30, 2), 0.1, new_steps="next"),
     ["new_steps", "'prior', 'last'", "next"]),
    (lambda: error_regression(tiny(), torch.zeros(30, 2), 0.1), ["x", "(B, T, O)", "(30, 2)"]),
    (lambda: tj.make_trajectories(2, switch_prob=1.5), ["switch_prob", "1.5"]),
    (lambda: tj.make_trajectories(2, period=2), ["period", ">= 3", "2"]),
])
def test_bad_arguments_are_named(call, words):
    with pytest.raises(ValueError) as err:
        call()
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def cli():
    return command_group(register)


def test_cli_help_and_bad_options():
    result = CliRunner().invoke(cli(), ["pvrnn", "--help"])
    assert result.exit_code == 0 and "--er-window" in result.output
    result = CliRunner().invoke(cli(), ["pvrnn", "--ws", "0.1,x"])
    assert result.exit_code == 2 and "--ws" in result.output
    result = CliRunner().invoke(cli(), ["pvrnn", "--taus", "0.5,2"])
    assert result.exit_code == 2 and "taus" in result.output


def test_recipe_end_to_end_at_toy_size(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli(), [
        "pvrnn", "--ws", "0.001,0.1", "--d-sizes", "6,4", "--z-sizes", "1,1",
        "--train-sequences", "3", "--test-sequences", "2", "--cycles", "2", "--period", "8",
        "--steps", "3", "--er-window", "6", "--er-steps", "2", "--horizon", "4",
        "--stride", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"0.001", "0.1"}
    for r in report["results"].values():
        assert r["er_prediction_error"] >= 0 and r["prior_prediction_error"] >= 0
        assert len(r["train_kl"]) == 2
    assert report["best_w"] in report["results"]
    assert (out / "pvrnn.png").stat().st_size > 1000
