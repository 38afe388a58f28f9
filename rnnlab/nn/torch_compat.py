"""Drop-in replacements for ``torch.nn.RNN``, ``torch.nn.GRU`` and ``torch.nn.LSTM``.

Same constructor arguments, parameter names (``weight_ih_l0``, ``bias_hh_l1_reverse``,
``weight_hr_l0``...), call signature and return structure as torch, so state dicts load both ways;
plus ``engine=`` to pick how each layer runs. Each (layer, direction) is a rnnlab cell built on the
meta device; the module owns the parameters under torch's names and lends them to the cell for a
run (``Engine(..., params=...)``).
"""
from __future__ import annotations

import math
import warnings
from typing import List, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import cells as _cells
from ..checks import check_bool, check_choice, check_int, check_number
from ..engines import Engine, resolve


def reverse_padded(x: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """Reverse each sequence of ``x: (B, T, ...)`` within its length; padding stays in place.
    Its own inverse."""
    if lengths is None:
        return x.flip(1)
    T = x.shape[1]
    t = torch.arange(T, device=x.device).unsqueeze(0)  # (1, T)
    n = lengths.to(x.device).unsqueeze(1)  # (B, 1)
    idx = torch.where(t < n, n - 1 - t, t)  # (B, T)
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x))


def _check_arguments(name: str, sizes: dict, flags: dict, dropout) -> None:
    """torch.nn's checks with torch's exception types: a wrongly typed size or flag is a
    TypeError (an ``OptionTypeError``, also a ValueError), a size out of range or a bad dropout a
    ValueError; every message in the constructor's own argument names."""
    for arg, v in sizes.items():
        check_int(name, arg, v, 0 if arg == "proj_size" else 1)
    for arg, v in flags.items():  # a string "False" is truthy: refuse it, as torch does
        check_bool(name, arg, v)
    check_number(name, "dropout", dropout, 0, 1)


