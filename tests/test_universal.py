"""Universal Transformer: ACT by hand, weights, ponder gradient, act=False, causality, errors."""
import pytest
import torch

from rnnlab.models.attention import CausalSelfAttention, SelfAttention
from rnnlab.models.universal import UniversalTransformer, sinusoid

TAU = 0.01
# Forced halting probabilities, (step, position), for B=1, T=3, max_steps=3, θ = 0.99:
# position 0 halts at step 1 (0.995 >= θ): N=1, R=1, w=(1, 0, 0)
# position 1 halts at step 2 (0.4 + 0.7 >= θ): N=2, R=0.6, w=(0.4, 0.6, 0)
# position 2 never reaches θ and is stopped by the step limit: N=3, R=1-0.1-0.2=0.7,
# w=(0.1, 0.2, 0.7) (the t2t reference would give it R=0 and weights summing to 0.3)
FORCED = [[0.995, 0.4, 0.1], [0.5, 0.7, 0.2], [0.5, 0.5, 0.3]]
N_HAND = [1, 2, 3]
R_HAND = [1.0, 0.6, 0.7]
W_HAND = [[1.0, 0.0, 0.0], [0.4, 0.6, 0.0], [0.1, 0.2, 0.7]]  # (position, step)


def _forced_model(monkeypatch, combine="interpolate", leaves=None):
    torch.manual_seed(0)
    model = UniversalTransformer(5, 4, d_model=8, max_steps=3, heads=2, ponder_weight=TAU,
                                 act_combine=combine).double()
    probs = leaves or [torch.tensor([row], dtype=torch.float64) for row in FORCED]
    calls = iter(probs)
    monkeypatch.setattr(model, "halting_probability", lambda state: next(calls))
    states = []  # H^t of every step, recorded from the shared block
    model.block.register_forward_hook(lambda mod, args, out: states.append(out.detach()))
    return model, states


@pytest.mark.parametrize("combine", ["interpolate", "sum"])
def test_act_by_hand_with_forced_halting(monkeypatch, combine):
    model, states = _forced_model(monkeypatch, combine)
    logits, ponder = model(torch.tensor([[1, 2, 3]]), return_ponder=True)
    assert logits.shape == (1, 3, 4) and len(states) == 3
    assert model.n_updates.tolist() == [N_HAND]
    torch.testing.assert_close(model.remainders, torch.tensor([R_HAND], dtype=torch.float64))
    w_hand = torch.tensor(W_HAND, dtype=torch.float64)
    torch.testing.assert_close(model.update_weights[0], w_hand)
    expected = TAU * (sum(N_HAND) + sum(R_HAND)) / 3  # τ · mean over (B, T) of N + R
    assert ponder.item() == pytest.approx(expected)
    assert model.ponder_cost is ponder
    # the output state from the recorded H^t and the hand weights
    out = torch.zeros_like(states[0])
    for t, h in enumerate(states):
        w = w_hand[:, t][None, :, None]  # (1, T, 1)
        out = out + w * h if combine == "sum" else w * h + (1 - w) * out
    torch.testing.assert_close(logits, model.head(model.norm(out)))


def test_all_positions_halting_early_stops_the_loop(monkeypatch):
    model, states = _forced_model(monkeypatch, leaves=[torch.full((1, 3), 0.999,
                                                                  dtype=torch.float64)])
    model(torch.tensor([[1, 2, 3]]))
    assert len(states) == 1 and model.n_updates.tolist() == [[1, 1, 1]]
    assert model.update_weights.shape == (1, 3, 1)
    torch.testing.assert_close(model.update_weights, torch.ones(1, 3, 1, dtype=torch.float64))


