"""The hidden-covariance score (rnnlab.tools.score) against hand-checkable 4x4 correlation
matrices, its guard, its model hooks, the bootstrap τ, and ``rnnlab score``."""
import json
import math

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import rnnlab
from rnnlab.models import LM, SequenceModel
from rnnlab.tools import score
from rnnlab.tools.score_cli import register

K = score.K


def f(lam: float) -> float:
    """One eigenvalue's term: the score is -Σ f(λ)."""
    return math.log(lam + K) + 1 / (lam + K)


def hadamard8() -> torch.Tensor:
    """The 8x8 Sylvester Hadamard matrix: rows 1..7 are zero-mean, mutually orthogonal, norm √8."""
    h = torch.tensor([[1.0]], dtype=torch.float64)
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)  # (2n, 2n)
    return h


def equicorrelated(rho: float) -> torch.Tensor:
    """4 rows x_i = √ρ c + √(1-ρ) e_i with c, e_1..e_4 orthonormal zero-mean: corrcoef is
    (1-ρ) I + ρ 11ᵀ, eigenvalues 1 + 3ρ (once) and 1 - ρ (three times)."""
    H = hadamard8()
    return math.sqrt(rho) * H[1] + math.sqrt(1 - rho) * H[2:6]  # (4, 8)


# ---- the math on hand-checkable 4x4 cases -----------------------------------------------------

def test_equicorrelated_4x4_by_hand():
    d = score.hidden_covariance_details(equicorrelated(0.5))
    assert torch.allclose(d.eigenvalues, torch.tensor([0.5, 0.5, 0.5, 2.5], dtype=torch.float64))
    expected = -(f(2.5) + 3 * f(0.5))  # = -5.23679...
    assert d.score == pytest.approx(expected, rel=1e-12)
    assert score.hidden_covariance_of_states(equicorrelated(0.5)) == pytest.approx(expected)
    assert d.per_unit == pytest.approx(expected / 4)
    assert (d.units, d.samples, d.dead_units) == (4, 8, 0)


def test_uncorrelated_rows_score_minus_four():
    X = hadamard8()[1:5] * torch.tensor([[1.0], [2.0], [0.1], [7.0]], dtype=torch.float64)
    assert score.hidden_covariance_of_states(X) == pytest.approx(-4 * f(1.0), rel=1e-12)


def test_duplicated_rows_collapse_and_cost_one_over_k():
    """Rows a, a, b, -b: C = [[1,1,0,0],[1,1,0,0],[0,0,1,-1],[0,0,-1,1]], eigenvalues 0,0,2,2."""
    H = hadamard8()
    X = torch.stack([H[1], H[1], H[2], -H[2]])  # (4, 8)
    d = score.hidden_covariance_details(X)
    assert torch.allclose(d.eigenvalues, torch.tensor([0.0, 0.0, 2.0, 2.0],
                                                      dtype=torch.float64), atol=1e-12)
    assert d.score == pytest.approx(-2 * f(0.0) - 2 * f(2.0), rel=1e-9)
    assert d.score < -1.9e5  # each collapsed direction costs about 1/k = 1e5


