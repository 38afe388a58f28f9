"""SequenceModel: shapes, causality for every mixer, argument errors."""
import pytest
import torch

from rnnlab import cells
from rnnlab.models import SequenceModel
from rnnlab.models.attention import rotary

MIXERS = ["attention"] + cells.available()


@pytest.mark.parametrize("mixer", MIXERS)
def test_every_mixer_is_causal(mixer):
    """Outputs up to t do not depend on inputs after t (a model that peeks would ace every task)."""
    torch.manual_seed(0)
    model = SequenceModel(7, 3, d_model=16, n_layers=2, mixer=mixer).double()
    x = torch.randint(0, 7, (2, 11))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 7
    a, b = model(x), model(y)
    assert a.shape == (2, 11, 3)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_real_valued_inputs():
    model = SequenceModel(3, 4, d_model=8, n_layers=1, mixer="lru", kind="real", mlp=False)
    assert model(torch.randn(2, 5, 3)).shape == (2, 5, 4)


def test_rotary_keeps_norms_and_is_relative():
    q = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(rotary(q).norm(dim=-1), q.norm(dim=-1))
    # the score between positions i and j depends on i - j only
    v = torch.randn(8, dtype=torch.float64).expand(1, 1, 6, 8)
    s = rotary(v)[0, 0] @ rotary(v)[0, 0].T  # (6, 6)
    torch.testing.assert_close(s[1, 3], s[2, 4])


def test_bad_arguments():
    with pytest.raises(ValueError, match="mixer"):
        SequenceModel(4, 2, mixer="nope")
    with pytest.raises(ValueError, match="d_model"):
        SequenceModel(4, 2, d_model=0)
    with pytest.raises(ValueError, match="kind"):
        SequenceModel(4, 2, kind="image")
    with pytest.raises(ValueError, match="divisible by heads"):
        SequenceModel(4, 2, d_model=10, mixer="attention", heads=4)
    with pytest.raises(ValueError, match=r"mixer must be one of .*\(did you mean 'mamba'\?\)"):
        SequenceModel(4, 2, mixer="mamab")
    with pytest.raises(ValueError, match="attention takes heads and window"):
        SequenceModel(4, 2, mixer="attention", allow_neg_eigval=True)
    with pytest.raises(ValueError, match="'lstm' has none"):
        SequenceModel(4, 2, mixer="lstm", block="published")


def test_published_model_without_mlp_has_none_and_with_it_the_family_one():
    """``mlp=True`` is the block's own MLP: none in Mamba's, GELU x2 (the arena Transformer's,
    as fla's DeltaNet blocks take their Transformer's) in DeltaNet's; ``mlp=False`` drops it."""
    kinds = {(m, mlp): type(SequenceModel(4, 2, 16, 1, mixer=m, block="published",
                                          mlp=mlp).blocks[0].mlp).__name__
             for m in ("mamba", "deltanet", "slstm") for mlp in (True, False)}
    assert kinds == {("mamba", True): "NoneType", ("mamba", False): "NoneType",
                     ("deltanet", True): "Sequential", ("deltanet", False): "NoneType",
                     ("slstm", True): "GatedMLP", ("slstm", False): "NoneType"}


@pytest.mark.parametrize("mixer, block", [
    ("attention", "default"), ("gru", "default"), ("mamba", "default"), ("slstm", "default"),
    ("mamba", "published"), ("mamba2", "published"), ("gated_deltanet", "published"),
    ("deltaproduct", "published"), ("mlstm", "published"), ("slstm", "published")])
def test_sequence_model_streams(mixer, block):
    torch.manual_seed(0)
    model = SequenceModel(7, 3, d_model=16, n_layers=2, mixer=mixer, block=block).double()
    x = torch.randint(0, 7, (2, 13))
    state, outs = model.initial_state(2), []
    for chunk in x.split([4, 1, 8], dim=1):
        out, state = model(chunk, state)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), model(x))


@pytest.mark.parametrize("hidden", [0, -3, 2.5, True])
def test_gated_mlp_refuses_a_meaningless_width(hidden):
    from rnnlab.models.blocks import GatedMLP
    with pytest.raises(ValueError, match="GatedMLP: hidden must be an int >= 1"):
        GatedMLP(8, hidden)