def test_ponder_gradient_flows_only_through_the_remainder(monkeypatch):
    """∂P/∂p^n = -τ/(B·T) for n < N of that position, 0 for n >= N (N is piecewise constant)."""
    leaves = [torch.tensor([row], dtype=torch.float64, requires_grad=True) for row in FORCED]
    model, _ = _forced_model(monkeypatch, leaves=leaves)
    model(torch.tensor([[1, 2, 3]]))
    model.ponder_cost.backward()
    for n, leaf in enumerate(leaves, start=1):
        want = [-TAU / 3 if n < N else 0.0 for N in N_HAND]
        torch.testing.assert_close(leaf.grad[0], torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize("bias", [-4.0, 0.0, 1.0, 4.0])
def test_update_weights_sum_to_one_per_position(bias):
    """Also when the step limit stops positions (bias -4: σ = 0.018, never reaching θ)."""
    torch.manual_seed(1)
    model = UniversalTransformer(6, 2, d_model=12, max_steps=4, halting_bias=bias).double()
    model(torch.randint(0, 6, (3, 10)))
    sums = model.update_weights.sum(-1)  # (B, T)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    assert ((model.n_updates >= 1) & (model.n_updates <= 4)).all()
    assert ((model.remainders > 0) & (model.remainders <= 1)).all()
    if bias == -4.0:
        assert (model.n_updates == 4).all()


def test_ponder_cost_trains_the_halting_unit():
    torch.manual_seed(2)
    model = UniversalTransformer(6, 2, d_model=12, max_steps=4, halting_bias=0.0)
    model(torch.randint(0, 6, (2, 7))).sum().mul(0).add(model.ponder_cost).backward()
    assert model.halting.weight.grad.abs().sum() > 0 and model.halting.bias.grad < 0


@pytest.mark.parametrize("mixer", ["attention", "gru"])
def test_act_false_is_a_plain_loop_of_the_shared_block(mixer):
    torch.manual_seed(3)
    model = UniversalTransformer(7, 3, d_model=16, max_steps=5, mixer=mixer, act=False).double()
    x = torch.randint(0, 7, (2, 9))
    h = model.embed(x)
    for step in range(1, 6):
        h = model.block(h + model.coordinates(9, step).double())
    logits, ponder = model(x, return_ponder=True)
    torch.testing.assert_close(logits, model.head(model.norm(h)))
    assert ponder.item() == 0.0 and (model.n_updates == 5).all()
    torch.testing.assert_close(model.update_weights.sum(-1), torch.ones(2, 9, dtype=torch.float64))


@pytest.mark.parametrize("mixer", ["attention", "gru"])
def test_untied_runs_a_block_of_its_own_at_each_step(mixer):
    """tied=False: step t runs layers[t - 1] (a Transformer of distinct layers with act=False),
    each with the tied block's size; the tied model keeps its state-dict keys."""
    torch.manual_seed(4)
    model = UniversalTransformer(7, 3, d_model=16, max_steps=3, mixer=mixer, act=False,
                                 tied=False).double()
    tied = UniversalTransformer(7, 3, d_model=16, max_steps=3, mixer=mixer, act=False)
    per_block = sum(p.numel() for p in tied.block.parameters())
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in tied.parameters()) + 2 * per_block
    assert any(k.startswith("block.") for k in tied.state_dict())
    assert not any(k.startswith("layers.") for k in tied.state_dict())
    x = torch.randint(0, 7, (2, 9))
    h = model.embed(x)
    for step in range(1, 4):
        h = model.layers[step - 1](h + model.coordinates(9, step).double())
    torch.testing.assert_close(model(x), model.head(model.norm(h)))
    first, second = (list(layer.parameters()) for layer in model.layers[:2])
    assert not all(torch.equal(a, b) for a, b in zip(first, second))  # initialised apart


def test_untied_act_runs_each_steps_own_block(monkeypatch):
    """With ACT, the k-th step taken runs layers[k - 1], once per step (forced halting: the
    third position needs all three steps)."""
    torch.manual_seed(0)
    model = UniversalTransformer(5, 4, d_model=8, max_steps=3, heads=2, tied=False).double()
    calls = iter([torch.tensor([row], dtype=torch.float64) for row in FORCED])
    monkeypatch.setattr(model, "halting_probability", lambda state: next(calls))
    ran = []
    for i, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda mod, args, out, i=i: ran.append(i))
    model(torch.tensor([[1, 2, 3]]))
    assert ran == [0, 1, 2] and model.n_updates.tolist() == [N_HAND]


@pytest.mark.parametrize("mixer, block", [("attention", "default"), ("lstm", "default"),
                                          ("mamba", "published")])
