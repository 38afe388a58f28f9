"""One block factory for every model: ``make_mixer`` builds the sequence mixer, ``make_block`` the
residual block around it, ``check_mixer`` is the one check of a mixer name.

A mixer is causal attention (``"attention"``) or a registered cell, in one of two forms:

- ``block="default"``: the cell as a ``Recurrent`` layer from D to D (``RecurrentMixer``), the
  same generic block for every family;
- ``block="published"``: the family's own layer as its paper builds it (``models/mixers.py``:
  Mamba's conv and ``SiLU(z)`` gate, Mamba-2's gated RMSNorm, xLSTM's mLSTM / sLSTM blocks,
  DeltaNet's short convs and output norm), with the family's norm and MLP (``PUBLISHED``).

``ResidualBlock`` is the one block class (``LMBlock``, ``sequence.Block`` and ``SharedBlock`` are
thin wrappers of it)::

    pre-norm (default):   x + fsmn(mixer(conv(norm(x)))),   then x + mlp(mlp_norm(x))
    post_norm=True (UT):  norm(x + fsmn(mixer(conv(x)))),   then mlp_norm(x + mlp(x))

Every part but the mixer is optional. Its state is ``(conv window, mixer state, fsmn window)``,
``None`` for absent parts; ``forward(x, state) -> (y, state)`` on chunks of any length equals
one full run.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import nn

from .. import cells as _cells
from ..checks import check_bool, check_choice, check_int, did_you_mean
from ..nn.conv import DynamicShortConv, FSMNMemory, ShortConv
from ..nn.prefix import prefix_forward
from ..nn.recurrent import Recurrent
from .attention import CausalSelfAttention, SelfAttention
from .mixers import published_layer

ATTENTION = "attention"
BLOCKS = ("default", "published")
NORMS = ("layer", "rms")
MLPS = ("none", "gelu", "relu", "swiglu", "geglu")  # make_mlp's kinds
# the published block's (norm, MLP) per family: Mamba and Mamba-2 (mamba_ssm's Block: RMSNorm,
# no MLP); fla's DeltaNet family (RMSNorm, and the MLP of fla's Transformer blocks: "base", the
# MLP of the model's own default block, SwiGLU in the LM, GELU x2 in the arena's SequenceModel, so
# both compare at the Transformer's width); xLSTM (LayerNorm; the mLSTM block has no MLP, the
# sLSTM block a GeLU-gated one of factor 4/3)
PUBLISHED = {"mamba": ("rms", "none"), "mamba2": ("rms", "none"),
             "deltanet": ("rms", "base"), "gated_deltanet": ("rms", "base"),
             "deltaproduct": ("rms", "base"), "mlstm": ("layer", "none"),
             "slstm": ("layer", "geglu")}  # the keys are mixers.LAYERS'


def mixer_names(attention: bool = True) -> List[str]:
    """``"attention"`` (unless ``attention=False``) and every registered cell."""
    return ([ATTENTION] if attention else []) + _cells.available()


def check_mixer(owner: Optional[str], name: str, value, *, attention: bool = True,
                aliases=(), noun: str = "cell") -> None:
    """The one check of a mixer name: ``"attention"`` (unless ``attention=False``), one of
    ``aliases`` or a registered cell; the error suggests the closest. ``owner=None`` words it
    for the command line: ``"--cell: unknown cell 'mambaa' (did you mean 'mamba'?); ..."``."""
    choices = mixer_names(attention) + list(aliases)
    if owner is not None:
        check_choice(owner, name, value, choices)
        return
    if not isinstance(value, str) or value not in choices:
        listed = f"a registered cell ({', '.join(_cells.available())})"
        extra = [repr(ATTENTION)] * attention + list(aliases)
        expected = listed + (f" or one of {', '.join(extra)}" if extra else "")
        raise ValueError(f"{name}: unknown {noun} {value!r}{did_you_mean(value, choices)}; "
                         f"expected {expected}")


def check_block(owner: str, block, mixer: str) -> None:
    """``block`` is one of ``BLOCKS``; ``"published"`` needs a family that has one."""
    check_choice(owner, "block", block, BLOCKS)
    if block == "published" and mixer not in PUBLISHED:
        raise ValueError(f"{owner}: block='published' is the published layer of "
                         f"{', '.join(PUBLISHED)}; {mixer!r} has none (use block='default')")


# ---- mixers -------------------------------------------------------------------------------------

class RecurrentMixer(nn.Module):
    """``Recurrent`` layer from ``D`` to ``D``: a projection back to ``D`` when the cell's output
    width differs."""

    def __init__(self, cell: str, d_model: int, engine="auto", **cell_kwargs):
        super().__init__()
        self.rnn = Recurrent(cell, engine=engine, input_size=d_model, hidden_size=d_model,
                             **cell_kwargs)
        out = self.rnn.output_size
        self.proj = nn.Identity() if out == d_model else nn.Linear(out, d_model)

    def initial_state(self, batch: int, device=None, dtype=None):
        return self.rnn.initial_state(batch, device)

    def forward(self, x: torch.Tensor, state=None, prefix=None):
        """``prefix (B,)``: run in prefix mode (``nn/prefix.py``: the first ``prefix[b]``
        steps read non-causally)."""
        y, state = (self.rnn(x, initial_state=state) if prefix is None
                    else prefix_forward(self.rnn, x, prefix, state))  # (B, T, H_out)
        return self.proj(y), state  # (B, T, D)


class BidirectionalMixer(nn.Module):
    """Sum of a forward and a time-reversed mixer of ``cell``: ``(B, T, D) -> (B, T, D)``;
    ``block`` as in ``make_mixer``. It reads the whole sequence, so it does not stream."""

    def __init__(self, cell: str, d_model: int, engine="auto", block: str = "default",
                 **cell_kwargs):
        super().__init__()
        self.fwd, self.bwd = (make_mixer(cell, d_model, engine=engine, cell_options=cell_kwargs,
                                         block=block) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fwd(x)[0] + self.bwd(x.flip(1))[0].flip(1)  # (B, T, D)


def make_mixer(mixer: str, d_model: int, heads: int = 4, window: Optional[int] = None,
               engine="auto", cell_options: Optional[dict] = None, *, causal: bool = True,
               block: str = "default", rotary: bool = True) -> nn.Module:
    """The mixer ``mixer`` (checked by ``check_mixer``) of width ``d_model``: attention with
    ``heads`` (and a sliding ``window``; ``rotary=False``: no RoPE), else the cell's
    ``RecurrentMixer`` (``block="default"``) or published layer (``"published"``) on ``engine``
    with ``cell_options``. ``causal=False``: attention both ways, or a ``BidirectionalMixer``."""
    check_mixer("make_mixer", "mixer", mixer)
    check_bool("make_mixer", "causal", causal)
    check_block("make_mixer", block, mixer)
    check_bool("make_mixer", "rotary", rotary)
    options = dict(cell_options or {})
    if mixer != ATTENTION and not rotary:
        raise ValueError(f"make_mixer: rotary=False is an attention option (a recurrent mixer "
                         f"has no positions to leave out), got mixer={mixer!r}")
    if mixer == ATTENTION:
        if options:
            raise ValueError(f"make_mixer: cell options {sorted(options)} need a cell mixer, "
                             f"got mixer={ATTENTION!r}")
        return CausalSelfAttention(d_model, heads, window, rotary) if causal else \
            SelfAttention(d_model, heads, causal=False, rotary=rotary)
    if not causal:
        return BidirectionalMixer(mixer, d_model, engine, block, **options)
    if block == "published":
        return published_layer(mixer, d_model, engine, options)
    return RecurrentMixer(mixer, d_model, engine, **options)


# ---- MLPs and norms -----------------------------------------------------------------------------

class GatedMLP(nn.Module):
    """Gated MLP ``down(act(gate(x)) * up(x))``: SwiGLU (``activation="silu"``, hidden 8D/3 by
    default) or GeGLU (``"gelu"``)."""

    def __init__(self, d_model: int, hidden: Optional[int] = None, activation: str = "silu"):
        super().__init__()
        check_int("GatedMLP", "hidden", hidden, 1, optional=True)
        hidden = 8 * d_model // 3 if hidden is None else hidden
        check_choice("GatedMLP", "activation", activation, ("silu", "gelu"))
        self.act = nn.functional.silu if activation == "silu" else nn.functional.gelu
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


def make_mlp(kind: str, d_model: int, ratio: Optional[int] = None) -> Optional[nn.Module]:
    """The MLP ``kind`` (``MLPS``) of width ``d_model``, or None for ``"none"``:

    - ``"gelu"``: ``Linear(D, rD) -> GELU -> Linear(rD, D)``, r = ``ratio`` (2): SequenceModel's;
    - ``"relu"``: the same with ReLU and r = 4: the Universal Transformer's transition;
    - ``"swiglu"``: ``GatedMLP``, hidden 8D/3 (the LM's, and fla's DeltaNet blocks');
    - ``"geglu"``: ``GatedMLP`` with GELU, hidden ceil(4D/3): xLSTM's sLSTM block FFN."""
    check_choice("make_mlp", "mlp", kind, MLPS)
    check_int("make_mlp", "ratio", ratio, 1, optional=True)
    if kind in ("gelu", "relu"):
        r = ratio or (2 if kind == "gelu" else 4)
        act = nn.GELU() if kind == "gelu" else nn.ReLU()
        return nn.Sequential(nn.Linear(d_model, r * d_model), act,
                             nn.Linear(r * d_model, d_model))
    if kind == "swiglu":
        return GatedMLP(d_model, None if ratio is None else ratio * d_model)
    if kind == "geglu":
        return GatedMLP(d_model, math.ceil(4 * d_model / 3), "gelu")
    return None


def make_norm(kind: str, d_model: int) -> nn.Module:
    """``"layer"`` (LayerNorm) or ``"rms"`` (RMSNorm, eps 1e-5 as mamba_ssm and fla)."""
    check_choice("make_norm", "norm", kind, NORMS)
    return nn.LayerNorm(d_model) if kind == "layer" else nn.RMSNorm(d_model, eps=1e-5)


# ---- the block ----------------------------------------------------------------------------------

class ResidualBlock(nn.Module):
    """The residual block of every model (module docstring): ``mixer`` (a module taking ``(x,
    state)``), and optionally ``conv`` / ``fsmn`` (streaming convs before / after it) and
    ``mlp``, with norms of kind ``norm``; ``post_norm`` puts the norms after the residual adds
    (the Universal Transformer's depth step)."""

    def __init__(self, mixer: nn.Module, d_model: int, *, norm: str = "layer",
                 conv: Optional[nn.Module] = None, fsmn: Optional[nn.Module] = None,
                 mlp: Optional[nn.Module] = None, post_norm: bool = False):
        super().__init__()
        check_bool("ResidualBlock", "post_norm", post_norm)
        self.norm = make_norm(norm, d_model)
        self.conv = conv
        self.mixer = mixer
        self.fsmn = fsmn
        self.mlp_norm = make_norm(norm, d_model) if mlp is not None else None
        self.mlp = mlp
        self.post_norm = post_norm

    def initial_state(self, batch: int, device=None) -> tuple:
        """``(conv window, mixer state, fsmn window)``, None for an absent (or non-streaming)
        part."""
        def state(part):
            init = getattr(part, "initial_state", None)
            return None if init is None else init(batch, device)
        return state(self.conv), state(self.mixer), state(self.fsmn)

    def _mix(self, h: torch.Tensor, state, prefix=None):
        """The mixer on ``h``; mixers that read whole sequences (no state) give a tensor.
        ``prefix`` goes only to a mixer in prefix mode (``RecurrentMixer``, published layers)."""
        if prefix is not None:
            out = self.mixer(h, state, prefix=prefix)
        else:
            out = self.mixer(h) if state is None else self.mixer(h, state)
        return out if isinstance(out, tuple) else (out, None)

    def forward(self, x: torch.Tensor, state: Optional[tuple] = None, prefix=None):
        """``x (B, T, D)``, ``state`` (None: a full sequence) -> ``(y (B, T, D), state)``;
        ``prefix (B,)``: the mixer reads the first ``prefix[b]`` steps non-causally."""
        conv_s, mix_s, fsmn_s = state if state is not None else (None, None, None)
        h = x if self.post_norm else self.norm(x)
        if self.conv is not None:
            h, conv_s = self.conv(h, conv_s)
        h, mix_s = self._mix(h, mix_s, prefix)
        if self.fsmn is not None:
            h, fsmn_s = self.fsmn(h, fsmn_s)
        x = self.norm(x + h) if self.post_norm else x + h
        if self.mlp is not None:
            x = self.mlp_norm(x + self.mlp(x)) if self.post_norm else x + self.mlp(self.mlp_norm(x))
        return x, (conv_s, mix_s, fsmn_s)


def block_parts(mixer: str, d_model: int, *, block: str = "default", mlp: Optional[str] = None,
                base_mlp: str = "swiglu", norm: Optional[str] = None, conv: int = 0,
                dynamic_conv: bool = False, fsmn: int = 0, fsmn_dilation: int = 1,
                heads: int = 4, window: Optional[int] = None, engine="auto",
                cell_options: Optional[dict] = None, causal: bool = True,
                post_norm: bool = False) -> dict:
    """``ResidualBlock``'s arguments for ``make_block`` (same arguments), built in the order
    conv, mixer, fsmn, MLP (a seed gives the same weights as the blocks this replaced)."""
    owner = "make_block"
    check_mixer(owner, "mixer", mixer)
    check_block(owner, block, mixer)
    check_int(owner, "conv", conv, 0)
    check_bool(owner, "dynamic_conv", dynamic_conv)
    check_int(owner, "fsmn", fsmn, 0)
    check_choice(owner, "base_mlp", base_mlp, MLPS)
    default_norm, default_mlp = PUBLISHED[mixer] if block == "published" else ("layer", "base")
    norm, mlp = norm or default_norm, mlp or default_mlp
    mlp = base_mlp if mlp == "base" else mlp
    check_choice(owner, "norm", norm, NORMS)
    check_choice(owner, "mlp", mlp, MLPS)
    if dynamic_conv and conv == 0:
        conv = 4
    conv_layer = None
    if conv:
        conv_layer = DynamicShortConv(d_model, conv, heads) if dynamic_conv \
            else ShortConv(d_model, conv)
    mixer_layer = make_mixer(mixer, d_model, heads, window, engine, cell_options, causal=causal,
                             block=block)
    fsmn_layer = FSMNMemory(d_model, fsmn, fsmn_dilation) if fsmn else None
    return dict(mixer=mixer_layer, d_model=d_model, norm=norm, conv=conv_layer, fsmn=fsmn_layer,
                mlp=make_mlp(mlp, d_model), post_norm=post_norm)


def make_block(mixer: str, d_model: int, **options) -> ResidualBlock:
    """The one block factory: a ``ResidualBlock`` around ``make_mixer(mixer, ...)``.

    Args (``options``, all by keyword; ``block_parts`` has the signature):
        mixer: ``"attention"`` or a registered cell.
        block: ``"default"`` (the cell as a ``Recurrent`` layer) or ``"published"`` (the
            family's published layer, norm and MLP, ``PUBLISHED``).
        mlp: the block's MLP (``MLPS``); default: ``base_mlp`` in the default block, the
            family's in the published one (``PUBLISHED``, where ``"base"`` is ``base_mlp``).
        base_mlp: the MLP of the model's default (Transformer-style) block: ``"swiglu"`` (LM),
            ``"gelu"`` (SequenceModel), ``"relu"`` (Universal Transformer).
        norm: override the block's norm (``"layer"`` or ``"rms"``).
        conv: width of a short causal conv before the mixer (0: none); ``dynamic_conv`` makes
            it a dynamic one (width 4 if ``conv`` is 0).
        fsmn, fsmn_dilation: order and dilation of an FSMN memory after the mixer (0: none).
        heads, window: attention heads and sliding window (attention mixers).
        engine, cell_options: the cell's engine and options (cell mixers); a published layer
            also takes its own ``expand`` (width of its inner layer over D) and ``kernel``
            (its convs' width, 4) there (``models/mixers.py``).
        causal: ``False`` mixes both ways (does not stream).
        post_norm: norms after the residual adds (the Universal Transformer).

    >>> import torch
    >>> block = make_block("mamba", 16, block="published")
    >>> y, state = block(torch.randn(2, 5, 16), block.initial_state(2))
    >>> tuple(y.shape)
    (2, 5, 16)
    """
    return ResidualBlock(**block_parts(mixer, d_model, **options))


def run_blocks(blocks, x: torch.Tensor, state=None, prefix=None):
    """``x`` through every block in turn, each with its own entry of ``state`` (None: a full
    sequence from zero state) -> ``(x, new_state)``, one entry per block. ``prefix (B,)``:
    every block's mixer in prefix mode (``nn/prefix.py``)."""
    new = []
    extra = {} if prefix is None else {"prefix": prefix}  # blocks of other models take none
    for i, block in enumerate(blocks):
        x, s = block(x, None if state is None else state[i], **extra)
        new.append(s)
    return x, new
