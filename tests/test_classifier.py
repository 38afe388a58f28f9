"""Classifier: shapes, padding invariance (both directions), what each position sees,
save/load, argument errors."""
import pytest
import torch

from rnnlab.models.classifier import Classifier, reverse_within

V, C = 13, 4


def _model(**kw):
    torch.manual_seed(0)
    return Classifier(V, C, **{"d_model": 16, "n_layers": 2, **kw}).double().eval()


def test_reverse_within_reverses_the_valid_part_only():
    x = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 0, 0], [7, 0, 0, 0, 0]])
    lengths = torch.tensor([5, 3, 1])
    assert reverse_within(x, lengths).tolist() == [[5, 4, 3, 2, 1], [3, 2, 1, 0, 0],
                                                   [7, 0, 0, 0, 0]]
    feats = torch.randn(3, 5, 2)
    assert reverse_within(reverse_within(feats, lengths), lengths).equal(feats)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pooling", ["mean", "last", "max"])
def test_shapes(bidirectional, pooling):
    model = _model(bidirectional=bidirectional, pooling=pooling)
    ids = torch.randint(0, V, (3, 7))
    assert model(ids).shape == (3, C)
    assert model(ids, torch.tensor([7, 1, 4])).shape == (3, C)
    assert model.encode(ids).shape == (3, 7, 16)


@pytest.mark.parametrize("options", [
    dict(bidirectional=False, pooling="mean"), dict(bidirectional=False, pooling="last"),
    dict(bidirectional=True, pooling="mean"), dict(bidirectional=True, pooling="last"),
    dict(bidirectional=True, pooling="max"),
    dict(bidirectional=True, cell="mamba", conv=3, fsmn=2),
    dict(bidirectional=True, cell="deltanet"), dict(bidirectional=True, cell="attention"),
    dict(bidirectional=True, attention_every=2, dynamic_conv=True),
    dict(bidirectional=True, cell="mamba", block="published"),
    dict(bidirectional=True, cell="mlstm", block="published", attention_every=2),
])
def test_padding_has_no_influence(options):
    model = _model(**options)
    gen = torch.Generator().manual_seed(1)
    lengths = [5, 9, 1, 7]
    seqs = [torch.randint(0, V, (1, n), generator=gen) for n in lengths]
    batch = torch.randint(0, V, (4, 12), generator=gen)  # junk after each valid part
    for i, s in enumerate(seqs):
        batch[i, :s.shape[1]] = s[0]
    alone = torch.cat([model(s) for s in seqs])
    padded = model(batch, torch.tensor(lengths))
    torch.testing.assert_close(padded, alone, rtol=1e-9, atol=1e-9)


def _changes_at_zero(model, ids, where):
    changed = ids.clone()
    changed[0, where] = (changed[0, where] + 1) % V
    a, b = model.encode(ids), model.encode(changed)
    return not torch.allclose(a[0, 0], b[0, 0])


def test_bidirectional_positions_see_later_tokens_unidirectional_do_not():
    ids = torch.randint(0, V, (1, 9), generator=torch.Generator().manual_seed(2))
    assert not _changes_at_zero(_model(), ids, 8)  # causal: position 0 sees token 0 only
    assert _changes_at_zero(_model(bidirectional=True), ids, 8)
    # unidirectional "last" pooling reads the whole sequence, but nothing past its length
    uni = _model(pooling="last")
    changed = ids.clone()
    changed[0, 0] = (changed[0, 0] + 1) % V
    assert not torch.allclose(uni(ids), uni(changed))
    changed = ids.clone()
    changed[0, 6] = (changed[0, 6] + 1) % V
    torch.testing.assert_close(uni(ids, torch.tensor([6])), uni(changed, torch.tensor([6])))


def test_gradients_reach_both_directions():
    model = Classifier(V, C, d_model=8, n_layers=1, bidirectional=True)
    model(torch.randint(0, V, (2, 5)), torch.tensor([5, 3])).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_save_load_round_trip_is_exact(tmp_path):
    model = Classifier(V, C, d_model=12, n_layers=2, cell="lstm", bidirectional=True,
                       pooling="last", conv=3).eval()
    model.save_pretrained(tmp_path)
    loaded = Classifier.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, V, (3, 6))
    lengths = torch.tensor([6, 2, 4])
    assert torch.equal(model(ids, lengths), loaded(ids, lengths))
    assert loaded.bidirectional and loaded.pooling == "last"


@pytest.mark.parametrize("kwargs, match", [
    (dict(vocab_size=0), "vocab_size"), (dict(n_classes=1.5), "n_classes"),
    (dict(d_model=0), "d_model"), (dict(n_layers=True), "n_layers"),
    (dict(cell="nope"), "cell"), (dict(pooling="sum"), "pooling"),
    (dict(dropout=1.0), "dropout"), (dict(attention_every=-1), "attention_every"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Classifier(**{"vocab_size": V, "n_classes": C, **kwargs})
    with pytest.raises(TypeError, match="bidirectional"):
        Classifier(V, C, bidirectional="yes")


@pytest.mark.parametrize("ids, lengths, match", [
    (torch.zeros(2, 3, 1).long(), None, "ids"), (torch.zeros(2, 3), None, "ids"),
    (torch.zeros(2, 3).long(), torch.tensor([3]), "lengths"),
    (torch.zeros(2, 3).long(), torch.tensor([0, 3]), "lengths"),
    (torch.zeros(2, 3).long(), torch.tensor([4, 3]), "lengths"),
    (torch.zeros(2, 3).long(), torch.tensor([1.0, 3.0]), "lengths"),
])
def test_bad_inputs_name_the_argument(ids, lengths, match):
    with pytest.raises(ValueError, match=match):
        Classifier(V, C, d_model=8, n_layers=1)(ids, lengths)
