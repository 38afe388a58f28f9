"""The published layers around rnnlab's cells: each family's own mixer, as its paper and reference
code build it, ``(B, T, D) -> (B, T, D)``. ``block="published"`` in the models (and the arena's
``mamba[-1,1]`` etc.) uses them; ``rnnlab.models.block.make_block`` puts them in a residual block
with the family's norm and MLP.

- ``MambaLayer`` (Gu & Dao 2023, https://arxiv.org/abs/2312.00752): ``in_proj`` D -> 2E to x and
  z; causal depthwise conv (width 4, bias) + SiLU on x; the S6 scan (with its D skip);
  ``y * SiLU(z)``; ``out_proj`` E -> D. E = ``expand`` D (2).
- ``Mamba2Layer`` (Dao & Gu 2024, https://arxiv.org/abs/2405.21060): ``in_proj`` to z, [x, B, C]
  and dt; conv + SiLU on [x, B, C]; the SSD scan; gated RMSNorm ``norm(y * SiLU(z))``; out_proj.
- ``DeltaLayer`` for DeltaNet, Gated DeltaNet and DeltaProduct (fla's layers): q, k, v, beta
  (and the decay) projections; short convs (width 4) on q, k, v, SiLU on each (the cell applies
  q and k's SiLU, then L2 norm); RMSNorm per head on the output, gated by ``SiLU(g_proj x)`` for
  Gated DeltaNet and DeltaProduct; ``o_proj``.
- ``MLSTMLayer`` (xLSTM's pre-up-projection block, Beck et al. 2024,
  https://arxiv.org/abs/2405.04517): up-projection D -> 2E to x and z; conv + SiLU on x feeds q
  and k (head-wise projections, blocks of 4), v from x; i, f gates from [q, k, v]; the mLSTM;
  per-head LayerNorm; learnable skip of the conv output; ``* SiLU(z)``; down-projection.
- ``SLSTMLayer`` (xLSTM's post-up-projection block, its mixer part): conv + SiLU on x feeds i and
  f, x feeds z and o (head-wise projections); the sLSTM; per-head LayerNorm. The block adds the
  gated MLP (factor 4/3).

Every layer streams: ``forward(x, state) -> (y, state)`` with ``state`` its conv windows and the
cell's state, from ``initial_state(B)``; chunks of any length equal one run. ``forward(x, state,
prefix=(B,))`` runs the cell in prefix mode (``nn/prefix.py``). The cell inside is
``self.rnn`` (a ``Recurrent``), fed with ``in_proj=False`` so the layer owns every projection.
"""
from __future__ import annotations

import inspect
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import cells as _cells
from ..cells.mlstm import init_gates_
from ..cells.paragru import HeadwiseLinear
from ..checks import check_int, is_int
from ..nn.conv import ShortConv
from ..nn.prefix import prefix_forward
from ..nn.recurrent import Recurrent

EPS = 1e-5  # the norms' epsilon, as mamba_ssm, fla and xlstm set it


def cell_default(cell: str, option: str, options: dict):
    """``options[option]`` or the default of ``option`` in cell ``cell``'s constructor."""
    if option in options:
        return options[option]
    return inspect.signature(_cells.registry.constructor(cell)).parameters[option].default


def _options(owner: str, options: Optional[dict], fixed=("in_proj",)) -> dict:
    """The cell options a layer passes on; the ones the layer sets itself are refused."""
    options = dict(options or {})
    for name in fixed:
        if name in options:
            raise ValueError(f"{owner}: {name} is set by the published layer, got "
                             f"{name}={options[name]!r}")
    return options


def run_cell(rnn: Recurrent, u: torch.Tensor, state, prefix=None):
    """The layer's cell on ``u (B, T, P)``: causal, or given ``prefix (B,)`` in prefix mode
    (``nn/prefix.py``; the layer's short convs stay causal)."""
    return rnn(u, initial_state=state) if prefix is None else prefix_forward(rnn, u, prefix, state)


def conv(width: int, kernel: int, bias: bool = True) -> ShortConv:
    """The published layers' causal depthwise conv, initialised as ``nn.Conv1d``."""
    return ShortConv(width, kernel, bias=bias, init="uniform")