@pytest.mark.parametrize("act", [True, False])
def test_causal(mixer, block, act):
    torch.manual_seed(4)
    model = UniversalTransformer(7, 3, d_model=16, max_steps=4, mixer=mixer, act=act,
                                 halting_bias=0.0, block=block).double()
    x = torch.randint(0, 7, (2, 11))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 7
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("mixer, block", [("attention", "default"), ("gru", "default"),
                                          ("deltanet", "published")])
def test_non_causal_sees_the_future(mixer, block):
    torch.manual_seed(5)
    model = UniversalTransformer(7, 3, d_model=16, max_steps=3, mixer=mixer, causal=False,
                                 block=block)
    x = torch.randint(0, 7, (1, 8))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 7
    assert not torch.allclose(model(x)[:, 0], model(y)[:, 0])


def test_real_inputs_and_cell_options():
    model = UniversalTransformer(3, 2, d_model=8, max_steps=2, mixer="mlstm", heads=2,
                                 kind="real")
    assert model(torch.randn(2, 5, 3)).shape == (2, 5, 2)


def test_sinusoid():
    s = sinusoid(torch.arange(4), 7)
    assert s.shape == (4, 7) and (s[:, -1] == 0).all()
    torch.testing.assert_close(s[0, :3], torch.zeros(3))  # sin(0)
    torch.testing.assert_close(s[0, 3:6], torch.ones(3))  # cos(0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mixer="nope"), "mixer"),
    (dict(d_model=0), "d_model"),
    (dict(max_steps=0), "max_steps"),
    (dict(eps=1.0), "eps"),
    (dict(eps=0), "eps"),
    (dict(ponder_weight=-0.1), "ponder_weight"),
    (dict(halting_bias=float("nan")), "halting_bias"),
    (dict(act_combine="mean"), "act_combine"),
    (dict(kind="image"), "kind"),
    (dict(heads=3), "heads"),
    (dict(state_size=4), "cell options"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(block="published"), "block"),
    (dict(mixer="gru", block="published"), "'gru' has none"),
    (dict(position_offset=-1), "position_offset must be an int >= 0, got -1"),
    (dict(restart_at=-1), r"restart_at must be an int in \[0, 3\], got -1"),
    (dict(restart_at=4), r"restart_at must be an int in \[0, 3\], got 4"),
    (dict(restart_at=1, kind="real"), "restart_at needs token inputs"),
    (dict(mixer="gru", rotary=False), "rotary=False needs the attention mixer"),
    (dict(encoder=True), "encoder=True needs restart_at"),
    (dict(encoder=True, restart_at=1, causal=False), "encoder=True needs .* causal=True"),
    (dict(encoder=True, restart_at=1, mixer="gru"), "encoder=True needs .* the attention mixer"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    args = dict(vocab_size=4, n_outputs=2, d_model=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        UniversalTransformer(**args)
    with pytest.raises(TypeError, match="act"):
        UniversalTransformer(4, 2, act=1)
    with pytest.raises(TypeError, match="restart_at must be an int"):
        UniversalTransformer(4, 2, restart_at=True)
    with pytest.raises(TypeError, match="rotary must be a bool"):
        UniversalTransformer(4, 2, rotary=0)
    with pytest.raises(TypeError, match="tied must be a bool"):
        UniversalTransformer(4, 2, tied="no")


def test_random_position_offsets_shift_the_coordinates_in_training_only():
    """With position_offset, a training forward equals one whose coordinates start at the drawn
    offsets; eval starts every row at 0; the draws continue across a state_dict round trip."""
    torch.manual_seed(0)
    model = UniversalTransformer(6, 3, d_model=8, max_steps=2, heads=2, act=False,
                                 position_offset=50)
    x = torch.randint(0, 6, (1, 5)).expand(4, 5)  # four identical rows
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    offsets = model.offsets(4)
    model.load_state_dict(saved)  # rewind the generator
    y = model(x)  # (B, T, O), training mode: shifted positions
    assert offsets.shape == (4, 1) and 0 <= int(offsets.min()) and int(offsets.max()) <= 50
    other = int((offsets[:, 0] != offsets[0, 0]).nonzero()[0, 0])  # a row drawn elsewhere
    assert not torch.allclose(y[0], y[other])
    plain = UniversalTransformer(6, 3, d_model=8, max_steps=2, heads=2, act=False)
    plain.load_state_dict({k: v for k, v in saved.items() if k != "offset_rng"})
    shifted = plain.coordinates  # the same model, positions starting at the drawn offsets
    plain.coordinates = lambda T, step, device=None, offset=None: shifted(T, step, device,
                                                                          offsets)
    torch.testing.assert_close(plain(x), y)
    model.eval()
    y_eval = model(x)
    torch.testing.assert_close(y_eval[0], y_eval[3])  # no offsets in eval
    plain.coordinates = shifted
    torch.testing.assert_close(plain.eval()(x), y_eval)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    after = model.offsets(4)
    model.load_state_dict(state)
    assert torch.equal(model.offsets(4), after)  # a resumed run draws the same offsets


def test_restart_at_by_hand():
    """Positions start again at each row's first ``restart_at`` token (9 here), where a
    segment embedding begins; a row without it runs on. The forward is the plain loop over
    those positions, and each step still sees only the steps before it."""
    torch.manual_seed(5)
    model = UniversalTransformer(10, 4, d_model=8, max_steps=3, heads=2, act=False,
                                 restart_at=9).double().eval()
    x = torch.tensor([[1, 2, 3, 9, 4, 9, 5],   # restarts at step 3 (the second 9 is a symbol)
                      [1, 2, 3, 4, 5, 6, 7],   # no 9: one segment
                      [9, 1, 2, 3, 4, 5, 6]])  # restarts at once
    index = torch.tensor([[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6]])
    segment = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0] * 7, [1] * 7])
    assert torch.equal(model.segments(x), segment)
    assert torch.equal(model.shifts(x) + torch.arange(7), index)
    h = model.embed(x) + model.segment(segment)
    for step in range(1, 4):
        h = model.block(h + (sinusoid(index, 8) + sinusoid(torch.tensor([step]), 8)).double())
    torch.testing.assert_close(model(x), model.head(model.norm(h)))
    later = x.clone()
    later[:, 5:] = 9  # changes the steps from 5 on only
    torch.testing.assert_close(model(later)[:, :5], model(x)[:, :5])


