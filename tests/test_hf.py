"""The optional transformers integration: Auto classes, generate() with rnnlab's cache, save/load."""
import pytest
import torch

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("tie", [True, False])
def test_generate_and_round_trip(tmp_path, tie):
    from rnnlab.hf import RnnlabConfig, RnnlabForCausalLM
    torch.manual_seed(0)
    model = RnnlabForCausalLM(RnnlabConfig(vocab_size=50, d_model=16, n_layers=3, cell="mamba",
                                           conv=3, attention_every=3,
                                           tie_embeddings=tie)).eval()
    ids = torch.randint(1, 50, (2, 5))
    out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    # transformers' loop over rnnlab's cache == rnnlab's own greedy generation
    assert torch.equal(out, model.lm.generate(ids, 6, temperature=0))
    model.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(back) is RnnlabForCausalLM
    assert (back.lm.head.weight is back.lm.embed.weight) == tie
    for a, b in zip(model.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(back.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0), out)


def test_forward_loss_matches_cross_entropy():
    from rnnlab.hf import RnnlabConfig, RnnlabForCausalLM
    torch.manual_seed(0)
    model = RnnlabForCausalLM(RnnlabConfig(vocab_size=20, d_model=8, n_layers=1))
    ids = torch.randint(0, 20, (2, 7))
    out = model(ids, labels=ids)
    want = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(out.loss, want)


def test_the_published_block_round_trips(tmp_path):
    """``block="published"`` is part of the config: a saved Mamba-block model loads as one."""
    from rnnlab.hf import RnnlabConfig, RnnlabForCausalLM
    torch.manual_seed(0)
    model = RnnlabForCausalLM(RnnlabConfig(vocab_size=40, d_model=16, n_layers=2, cell="mamba",
                                           block="published")).eval()
    model.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert back.config.block == "published"
    assert sorted(back.state_dict()) == sorted(model.state_dict())
    assert any(k.endswith("mixer.out_proj.weight") for k in model.state_dict())  # gated block
    ids = torch.randint(0, 40, (2, 7))
    assert torch.equal(back(ids).logits, model(ids).logits)