class ConvThenCell(nn.Module):
    """A published layer whose state is its short conv's window, then its cell's state."""

    def initial_state(self, batch: int, device=None):
        return self.conv.initial_state(batch, device), self.rnn.initial_state(batch, device)


class HeadLayerNorm(nn.Module):
    """LayerNorm over each head's channels of ``(..., heads * d)`` with a per-channel weight and
    no bias (xLSTM's ``MultiHeadLayerNorm``)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unflatten(-1, (self.heads, -1))  # (..., heads * d) -> (..., heads, d)
        return F.layer_norm(h, h.shape[-1:], eps=EPS).flatten(-2) * self.weight  # (..., D)


class MambaLayer(ConvThenCell):
    """Mamba's block mixer (module docstring); ``cell_options`` go to the ``mamba`` cell
    (``dt_rank`` defaults to ceil(D / 16) as in mamba_ssm)."""

    def __init__(self, d_model: int, engine="auto", expand: int = 2, kernel: int = 4,
                 **cell_options):
        super().__init__()
        check_int("MambaLayer", "expand", expand, 1)
        options = _options("MambaLayer", cell_options)
        options.setdefault("dt_rank", math.ceil(d_model / 16))
        E = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv = conv(E, kernel)
        self.rnn = Recurrent("mamba", engine, input_size=E, hidden_size=E, in_proj=False,
                             **options)
        self.out_proj = nn.Linear(E, d_model, bias=False)


    def forward(self, x: torch.Tensor, state=None, prefix=None):
        conv_s, rnn_s = (None, None) if state is None else state
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, 2E) -> 2 x (B, T, E)
        x, conv_s = self.conv(x, conv_s)
        y, rnn_s = run_cell(self.rnn, F.silu(x), rnn_s, prefix)  # (B, T, E)
        return self.out_proj(y * F.silu(z)), (conv_s, rnn_s)  # (B, T, D)


class Mamba2Layer(ConvThenCell):
    """Mamba-2's block mixer (module docstring); ``cell_options`` go to the ``mamba2`` cell."""

    def __init__(self, d_model: int, engine="auto", expand: int = 2, kernel: int = 4,
                 **cell_options):
        super().__init__()
        check_int("Mamba2Layer", "expand", expand, 1)
        options = _options("Mamba2Layer", cell_options)
        E, N = expand * d_model, cell_default("mamba2", "state_size", options)
        P = cell_default("mamba2", "head_dim", options) or min(E, 64)
        heads = E // P if is_int(P) and P >= 1 and E % P == 0 else 1  # else the cell says why
        self.sizes = (E, N, heads)
        self.in_proj = nn.Linear(d_model, 2 * E + 2 * N + heads, bias=False)  # z, xBC, dt
        self.conv = conv(E + 2 * N, kernel)
        self.rnn = Recurrent("mamba2", engine, input_size=E + heads + 2 * N, hidden_size=E,
                             in_proj=False, **options)
        self.norm = nn.RMSNorm(E, eps=EPS)
        self.out_proj = nn.Linear(E, d_model, bias=False)


    def forward(self, x: torch.Tensor, state=None, prefix=None):
        conv_s, rnn_s = (None, None) if state is None else state
        E, N, heads = self.sizes
        z, xbc, dt = self.in_proj(x).split([E, E + 2 * N, heads], dim=-1)
        xbc, conv_s = self.conv(xbc, conv_s)
        xs, b, c = F.silu(xbc).split([E, N, N], dim=-1)
        u = torch.cat([xs, dt, b, c], dim=-1)  # (B, T, E + heads + 2N): the cell's [x, dt, B, C]
        y, rnn_s = run_cell(self.rnn, u, rnn_s, prefix)  # (B, T, E)
        return self.out_proj(self.norm(y * F.silu(z))), (conv_s, rnn_s)  # (B, T, D)


