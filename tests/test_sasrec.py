"""SASRec (models/sasrec.py), its data (train/recsys_data.py) and recipe (train/sasrec.py,
``rnnlab train sasrec``): hand-checked loading, splitting, rankings and the Bayes ceiling."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from rnnlab.models.sasrec import SASRec
from rnnlab.train import recsys_data as data
from rnnlab.train.sasrec import evaluate, hit_ndcg, pad_right, rank_of, train_negatives
from rnnlab.train.sasrec_cli import register

TINY = Path(__file__).parent / "data" / "ml1m_tiny_ratings.dat"


# ---- data ---------------------------------------------------------------------------------------

def test_load_ratings_sorts_by_time_and_renumbers():
    inter = data.load_ratings(TINY)
    # by hand: each user's movies in timestamp order, ids in order of first appearance
    assert inter.sequences == [[1, 2, 3, 4, 5], [2, 1, 6, 7], [8, 9], [10, 11, 4, 3, 12],
                               [2, 5, 6, 7]]
    assert inter.n_items == 12
    assert inter.item_ids[:5] == [3408, 1193, 914, 661, 2355]


@pytest.mark.parametrize("line", ["1::2::3", "1::x::3::4", "1:2:3:4"])
def test_load_ratings_names_the_malformed_line(tmp_path, line):
    path = tmp_path / "ratings.dat"
    path.write_text(f"1::1193::5::978300760\n{line}\n")
    with pytest.raises(ValueError, match=r"ratings\.dat:2: expected 'UserID::MovieID"):
        data.load_ratings(path)


def test_leave_one_out():
    split = data.leave_one_out(data.load_ratings(TINY).sequences)
    assert split.train[0] == [1, 2, 3] and split.valid[0] == 4 and split.test[0] == 5
    assert split.train[2] == [8, 9] and split.valid[2] == 0 and split.test[2] == 0
    assert split.users("test") == [0, 1, 3, 4]
    assert split.history(0, "valid") == [1, 2, 3]
    assert split.history(0, "test") == [1, 2, 3, 4]


def tiny_graph(noise):
    weights = np.zeros((4, 4))
    weights[1, 2:] = [0.75, 0.25]  # item 1 -> 2 (3/4) or 3 (1/4)
    weights[2, 3] = weights[3, 1] = 1.0
    return data.ItemGraph(weights, noise)


def test_best_hit_rate_on_a_hand_checked_graph():
    split = data.Split(train=[[1]], valid=[2], test=[3])
    assert data.best_hit_rate(tiny_graph(0.0), split, "valid", k=1) == pytest.approx(0.75)
    # noise 0.2: item 2 gets 0.8 * 3/4 + 0.2/3, item 3 0.8 * 1/4 + 0.2/3, item 1 is visited
    assert data.best_hit_rate(tiny_graph(0.2), split, "valid", k=1) == pytest.approx(5 / 7)
    assert data.best_hit_rate(tiny_graph(0.2), split, "valid", k=2) == pytest.approx(1.0)
    # after 1 and 2 only 3 is left
    assert data.best_hit_rate(tiny_graph(0.2), split, "test", k=1) == pytest.approx(1.0)


def test_synthetic_walks_are_seeded_and_never_revisit():
    a, graph = data.synthetic(n_users=20, n_items=30, length=10, degree=4, noise=0.1, seed=3)
    b, _ = data.synthetic(n_users=20, n_items=30, length=10, degree=4, noise=0.1, seed=3)
    assert a.sequences == b.sequences
    for seq in a.sequences:
        assert 5 <= len(seq) <= 10 and len(set(seq)) == len(seq)
        assert all(1 <= i <= 30 for i in seq)
    assert np.allclose(graph.weights[1:].sum(1), 1.0)
    assert (graph.weights[1:] > 0).sum(1).tolist() == [4] * 30


def test_synthetic_errors_name_the_argument():
    with pytest.raises(ValueError, match="degree"):
        data.ItemGraph.ring(5, 5, 0.1, 0)
    with pytest.raises(ValueError, match="noise"):
        data.ItemGraph(np.eye(3), 1.5)


# ---- metrics ------------------------------------------------------------------------------------

def test_metrics_on_a_hand_computed_ranking():
    scores = np.array([0.0, 0.9, 0.1, 0.5, 0.7, 0.3])
    assert rank_of(scores, 3, np.array([1, 2, 4, 5])) == 2  # items 1 and 4 above
    assert rank_of(scores, 1, np.array([2, 3, 4, 5])) == 0
    assert rank_of(np.ones(6), 3, np.array([1, 2, 4, 5])) == 4  # ties rank against the target
    hr, ndcg = hit_ndcg([0, 2, 10, 9])
    assert hr == pytest.approx(3 / 4)
    assert ndcg == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(11)) / 4)


def test_evaluate_excludes_the_history_in_full_ranking():
    split = data.Split(train=[[1, 2]], valid=[3], test=[4])
    scores = torch.tensor([[0.0, 9.0, 8.0, 7.0, 1.0, 2.0, 0.5]])  # the history scores highest
    negatives = {0: np.array([5, 6])}
    result = evaluate(lambda histories: scores, split, "test", 6, negatives)
    # full: candidates 5 and 6 (1, 2, 3 are history): only item 5 above -> rank 1
    assert result["hr@10_full"] == 1.0
    assert result["ndcg@10_full"] == pytest.approx(1 / math.log2(3), abs=1e-4)
    assert result["ndcg@10_sampled"] == pytest.approx(1 / math.log2(3), abs=1e-4)


def test_train_negatives_avoid_seen_items():
    seen = torch.zeros(3, 11, dtype=torch.bool)
    seen[:, 1:9] = True  # only 9 and 10 are allowed
    neg = train_negatives(torch.ones(3, 20, dtype=torch.long), seen,
                          torch.Generator().manual_seed(0))
    assert set(neg.flatten().tolist()) <= {9, 10}


# ---- the model ----------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", ["attention", "gru"])
def test_encoder_is_causal_and_ignores_right_padding(encoder):
    torch.manual_seed(0)
    model = SASRec(20, d_model=8, n_layers=2, max_len=6, encoder=encoder, heads=1,
                   dropout=0.0).eval()
    items = torch.tensor([[3, 4, 5, 6, 7, 8]])
    changed = items.clone()
    changed[0, 4:] = torch.tensor([1, 2])
    with torch.no_grad():
        h, h2 = model.encode(items), model.encode(changed)
        assert torch.allclose(h[:, :4], h2[:, :4], atol=1e-6)
        assert not torch.allclose(h[:, 4:], h2[:, 4:])
        short = model.last(pad_right([[3, 4, 5], [3, 4, 5, 6, 7]], 6))
        assert torch.allclose(short[0], h[0, 2], atol=1e-6)
        assert torch.allclose(short[1], h[0, 4], atol=1e-6)
        assert model.score_all(short).shape == (2, 21)
        assert torch.allclose(model.score(short, torch.tensor([[5], [9]]))[:, 0],
                              model.score_all(short)[[0, 1], [5, 9]], atol=1e-5)


def test_model_errors_name_the_argument():
    with pytest.raises(ValueError, match="encoder"):
        SASRec(10, encoder="nope")
    with pytest.raises(ValueError, match="max_len=3"):
        SASRec(10, d_model=8, max_len=3).encode(torch.ones(1, 4, dtype=torch.long))


# ---- the command --------------------------------------------------------------------------------

def app():
    train_app = typer.Typer()
    register(train_app)
    root = typer.Typer()
    root.add_typer(train_app, name="train")
    return root


def test_cli_help():
    result = CliRunner().invoke(app(), ["train", "sasrec", "--help"])
    assert result.exit_code == 0 and "--encoders" in result.output


@pytest.mark.parametrize("args, option", [(["--encoders", "grux"], "--encoders"),
                                          (["--data", "nowhere.dat"], "--data"),
                                          (["--epochs", "0"], "--epochs"),
                                          (["--noise", "2"], "--noise")])
def test_cli_errors_name_the_option(tmp_path, args, option):
    result = CliRunner().invoke(app(), ["train", "sasrec", "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert option in result.output


def test_cli_end_to_end_on_the_tiny_ratings_file(tmp_path):
    result = CliRunner().invoke(app(), ["train", "sasrec", "--data", str(TINY), "--encoders",
                                        "attention,gru", "--epochs", "2", "--eval-every", "1",
                                        "--d-model", "8", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "results.json").read_text())
    assert [r["encoder"] for r in out["rows"]] == ["attention", "gru"]
    assert out["items"] == 12 and "oracle" not in out
    assert (tmp_path / "sasrec.png").stat().st_size > 0


def test_cli_end_to_end_synthetic_with_the_oracle(tmp_path):
    result = CliRunner().invoke(app(), ["train", "sasrec", "--encoders", "gla", "--users", "40",
                                        "--items", "50", "--length", "12", "--degree", "4",
                                        "--epochs", "2", "--d-model", "8", "--out",
                                        str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "results.json").read_text())
    oracle = out["oracle"]
    # the generator's own ranking is the best there is: far above an untrained model
    assert oracle["hr@10_full"] > out["rows"][0]["test"]["hr@10_full"]
    assert 0 < oracle["best_hr@10_full_expected"] <= 1