def test_higher_correlation_scores_lower():
    scores = [score.hidden_covariance_of_states(equicorrelated(r)) for r in (0.0, 0.3, 0.6, 0.9)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(-4 * f(1.0))


def test_invariant_to_row_scale_shift_sign_and_column_order():
    X = torch.randn(5, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    base = score.hidden_covariance_of_states(X)
    scale = torch.tensor([[3.0], [0.01], [-2.0], [1.0], [50.0]], dtype=torch.float64)
    moved = X * scale + torch.arange(5.0, dtype=torch.float64)[:, None]
    assert score.hidden_covariance_of_states(moved) == pytest.approx(base, rel=1e-10)
    assert score.hidden_covariance_of_states(X[:, torch.randperm(40)]) == pytest.approx(base)


def test_matches_numpy_corrcoef_and_eigvalsh():
    X = torch.randn(6, 30, generator=torch.Generator().manual_seed(1))
    lam = np.linalg.eigvalsh(np.corrcoef(X.double().numpy()))
    expected = -np.sum(np.log(lam + K) + 1 / (lam + K))
    assert score.hidden_covariance_of_states(X) == pytest.approx(expected, rel=1e-9)
    assert score.hidden_covariance_details(X).eigenvalues.dtype == torch.float64


def test_dead_unit_gets_the_identity_row_not_nan():
    """np.corrcoef gives NaN for a constant row; the guard makes it an uncorrelated unit."""
    H = hadamard8()
    X = torch.stack([H[1], H[2], H[3], torch.full((8,), 3.0, dtype=torch.float64)])
    with np.errstate(invalid="ignore", divide="ignore"):
        assert np.isnan(np.corrcoef(X.numpy())).any()  # what the guard is for
    d = score.hidden_covariance_details(X)
    assert d.dead_units == 1 and math.isfinite(d.score)
    assert d.score == pytest.approx(-4 * f(1.0))
    C, dead = score.correlation_matrix(X)
    assert torch.equal(C[3], torch.tensor([0.0, 0, 0, 1], dtype=torch.float64))
    assert dead.tolist() == [False, False, False, True]
    # every row constant: C = I
    assert score.hidden_covariance_details(torch.ones(3, 5)).dead_units == 3
    assert score.hidden_covariance_of_states(torch.ones(3, 5)) == pytest.approx(-3 * f(1.0))


def test_k_changes_the_regulariser():
    X = equicorrelated(0.5)
    k = 0.1
    expected = -(math.log(2.5 + k) + 1 / (2.5 + k) + 3 * (math.log(0.5 + k) + 1 / (0.5 + k)))
    assert score.hidden_covariance_of_states(X, k=k) == pytest.approx(expected)


@pytest.mark.parametrize("states, error, words", [
    ([[1.0, 2.0]], TypeError, ["states", "torch.Tensor", "list"]),
    (torch.ones(4), ValueError, ["(H, B*T)", "(4,)"]),
    (torch.ones(3, 1), ValueError, ["B*T >= 2", "(3, 1)"]),
    (torch.ones(3, 4, dtype=torch.int64), TypeError, ["real floating", "int64"]),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), ValueError, ["finite", "NaN"]),
])
def test_bad_states_are_refused(states, error, words):
    with pytest.raises(error) as info:
        score.hidden_covariance_of_states(states)
    for word in words:
        assert word in str(info.value)


def test_bad_k_is_refused():
    with pytest.raises(ValueError, match=r"k must be in \(0, inf\), got 0"):
        score.hidden_covariance_of_states(equicorrelated(0.5), k=0)


# ---- models: which hidden states, eval mode ---------------------------------------------------

def test_plain_recurrent_scores_its_outputs():
    torch.manual_seed(0)
    layer = rnnlab.Recurrent("lstm", input_size=3, hidden_size=5)
    x = torch.randn(4, 7, 3)
    with torch.no_grad():
        y, _ = layer(x)  # (B, T, H): LSTM's h, not c
    manual = score.hidden_covariance_of_states(y.reshape(28, 5).T)
    assert score.hidden_covariance(layer, x) == pytest.approx(manual, rel=1e-12)
    assert torch.equal(score.hidden_states(layer, x), y)
    # columns are (sample, time) pairs: column b*T + t is y[b, t]
    assert torch.equal(score.states_matrix(y)[:, 1 * 7 + 2], y[1, 2])


def test_sequence_model_layer_choice_and_modes_restored():
    torch.manual_seed(0)
    model = SequenceModel(6, 6, d_model=8, n_layers=2, mixer="gru")
    model.blocks[1].mlp_norm.eval()  # a module already in eval mode stays so
    seen = []
    model.blocks[0].mixer.rnn.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    x = torch.randint(0, 6, (3, 9))
    caught = {}

    def catch(i):
        def hook(module, args, out):
            caught.setdefault(i, out[0])  # returns None: the output is left as it is
        return hook

    for i in (0, 1):
        model.blocks[i].mixer.rnn.register_forward_hook(catch(i))
    s0, s1 = score.hidden_covariance(model, x, layer=0), score.hidden_covariance(model, x, 1)
    assert seen[0] is False  # the forward ran in eval mode
    assert model.training and model.blocks[0].training and not model.blocks[1].mlp_norm.training
    assert s0 == pytest.approx(score.hidden_covariance_of_states(score.states_matrix(caught[0])))
    assert s1 == pytest.approx(score.hidden_covariance_of_states(score.states_matrix(caught[1])))
    assert s0 != s1
    # a task.sample triple is accepted: its inputs are used
    assert score.hidden_covariance(model, (x, None, None)) == pytest.approx(s0)


