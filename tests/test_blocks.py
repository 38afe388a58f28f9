"""The one block factory (models/block.py) and the published layers (models/mixers.py): each
published block runs, streams, backprops and matches a plain forward of its paper's equations;
the cells' ``in_proj=False`` reads the projected input; names are checked in one place."""
import doctest
import importlib

import pytest
import torch
import torch.nn.functional as F

from rnnlab import cells
from rnnlab.models.block import (
    PUBLISHED,
    ResidualBlock,
    check_mixer,
    make_block,
    make_mixer,
    make_mlp,
)
from rnnlab.models.mixers import DeltaLayer, MambaLayer

CHUNKS = [5, 1, 1, 8, 4]  # T = 19
EPS = 1e-5


def _x(d=16, T=19, seed=0):
    return torch.randn(2, T, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _published(mixer, d=16, **options):
    torch.manual_seed(0)
    return make_block(mixer, d, block="published", cell_options=options).double()


@pytest.mark.parametrize("mixer", sorted(PUBLISHED))
def test_published_block_streams_in_chunks_as_one_run(mixer):
    block, x = _published(mixer), _x()
    full, _ = block(x)
    state, outs = block.initial_state(2), []
    for chunk in x.split(CHUNKS, dim=1):
        out, state = block(chunk, state)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mixer", sorted(PUBLISHED))
def test_published_block_backprops_into_every_parameter(mixer):
    block, x = _published(mixer), _x().requires_grad_()
    y, _ = block(x)
    (y * torch.linspace(-1, 1, 16, dtype=y.dtype)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{mixer}: no gradient reaches {name}"


@pytest.mark.parametrize("mixer, norm, mlp", [
    ("mamba", torch.nn.RMSNorm, None), ("mamba2", torch.nn.RMSNorm, None),
    ("deltanet", torch.nn.RMSNorm, "GatedMLP"), ("mlstm", torch.nn.LayerNorm, None),
    ("slstm", torch.nn.LayerNorm, "GatedMLP")])
def test_published_block_has_the_family_norm_and_mlp(mixer, norm, mlp):
    from rnnlab.models.mixers import LAYERS
    assert set(PUBLISHED) == set(LAYERS)
    block = _published(mixer)
    assert isinstance(block, ResidualBlock) and isinstance(block.norm, norm)
    assert (block.mlp is None) if mlp is None else type(block.mlp).__name__ == mlp


# ---- plain forwards of the published equations ---------------------------------------------------

def conv_ref(conv, x):
    """Causal depthwise conv through ``F.conv1d``: ShortConv's lag-w tap is conv1d's K-1-w."""
    K, T = conv.kernel, x.shape[1]
    w = conv.weight.flip(0).T.unsqueeze(1)  # (W, C) -> (C, 1, W)
    y = F.conv1d(x.transpose(1, 2), w, conv.bias, padding=K - 1, groups=x.shape[-1])
    return y[..., :T].transpose(1, 2)  # (B, T, C)


def rms(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def mamba_ref(layer, x):
    """Gu & Dao's block: in_proj -> (x, z); conv + SiLU; S6 scan (ZOH A, Euler B) + D x; * SiLU(z);
    out_proj."""
    c = layer.rnn.cell
    xs, z = (x @ layer.in_proj.weight.T).chunk(2, -1)
    xs = F.silu(conv_ref(layer.conv, xs))
    low, Bt, Ct = (xs @ c.x_proj.weight.T).split([c.dt_rank, c.state_size, c.state_size], -1)
    dt = F.softplus(low @ c.dt_proj.weight.T + c.dt_proj.bias)  # (B, T, E)
    A = -torch.exp(c.A_log)  # (E, N)
    h, ys = x.new_zeros(x.shape[0], *A.shape), []
    for t in range(x.shape[1]):
        a = torch.exp(dt[:, t, :, None] * A)
        a = 2 * a - 1 if c.allow_neg_eigval else a
        h = a * h + (dt[:, t] * xs[:, t])[..., None] * Bt[:, t, None, :]
        ys.append((h * Ct[:, t, None, :]).sum(-1) + c.D * xs[:, t])
    return (torch.stack(ys, 1) * F.silu(z)) @ layer.out_proj.weight.T


def mamba2_ref(layer, x):
    """Dao & Gu's block: in_proj -> (z, xBC, dt); conv + SiLU on xBC; SSD (scalar decay per head)
    + D x; RMSNorm(y * SiLU(z)); out_proj."""
    c = layer.rnn.cell
    E, N, heads = layer.sizes
    B, T, P = x.shape[0], x.shape[1], c.head_dim
    z, xbc, dt = (x @ layer.in_proj.weight.T).split([E, E + 2 * N, heads], -1)
    xs, Bt, Ct = F.silu(conv_ref(layer.conv, xbc)).split([E, N, N], -1)
    dt = F.softplus(dt + c.dt_bias)  # (B, T, heads)
    A = -torch.exp(c.A_log)
    S, ys = x.new_zeros(B, heads, P, N), []
    for t in range(T):
        xt = xs[:, t].view(B, heads, P)
        S = torch.exp(dt[:, t] * A)[..., None, None] * S \
            + (dt[:, t, :, None] * xt)[..., None] * Bt[:, t, None, None, :]
        ys.append(((S * Ct[:, t, None, None, :]).sum(-1) + c.D[:, None] * xt).flatten(-2))
    y = torch.stack(ys, 1)
    return rms(y * F.silu(z), layer.norm.weight) @ layer.out_proj.weight.T


def delta_ref(layer, x):
    """fla's DeltaNet / GatedDeltaNet layer: q, k, v projections and short convs, SiLU, L2 norm
    of q and k, beta = sigmoid; delta rule (with decay); per-head RMSNorm (gated); o_proj."""
    c = layer.rnn.cell
    B, T = x.shape[:2]
    heads, K, V = c.heads, c.key_dim, c.value_dim
    q = F.normalize(F.silu(conv_ref(layer.q_conv, x @ layer.q_proj.weight.T)).view(B, T, heads,
                                                                                  K), dim=-1)
    k = F.normalize(F.silu(conv_ref(layer.k_conv, x @ layer.k_proj.weight.T)).view(B, T, heads,
                                                                                  K), dim=-1)
    v = F.silu(conv_ref(layer.v_conv, x @ layer.v_proj.weight.T)).view(B, T, heads, V)
    beta = torch.sigmoid(x @ layer.b_proj.weight.T) * (2 if c.allow_neg_eigval else 1)
    alpha = None
    if layer.a_proj is not None:
        alpha = torch.exp(-torch.exp(c.A_log) * F.softplus(x @ layer.a_proj.weight.T + c.dt_bias))
    S, os = x.new_zeros(B, heads, K, V), []
    for t in range(T):
        if alpha is not None:
            S = alpha[:, t, :, None, None] * S
        err = v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t])
        S = S + beta[:, t, :, None, None] * k[:, t, :, :, None] * err[:, :, None, :]
        os.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    o = rms(torch.stack(os, 1), layer.o_norm.weight)  # (B, T, heads, V)
    if layer.g_proj is not None:
        o = o * F.silu(x @ layer.g_proj.weight.T).view(B, T, heads, V)
    return o.flatten(-2) @ layer.o_proj.weight.T


def headwise(linear, x):
    return x @ linear.full_weight().T + linear.bias


def head_norm(norm, h):
    heads = norm.heads
    return F.layer_norm(h.unflatten(-1, (heads, -1)), (h.shape[-1] // heads,),
                        eps=EPS).flatten(-2) * norm.weight


def mlstm_ref(layer, x):
    """xLSTM's mLSTM block, unstabilized (fine in fp64 at this length): up-projection -> (x, z);
    conv + SiLU -> q, k; v from x; gates from [q, k, v]; C = f C + i k v^T, n = f n + i k,
    h = C^T q / max(|n^T q|, 1); head-wise LayerNorm + skip; * SiLU(z); down-projection."""
    c = layer.rnn.cell
    B, T = x.shape[:2]
    heads, d = c.heads, c.value_dim
    xm, z = (x @ layer.up_proj.weight.T).chunk(2, -1)
    xc = F.silu(conv_ref(layer.conv, xm))
    q, k, v = headwise(layer.q_proj, xc), headwise(layer.k_proj, xc), headwise(layer.v_proj, xm)
    i_pre, f_pre = (torch.cat([q, k, v], -1) @ layer.gates.weight.T + layer.gates.bias).chunk(2, -1)
    q, v = q.view(B, T, heads, d), v.view(B, T, heads, d)
    k = k.view(B, T, heads, d) / d ** 0.5
    C, n, hs = x.new_zeros(B, heads, d, d), x.new_zeros(B, heads, d), []
    for t in range(T):
        f, i = torch.sigmoid(f_pre[:, t]), torch.exp(i_pre[:, t])  # (B, heads)
        C = f[..., None, None] * C + i[..., None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        n = f[..., None] * n + i[..., None] * k[:, t]
        den = (n * q[:, t]).sum(-1).abs().clamp(min=1.0)  # (B, heads)
        hs.append((torch.einsum("bhkv,bhk->bhv", C, q[:, t]) / den[..., None]).flatten(-2))
    h = head_norm(layer.norm, torch.stack(hs, 1)) + layer.skip * xc
    return (h * F.silu(z)) @ layer.down_proj.weight.T


def slstm_ref(layer, x):
    """xLSTM's sLSTM layer: conv + SiLU feeds i, f; x feeds z, o (head-wise); the cell's step;
    head-wise LayerNorm. (The cell's own step is tested against its equations elsewhere.)"""
    c = layer.rnn.cell
    xc = F.silu(conv_ref(layer.conv, x))
    u = torch.cat([headwise(layer.if_proj, xc), headwise(layer.zo_proj, x)], -1) + c.bias
    state, hs = c.init_state(x.shape[0], x.dtype), []
    for t in range(x.shape[1]):
        state = c.step(u[:, t], state)
        hs.append(state[0])
    return head_norm(layer.norm, torch.stack(hs, 1))


@pytest.mark.parametrize("mixer, options, ref", [
    ("mamba", {}, mamba_ref), ("mamba", {"allow_neg_eigval": True}, mamba_ref),
    ("mamba2", {"head_dim": 8}, mamba2_ref),
    ("deltanet", {"heads": 2}, delta_ref), ("deltanet", {"allow_neg_eigval": True}, delta_ref),
    ("gated_deltanet", {"heads": 2}, delta_ref),
    ("mlstm", {}, mlstm_ref), ("slstm", {}, slstm_ref),
])
def test_published_layer_matches_its_equations(mixer, options, ref):
    torch.manual_seed(0)
    layer = make_mixer(mixer, 16, block="published", cell_options=options).double()
    with torch.no_grad():  # biases and norm weights away from their init, so each one counts
        for name, p in layer.named_parameters():
            if name.endswith("bias") or "norm" in name or name == "skip":
                p.add_(0.1 * torch.randn_like(p))
    x = _x(seed=1)
    torch.testing.assert_close(layer(x)[0], ref(layer, x), rtol=1e-9, atol=1e-9)


def test_deltaproduct_layer_feeds_every_substep():
    """n_h = 2 sub-steps: the layer lays out [q, (k_j, v_j, beta_j) per j, decay]; changing only
    the second sub-step's key projection rows changes the output."""
    layer = _published("deltaproduct", heads=2, gated=True).mixer
    assert isinstance(layer, DeltaLayer) and layer.rnn.cell.substeps == 2
    x = _x()
    y0 = layer(x)[0]
    with torch.no_grad():
        layer.k_proj.weight[16:] += 0.5  # sub-step 2's keys (heads K = 16)
    assert not torch.allclose(layer(x)[0], y0)


# ---- the cells' in_proj=False --------------------------------------------------------------------

def _pair(name, **options):
    torch.manual_seed(0)
    a = cells.get(name, 6, 8, **options).double()
    width = {"mamba": 8, "mamba2": a.in_proj.out_features if name == "mamba2" else 0,
             "slstm": 32}.get(name, a.project(torch.zeros(1, 1, 6, dtype=a_dtype(a))).shape[-1])
    b = cells.get(name, width, 8, in_proj=False, **options).double()
    missing, _ = b.load_state_dict(a.state_dict(), strict=False)
    assert not missing
    return a, b


def a_dtype(cell):
    return next(cell.parameters()).dtype


def _fed(name, a, x):
    """What the in_proj=False cell reads for the in_proj=True cell's input x."""
    if name in ("mamba", "mamba2"):
        return a.in_proj(x)
    if name == "slstm":
        return F.linear(x, a.weight_ih)
    return a.project(x)


@pytest.mark.parametrize("name, options", [
    ("mamba", {}), ("mamba2", {"head_dim": 4}), ("deltanet", {"heads": 2}),
    ("gated_deltanet", {"heads": 2}), ("deltaproduct", {"heads": 2, "gated": True}),
    ("mlstm", {"heads": 2}), ("slstm", {"heads": 2})])
def test_in_proj_false_reads_the_projected_input(name, options):
    from rnnlab.nn.recurrent import Recurrent
    a, b = _pair(name, **options)
    x = _x(6, 9)
    ya, ha = Recurrent(a, "sequential")(x)
    yb, hb = Recurrent(b, "sequential")(_fed(name, a, x))
    torch.testing.assert_close(yb, ya, rtol=1e-10, atol=1e-10)


def test_in_proj_false_needs_the_projected_width():
    with pytest.raises(ValueError, match=r"Mamba: in_proj=False reads the input as x, so "
                                         r"input_size must be 8, got 6"):
        cells.get("mamba", 6, 8, in_proj=False)
    with pytest.raises(ValueError, match=r"DeltaNet: in_proj=False .* input_size must be 26"):
        cells.get("deltanet", 6, 8, heads=2, in_proj=False)  # q, k 2 x 8, v 8, beta 2
    with pytest.raises(TypeError, match="in_proj"):
        cells.get("slstm", 32, 8, in_proj="no")


def test_mlstm_without_output_gate_drops_the_sigmoid():
    torch.manual_seed(0)
    a = cells.get("mlstm", 6, 8, heads=2).double()
    b = cells.get("mlstm", 6, 8, heads=2, output_gate=False).double()
    with torch.no_grad():
        b.gates.load_state_dict(a.gates.state_dict())
        b.qkvo.weight.copy_(a.qkvo.weight[:24])  # q, k, v rows
        a.qkvo.weight[24:] = 0  # o~ = 0: sigmoid gives 1/2
    x = _x(6, 7)
    from rnnlab.nn.recurrent import Recurrent
    torch.testing.assert_close(Recurrent(a)(x)[0], 0.5 * Recurrent(b)(x)[0])


# ---- the factory ---------------------------------------------------------------------------------

def test_mixer_names_are_checked_in_one_place():
    with pytest.raises(ValueError, match=r"make_block: mixer must be one of .* got 'mambaa' "
                                         r"\(did you mean 'mamba'\?\)"):
        make_block("mambaa", 8)
    with pytest.raises(ValueError, match=r"--cell: unknown cell 'gur' \(did you mean 'gru'\?\)"):
        check_mixer(None, "--cell", "gur")
    with pytest.raises(ValueError, match="PointerNet: cell must be one of"):
        check_mixer("PointerNet", "cell", "attention", attention=False)
    with pytest.raises(ValueError, match=r"block='published' is the published layer of .*'gru' "
                                         r"has none"):
        make_block("gru", 8, block="published")
    with pytest.raises(ValueError, match=r"block must be one of \['default', 'published'\]"):
        make_block("mamba", 8, block="paper")
    with pytest.raises(ValueError, match="MambaLayer: in_proj is set by the published layer"):
        make_block("mamba", 8, block="published", cell_options={"in_proj": True})
    with pytest.raises(ValueError, match=r"mlp must be one of"):
        make_mlp("swish", 8)


def test_default_block_keeps_its_parts_and_state_layout():
    torch.manual_seed(0)
    block = make_block("gru", 12, conv=3, fsmn=2).double()
    assert isinstance(block.mixer.rnn.cell, cells.get("gru", 1, 1).__class__)
    assert [type(m).__name__ for m in (block.norm, block.conv, block.fsmn, block.mlp)] == \
        ["LayerNorm", "ShortConv", "FSMNMemory", "GatedMLP"]
    conv_s, mix_s, fsmn_s = block.initial_state(2)
    assert conv_s.shape == (2, 2, 12) and fsmn_s.shape == (2, 2, 12)


def test_post_norm_block_is_the_universal_transformer_step():
    """``post_norm=True``: LN(A + MLP(A)), A = LN(x + mixer(x))."""
    torch.manual_seed(0)
    block = make_block("attention", 8, heads=2, mlp="relu", base_mlp="relu",
                       post_norm=True).double()
    x = _x(8, 5)
    a = block.norm(x + block.mixer(x)[0])
    torch.testing.assert_close(block(x)[0], block.mlp_norm(a + block.mlp(a)))


def test_old_names_still_build_the_one_block():
    from rnnlab.models.blocks import GatedMLP, LMBlock  # noqa: F401
    from rnnlab.models.sequence import Block, RecurrentMixer
    from rnnlab.models.universal import SharedBlock
    torch.manual_seed(0)
    for block in (LMBlock(8, "gru"), Block(RecurrentMixer("gru", 8), 8),
                  SharedBlock(RecurrentMixer("gru", 8), 8)):
        assert isinstance(block, ResidualBlock)
    y, state = Block(RecurrentMixer("gru", 8), 8)(torch.randn(2, 3, 8))
    assert state.shape == (2, 8)  # sequence.Block's state is still the mixer's alone


def test_universal_transformer_loads_a_state_dict_of_the_old_block_names():
    from rnnlab.models import UniversalTransformer
    torch.manual_seed(0)
    model = UniversalTransformer(5, 2, 8, max_steps=2, mixer="gru")
    renamed = {k.replace("block.norm.", "block.norm1.").replace("block.mlp.", "block.transition.")
               .replace("block.mlp_norm.", "block.norm2."): v for k, v in
               model.state_dict().items()}
    assert "block.transition.0.weight" in renamed
    torch.manual_seed(1)
    other = UniversalTransformer(5, 2, 8, max_steps=2, mixer="gru")
    other.load_state_dict(renamed)
    ids = torch.randint(0, 5, (2, 6))
    torch.testing.assert_close(other(ids), model(ids))


# ---- the arena's aliases -------------------------------------------------------------------------

@pytest.mark.parametrize("alias, layer", [
    ("mamba[0,1]", "MambaLayer"), ("mamba[-1,1]", "MambaLayer"), ("mamba2[-1,1]", "Mamba2Layer"),
    ("deltanet[-1,1]", "DeltaLayer"), ("gated_deltanet[0,1]", "DeltaLayer"),
    ("deltaproduct[-1,1]", "DeltaLayer"), ("mamba", "RecurrentMixer"),
    ("mamba(block=published)", "MambaLayer"), ("mamba[-1,1](block=default)", "RecurrentMixer"),
])
def test_arena_aliases_build_the_published_blocks(alias, layer):
    from rnnlab import tasks
    from rnnlab.arena import ArenaConfig, spec
    from rnnlab.arena.train import build_model
    model = spec.model(alias)
    built = build_model(model, tasks.get("parity"), ArenaConfig(models=["gru"],
                                                                tasks=["parity"], d_model=16))
    mixer = built.blocks[0].mixer
    assert type(mixer).__name__ == layer
    assert mixer.rnn.cell.allow_neg_eigval == ("[-1,1]" in alias or "deltaproduct" in alias)
    if layer == "MambaLayer":
        assert isinstance(mixer, MambaLayer) and built.blocks[0].mlp is None


def test_arena_spec_refuses_what_the_published_layer_sets():
    from rnnlab.arena import spec
    with pytest.raises(ValueError, match="in_proj"):
        spec.model("mamba[-1,1](in_proj=false)")
    with pytest.raises(ValueError, match="'gru' has none"):
        spec.model("gru(block=published)")


# ---- docstring examples --------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["rnnlab.cells.mamba", "rnnlab.cells.mamba2",
                                    "rnnlab.cells.delta", "rnnlab.cells.mlstm",
                                    "rnnlab.cells.slstm", "rnnlab.models.block"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