class DeltaLayer(nn.Module):
    """fla's DeltaNet / GatedDeltaNet / GatedDeltaProduct layer around the cell ``cell``
    (module docstring); H = ``expand`` D values, ``cell_options`` (heads, key_dim, substeps,
    gated, allow_neg_eigval, ...) go to the cell."""

    CELLS = ("deltanet", "gated_deltanet", "deltaproduct")

    def __init__(self, d_model: int, cell: str = "deltanet", engine="auto", expand: int = 1,
                 kernel: int = 4, **cell_options):
        super().__init__()
        check_int("DeltaLayer", "expand", expand, 1)
        options = _options("DeltaLayer", cell_options)
        H = expand * d_model
        self.rnn = Recurrent(cell, engine, input_size=self._width(cell, H, options),
                             hidden_size=H, in_proj=False, **options)
        c = self.rnn.cell
        n, nk = c.substeps, c.heads * c.key_dim
        self.gated = cell == "gated_deltanet" or getattr(c, "gated", False)
        self.q_proj = nn.Linear(d_model, nk, bias=False)
        self.k_proj = nn.Linear(d_model, n * nk, bias=False)
        self.v_proj = nn.Linear(d_model, n * H, bias=False)
        self.b_proj = nn.Linear(d_model, n * c.heads, bias=False)
        self.a_proj = nn.Linear(d_model, c.heads, bias=False) if self.gated else None
        self.q_conv, self.k_conv, self.v_conv = (conv(w, kernel, bias=False)
                                                 for w in (nk, n * nk, n * H))
        self.g_proj = nn.Linear(d_model, H, bias=False) if cell != "deltanet" else None
        self.o_norm = nn.RMSNorm(c.value_dim, eps=EPS)  # per head, shared by the heads
        self.o_proj = nn.Linear(H, d_model, bias=False)

    @staticmethod
    def _width(cell: str, H: int, options: dict) -> int:
        """The cell's input width P for ``in_proj=False``; 1 where an option is invalid (the
        cell's constructor then names it)."""
        heads, K = (cell_default(cell, k, options) for k in ("heads", "key_dim"))
        n, gated = 1, cell == "gated_deltanet"
        if cell == "deltaproduct":
            n, gated = (cell_default(cell, k, options) for k in ("substeps", "gated"))
        if not (is_int(heads) and heads >= 1 and H % heads == 0 and is_int(n)
                and (K is None or is_int(K))):
            return 1
        nk = heads * (H // heads if K is None else K)
        return max(1, nk + n * (nk + H + heads) + bool(gated) * heads)

    def initial_state(self, batch: int, device=None):
        convs = tuple(m.initial_state(batch, device) for m in (self.q_conv, self.k_conv,
                                                               self.v_conv))
        return convs + (self.rnn.initial_state(batch, device),)

    def forward(self, x: torch.Tensor, state=None, prefix=None):
        qs, ks, vs, rnn_s = (None,) * 4 if state is None else state
        c = self.rnn.cell
        q, qs = self.q_conv(self.q_proj(x), qs)  # (B, T, heads K): the cell applies SiLU, L2
        k, ks = self.k_conv(self.k_proj(x), ks)  # (B, T, n heads K)
        v, vs = self.v_conv(self.v_proj(x), vs)
        v, beta = F.silu(v), self.b_proj(x)  # (B, T, n H), (B, T, n heads)
        if c.substeps > 1:  # the cell's layout: per sub-step [k_j, v_j, beta_j]
            steps = [t.unflatten(-1, (c.substeps, -1)) for t in (k, v, beta)]
            parts = [q, torch.cat(steps, dim=-1).flatten(-2)]  # (B, T, n (heads K + H + heads))
        else:
            parts = [q, k, v, beta]
        if self.a_proj is not None:
            parts.append(self.a_proj(x))  # (B, T, heads): the decay's input
        o, rnn_s = run_cell(self.rnn, torch.cat(parts, dim=-1), rnn_s, prefix)  # (B, T, H)
        o = self.o_norm(o.unflatten(-1, (c.heads, c.value_dim)))  # (B, T, heads, V)
        if self.g_proj is not None:
            o = o * F.silu(self.g_proj(x)).unflatten(-1, (c.heads, c.value_dim))
        return self.o_proj(o.flatten(-2)), (qs, ks, vs, rnn_s)  # (B, T, D)


def _block_size(width: int, most: int = 4) -> int:
    """The largest block size <= ``most`` dividing ``width`` (xLSTM's q, k, v blocks are 4)."""
    return next(b for b in range(most, 0, -1) if width % b == 0)


class MLSTMLayer(ConvThenCell):
    """xLSTM's mLSTM block mixer (module docstring); E = ``expand`` D, ``heads`` (default 4
    where it divides E) and other ``cell_options`` go to the ``mlstm`` cell."""

    def __init__(self, d_model: int, engine="auto", expand: int = 2, kernel: int = 4,
                 **cell_options):
        super().__init__()
        check_int("MLSTMLayer", "expand", expand, 1)
        options = _options("MLSTMLayer", cell_options, ("in_proj", "output_gate", "key_dim"))
        E = expand * d_model
        options.setdefault("heads", 4 if E % 4 == 0 else 1)
        heads = options["heads"]
        self.up_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv = conv(E, kernel)
        self.q_proj, self.k_proj, self.v_proj = (HeadwiseLinear(E, E, 1, E // _block_size(E))
                                                 for _ in range(3))
        self.rnn = Recurrent("mlstm", engine, input_size=3 * E + 2 * heads, hidden_size=E,
                             in_proj=False, output_gate=False, **options)
        self.gates = nn.Linear(3 * E, 2 * heads)  # i~, f~ from [q, k, v]
        init_gates_(self.gates.weight, self.gates.bias, heads)
        self.norm = HeadLayerNorm(E, heads)
        self.skip = nn.Parameter(torch.ones(E))
        self.down_proj = nn.Linear(E, d_model, bias=False)


    def forward(self, x: torch.Tensor, state=None, prefix=None):
        conv_s, rnn_s = (None, None) if state is None else state
        xm, z = self.up_proj(x).chunk(2, dim=-1)  # (B, T, 2E) -> 2 x (B, T, E)
        xc, conv_s = self.conv(xm, conv_s)
        xc = F.silu(xc)
        qkv = torch.cat([self.q_proj(xc), self.k_proj(xc), self.v_proj(xm)], dim=-1)  # (.., 3E)
        u = torch.cat([qkv, self.gates(qkv)], dim=-1)  # (B, T, 3E + 2 heads)
        h, rnn_s = run_cell(self.rnn, u, rnn_s, prefix)  # (B, T, E)
        h = self.norm(h) + self.skip * xc
        return self.down_proj(h * F.silu(z)), (conv_s, rnn_s)  # (B, T, D)


class SLSTMLayer(ConvThenCell):
    """xLSTM's sLSTM layer (module docstring); ``heads`` and other ``cell_options`` go to the
    ``slstm`` cell (H = D)."""

    def __init__(self, d_model: int, engine="auto", kernel: int = 4, **cell_options):
        super().__init__()
        options = _options("SLSTMLayer", cell_options)
        self.rnn = Recurrent("slstm", engine, input_size=4 * d_model, hidden_size=d_model,
                             in_proj=False, **options)
        heads = self.rnn.cell.heads
        self.conv = conv(d_model, kernel)
        self.if_proj = HeadwiseLinear(d_model, d_model, 2, heads)  # i, f from the conv
        self.zo_proj = HeadwiseLinear(d_model, d_model, 2, heads)  # z, o from x
        self.norm = HeadLayerNorm(d_model, heads)


    def forward(self, x: torch.Tensor, state=None, prefix=None):
        conv_s, rnn_s = (None, None) if state is None else state
        xc, conv_s = self.conv(x, conv_s)
        u = torch.cat([self.if_proj(F.silu(xc)), self.zo_proj(x)], dim=-1)  # (B, T, 4D)
        h, rnn_s = run_cell(self.rnn, u, rnn_s, prefix)  # (B, T, D)
        return self.norm(h), (conv_s, rnn_s)


def published_layer(cell: str, d_model: int, engine="auto",
                    cell_options: Optional[dict] = None) -> nn.Module:
    """The published layer of ``cell`` (a name in ``LAYERS``), ``(B, T, D) -> (B, T, D)``."""
    options = dict(cell_options or {})
    if cell in DeltaLayer.CELLS:
        return DeltaLayer(d_model, cell, engine, **options)
    return LAYERS[cell](d_model, engine, **options)


LAYERS = {"mamba": MambaLayer, "mamba2": Mamba2Layer, "deltanet": DeltaLayer,
          "gated_deltanet": DeltaLayer, "deltaproduct": DeltaLayer, "mlstm": MLSTMLayer,
          "slstm": SLSTMLayer}