def test_restart_at_shares_the_random_offset_between_the_two_parts():
    """In training both parts of a row start at the row's drawn offset, so input symbol p and
    the output step at p keep one position; eval draws none."""
    torch.manual_seed(6)
    model = UniversalTransformer(10, 4, d_model=8, max_steps=2, heads=2, act=False,
                                 position_offset=50, restart_at=9)
    x = torch.tensor([[1, 2, 9, 3, 4]]).expand(3, 5)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    drawn = model.offsets(3)  # (B, 1)
    model.load_state_dict(saved)
    assert torch.equal(model.shifts(x) + torch.arange(5),
                       drawn + torch.tensor([0, 1, 0, 1, 2]))
    assert torch.equal(model.eval().shifts(x) + torch.arange(5),
                       torch.tensor([[0, 1, 0, 1, 2]]).expand(3, 5))


@pytest.mark.parametrize("attention", [CausalSelfAttention(8, 2, rotary=False),
                                       SelfAttention(8, 2, causal=False, rotary=False)])
def test_attention_without_rotary_has_no_positions(attention):
    """Without RoPE, attention sees a set: swapping two inputs swaps their outputs (both ways)
    and leaves the outputs after both unchanged (causal); the KV cache agrees with the whole
    sequence."""
    torch.manual_seed(7)
    x = torch.randn(2, 6, 8)
    swapped = x[:, [1, 0, 2, 3, 4, 5]]
    def run(inputs):  # the causal layer also returns its cache
        out = attention(inputs)
        return out[0] if isinstance(out, tuple) else out
    y, y_swapped = run(x), run(swapped)
    torch.testing.assert_close(y_swapped[:, 2:], y[:, 2:])
    if not getattr(attention, "causal", True):
        torch.testing.assert_close(y_swapped[:, :2], y[:, [1, 0]])
    else:
        first, cache = attention(x[:, :4])
        rest, _ = attention(x[:, 4:], cache)
        torch.testing.assert_close(torch.cat([first, rest], 1), y)
    with pytest.raises(TypeError, match="rotary must be a bool"):
        CausalSelfAttention(8, 2, rotary="no")