class _RNNBase(nn.Module):
    """Shared body of the drop-ins: ``mode`` is the rnnlab cell name of every layer."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None,
                 engine: Union[str, Engine] = "auto", **cell_options):
        super().__init__()
        name = type(self).__name__
        _check_arguments(name, dict(input_size=input_size, hidden_size=hidden_size,
                                    num_layers=num_layers, proj_size=proj_size),
                         dict(bias=bias, batch_first=batch_first, bidirectional=bidirectional),
                         dropout)
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{name}: dropout={dropout} acts between layers only, and "
                          f"num_layers=1", stacklevel=3)
        self.cell_name, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional, self.proj_size = float(dropout), bidirectional, proj_size
        self._cells: List[_cells.Cell] = []  # plain list: the cells hold meta placeholders only
        self._param_names: List[dict] = []
        out = proj_size or hidden_size
        for layer in range(num_layers):
            width = input_size if layer == 0 else out * self.num_directions
            for sfx in ("", "_reverse")[:self.num_directions]:
                opts = dict(cell_options, **({"proj_size": proj_size} if proj_size else {}))
                cell = _cells.get(mode, width, hidden_size, bias=bias, device="meta", **opts)
                names = {}
                for pname, p in cell.named_parameters():  # torch's order: ih, hh, b_ih, b_hh, hr
                    names[pname] = f"{pname}_l{layer}{sfx}"
                    self.register_parameter(names[pname], nn.Parameter(
                        torch.empty(p.shape, device=device, dtype=dtype)))
                self._cells.append(cell)
                self._param_names.append(names)
        self.engines = [resolve(engine, c) for c in self._cells]
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def engine_name(self) -> str:
        return self.engines[0].name

    @property
    def all_weights(self) -> List[List[nn.Parameter]]:
        return [[getattr(self, n) for n in names.values()] for names in self._param_names]

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self) -> None:
        """No-op, kept so code written for cuDNN modules runs unchanged."""

    def _params(self, i: int) -> dict:
        return {pname: getattr(self, tname) for pname, tname in self._param_names[i].items()}

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        for k, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                           ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, k) != default:
                s += f", {k}={getattr(self, k)}"
        return s + f", engine={self.engine_name}"

    # ---- call ------------------------------------------------------------------------------

    def _state_shapes(self, batch: int) -> List[Tuple[int, ...]]:
        """Shapes of ``h0`` (and ``c0`` for LSTM) as torch wants them."""
        ld = self.num_layers * self.num_directions
        shapes = [(ld, batch, self.proj_size or self.hidden_size)]
        if self.cell_name == "lstm":
            shapes.append((ld, batch, self.hidden_size))
        return shapes

    def _check_hx(self, hx, batch: int, unbatched: bool,
                  device: torch.device) -> List[torch.Tensor]:
        name = type(self).__name__
        shapes = self._state_shapes(batch)
        leaves = list(hx) if isinstance(hx, (tuple, list)) and len(shapes) == 2 else [hx]
        if len(leaves) != len(shapes) or not all(isinstance(t, torch.Tensor) for t in leaves):
            want = "a tuple (h_0, c_0)" if len(shapes) == 2 else "a tensor h_0"
            raise ValueError(f"{name}: hx must be {want}, got {type(hx).__name__}")
        out = []
        for i, (t, shape) in enumerate(zip(leaves, shapes)):
            want = (shape[0], shape[2]) if unbatched else shape
            label = ("h_0", "c_0")[i]
            if tuple(t.shape) != want:
                raise ValueError(f"{name}: hx {label} expected shape {want} "
                                 f"(num_layers*num_directions, {'' if unbatched else 'B, '}H), "
                                 f"got {tuple(t.shape)}")
            if not t.is_floating_point():
                raise TypeError(f"{name}: hx {label} must have a floating dtype, got {t.dtype}")
            if t.device != device:
                raise ValueError(f"{name}: hx {label} is on {t.device} but input is on {device}; "
                                 f"move both to one device")
            out.append(t.unsqueeze(1) if unbatched else t)
        return out

    def _unpack_input(self, input):
        """-> (x (B, T, D), lengths or None, packed-info or None, unbatched)."""
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            x, lengths = pad_packed_sequence(input, batch_first=True)  # (B, T, D), (B,) orig order
            return x, lengths, input, False
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{name}: input must be a Tensor or PackedSequence, "
                            f"got {type(input).__name__}")
        if input.dim() not in (2, 3):
            layout = "(B, T, D)" if self.batch_first else "(T, B, D)"
            raise ValueError(f"{name}: input must be 3-D {layout} or 2-D (T, D) unbatched, "
                             f"got shape {tuple(input.shape)}")
        if not input.is_floating_point():
            raise TypeError(f"{name}: input must have a floating dtype, got {input.dtype}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{name}: input must have input_size={self.input_size} features in "
                             f"its last dim, got shape {tuple(input.shape)}")
        unbatched = input.dim() == 2
        x = input.unsqueeze(0) if unbatched else (input if self.batch_first
                                                  else input.transpose(0, 1))  # -> (B, T, D)
        layout = "(T, D)" if unbatched else "(B, T, D)" if self.batch_first else "(T, B, D)"
        if x.shape[1] == 0 or x.shape[0] == 0:
            what = "one time step (T >= 1)" if x.shape[1] == 0 else "one sequence (B >= 1)"
            raise ValueError(f"{name}: input must have at least {what}; {layout} shape expected, "
                             f"got {tuple(input.shape)}")
        return x, None, None, unbatched

    def _run_layers(self, x, lengths, h0s):
        """All layers and directions; ``h0s``: list of per-(layer, dir) cell states."""
        finals = []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                i = layer * self.num_directions + d
                xin = x if d == 0 else reverse_padded(x, lengths)
                y, h = self.engines[i](self._cells[i], xin, h0s[i], lengths, params=self._params(i))
                outs.append(y if d == 0 else reverse_padded(y, lengths))
                finals.append(h)
            x = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]  # (B, T, dirs*H_out)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        return x, finals

    def forward(self, input, hx=None):
        x, lengths, packed, unbatched = self._unpack_input(input)
        weight = next(self.parameters())
        if x.device != weight.device:
            raise ValueError(f"{type(self).__name__}: input is on {x.device} but the module's "
                             f"parameters are on {weight.device}; move one with .to(device)")
        B = x.shape[0]
        if hx is None:
            hx_leaves = [torch.zeros(s, dtype=x.dtype, device=x.device)
                         for s in self._state_shapes(B)]
        else:
            hx_leaves = self._check_hx(hx, B, unbatched, x.device)
        lstm = self.cell_name == "lstm"
        h0s = [tuple(t[i] for t in hx_leaves) if lstm else hx_leaves[0][i]
               for i in range(len(self._cells))]
        y, finals = self._run_layers(x, lengths, h0s)
        leaves = [torch.stack([f[j] if lstm else f for f in finals]).to(y.dtype)
                  for j in range(len(hx_leaves))]  # each (L*dirs, B, H)
        if packed is not None:
            idx = packed.sorted_indices
            y_sorted = y if idx is None else y.index_select(0, idx)
            n_sorted = lengths if idx is None else lengths.index_select(0, idx.cpu())
            data = pack_padded_sequence(y_sorted, n_sorted, batch_first=True).data
            y = PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                               packed.unsorted_indices)
        elif unbatched:
            y, leaves = y.squeeze(0), [t.squeeze(1) for t in leaves]
        elif not self.batch_first:
            y = y.transpose(0, 1)  # (B, T, H) -> (T, B, H)
        return y, (tuple(leaves) if lstm else leaves[0])


class RNN(_RNNBase):
    """Drop-in ``torch.nn.RNN`` (Elman, tanh or relu), plus ``engine=``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None,
                 engine: Union[str, Engine] = "auto"):
        check_choice("RNN", "nonlinearity", nonlinearity, ("tanh", "relu"))
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, 0, device, dtype, engine)


class GRU(_RNNBase):
    """Drop-in ``torch.nn.GRU`` (gate order r, z, n; reset after the matmul), plus ``engine=``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None,
                 engine: Union[str, Engine] = "auto"):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, engine)


class LSTM(_RNNBase):
    """Drop-in ``torch.nn.LSTM`` (gate order i, f, g, o; optional ``proj_size``), plus
    ``engine=``. Returns ``output, (h_n, c_n)``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None,
                 engine: Union[str, Engine] = "auto"):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, engine)