def test_lm_and_published_block_are_scored():
    torch.manual_seed(0)
    ids = torch.randint(0, 11, (2, 12))
    assert math.isfinite(score.hidden_covariance(LM(11, d_model=8, n_layers=1, cell="gru"), ids))
    model = SequenceModel(5, 5, d_model=8, n_layers=1, mixer="mamba", block="published")
    y = score.hidden_states(model, torch.randint(0, 5, (2, 12)))
    assert y.shape == (2, 12, 16)  # Mamba's readout, width expand * D


def test_model_errors_name_the_argument():
    model = SequenceModel(5, 5, d_model=8, n_layers=2, mixer="gru")
    x = torch.randint(0, 5, (2, 6))
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 1\], got 2"):
        score.hidden_covariance(model, x, layer=2)
    with pytest.raises(ValueError, match="no rnnlab.Recurrent layer"):
        score.hidden_covariance(SequenceModel(5, 5, d_model=8, n_layers=1, mixer="attention"), x)
    with pytest.raises(TypeError, match="batch must be"):
        score.hidden_covariance(model, "tokens")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        score.hidden_covariance(lambda t: t, x)


# ---- Kendall τ with a bootstrap interval --------------------------------------------------------

def test_kendall_tau_bootstrap_extremes_and_errors():
    up = score.kendall_tau_bootstrap([1, 2, 3, 4, 5], [10, 20, 30, 40, 50], resamples=50)
    assert up["tau"] == pytest.approx(1.0) and up["ci"] == [pytest.approx(1.0)] * 2
    down = score.kendall_tau_bootstrap([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], resamples=50)
    assert down["tau"] == pytest.approx(-1.0) and down["ci"][1] == pytest.approx(-1.0)
    assert down["n"] == 5 and 0 < down["used"] <= 50
    rng = np.random.default_rng(0)
    noise = score.kendall_tau_bootstrap(rng.normal(size=60), rng.normal(size=60), resamples=200)
    assert noise["ci"][0] < 0 < noise["ci"][1]
    with pytest.raises(ValueError, match="one length >= 3"):
        score.kendall_tau_bootstrap([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="resamples must be an int >= 1, got 0"):
        score.kendall_tau_bootstrap([1, 2, 3], [1, 2, 3], resamples=0)


# ---- rnnlab score ------------------------------------------------------------------------------

def cli(args):
    app, eval_app = typer.Typer(), typer.Typer()
    app.add_typer(eval_app, name="eval")
    register(app, eval_app)
    return CliRunner().invoke(app, [str(a) for a in args])


TINY = ["score", "--d-model", "8", "--batch", "4", "--length", "6", "--task", "parity"]


def test_cli_help():
    result = cli(["score", "--help"])
    assert result.exit_code == 0
    for option in ("--models", "--task", "--layer", "--out"):
        assert option in result.output


def test_cli_ranks_and_writes_json(tmp_path):
    out = tmp_path / "score.json"
    result = cli(TINY + ["--models", "gru,lstm,mamba[-1,1]", "--out", out])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    rows = data["models"]
    assert sorted(r["model"] for r in rows) == ["gru", "lstm", "mamba[-1,1]"]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert data["length"] == 6 and data["batch"] == 4 and data["k"] == K
    assert rows[0]["model"] in result.output and "hidden-covariance" in result.output


@pytest.mark.parametrize("extra, words", [
    (["--models", "transformer"], ["--models", "transformer", "no recurrent layer"]),
    (["--models", "gru,gru"], ["--models", "more than once"]),
    (["--models", "gru,gru()"], ["--models", "'gru' and 'gru()' are the same model"]),
    (["--models", "mamba[0,1],mamba(allow_neg_eigval=false,block=published)"],
     ["--models", "same model"]),
    (["--models", "gla,gla(lr=1e-2)"], ["--models", "'gla' and 'gla(lr=1e-2)'", "same model"]),
    (["--task", "nosuch"], ["--task:", "unknown task"]),
    (["--layer", "1"], ["--layer", "<= 0", "got 1"]),
    (["--batch", "0"], ["--batch", ">= 1", "got 0"]),
    (["--length", "1"], ["--length", ">= 2", "got 1"]),
])
def test_cli_errors_name_the_option(tmp_path, extra, words):
    result = cli(TINY + ["--out", tmp_path / "s.json"] + extra)
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: ")
    for word in words:
        assert word in line
    assert not (tmp_path / "s.json").exists()


def test_cli_out_directory_refused(tmp_path):
    result = cli(TINY + ["--models", "gru", "--out", tmp_path])
    assert result.exit_code == 2 and "--out: expected a JSON file path" in result.output