def test_ut_without_rotary_sees_positions_only_through_its_coordinates():
    """rotary=False: the UT is the plain loop over the added coordinates, and only they carry
    position: with them zeroed, swapping two inputs swaps their outputs (non-causal)."""
    torch.manual_seed(8)
    model = UniversalTransformer(7, 3, d_model=8, max_steps=2, heads=2, act=False,
                                 causal=False, rotary=False).double().eval()
    x = torch.randint(0, 7, (2, 5))
    h = model.embed(x)
    for step in range(1, 3):
        h = model.block(h + model.coordinates(5, step).double())
    torch.testing.assert_close(model(x), model.head(model.norm(h)))
    model.coordinates = lambda T, step, device=None, offset=None: torch.zeros(T, 8)
    order = [1, 0, 2, 3, 4]
    torch.testing.assert_close(model(x[:, order]), model(x)[:, order])


def test_attention_prefix_mask_reads_the_prefix_both_ways():
    """prefix 0 is causal attention, prefix T is attention both ways; in between, a prefix step
    sees later prefix steps and nothing after the prefix, and the steps after stay causal."""
    torch.manual_seed(9)
    causal = CausalSelfAttention(8, 2, rotary=False).double()
    both = SelfAttention(8, 2, causal=False, rotary=False).double()
    both.load_state_dict(causal.state_dict())
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(causal(x, prefix=torch.zeros(2, dtype=torch.long))[0], causal(x)[0])
    torch.testing.assert_close(causal(x, prefix=torch.full((2,), 7))[0], both(x))
    prefix = torch.tensor([3, 5])
    y = causal(x, prefix=prefix)[0]
    for b, m in enumerate(prefix.tolist()):
        ahead = x.clone()
        ahead[b, m - 1] += 1.0  # the last prefix step: every prefix step sees it
        changed = (causal(ahead, prefix=prefix)[0][b] - y[b]).abs().sum(-1) > 1e-9
        assert changed.tolist() == [True] * 7
        after = x.clone()
        after[b, m] += 1.0  # the first step after the prefix: only it and later steps see it
        changed = (causal(after, prefix=prefix)[0][b] - y[b]).abs().sum(-1) > 1e-9
        assert changed.tolist() == [False] * m + [True] * (7 - m)
    with pytest.raises(ValueError, match=r"prefix must be an integer tensor \(B,\) = \(2,\)"):
        causal(x, prefix=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="prefix needs window=None and no cache"):
        CausalSelfAttention(8, 2, window=3).double()(x, prefix=prefix)
    with pytest.raises(ValueError, match="prefix needs window=None and no cache"):
        causal(x, causal.initial_state(2, dtype=torch.float64), prefix=prefix)


def test_ut_encoder_reads_the_input_both_ways_and_the_rest_causally():
    """encoder=True: the steps before each row's restart token (9) read each other both ways,
    the forward is the plain loop with that prefix mask, the steps from the token on stay
    causal, and a row without the token is causal throughout."""
    torch.manual_seed(10)
    model = UniversalTransformer(10, 4, d_model=8, max_steps=2, heads=2, act=False,
                                 restart_at=9, rotary=False, encoder=True).double().eval()
    x = torch.tensor([[1, 2, 3, 9, 4, 5], [1, 2, 3, 4, 5, 6]])
    prefix = model.encoder_steps(x)
    assert prefix.tolist() == [3, 0]
    h = model.embed(x) + model.segment(model.segments(x))
    for step in range(1, 3):
        h = model.block(h + model.coordinates(6, step, offset=model.shifts(x)).double(), prefix)
    y = model(x)
    torch.testing.assert_close(y, model.head(model.norm(h)))
    ahead = x.clone()
    ahead[:, 2] = 7  # row 0: the last input step, seen by the whole input; row 1: causal
    changed = (model(ahead) - y).abs().sum(-1) > 1e-9
    assert changed.tolist() == [[True] * 6, [False, False, True, True, True, True]]
    later = x.clone()
    later[:, 4:] = 8  # after the restart token: nothing before step 4 sees it
    assert torch.equal((model(later) - y).abs().sum(-1)[:, :4] > 1e-9, torch.zeros(2, 4).bool())
    with pytest.raises(TypeError, match="encoder must be a bool"):
        UniversalTransformer(10, 4, restart_at=9, encoder=1)
