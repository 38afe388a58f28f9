"""Pointer network (Vinyals, Fortunato & Jaitly, 2015): an encoder-decoder whose output at each
step is a distribution over the positions of its input.

An encoder (``Recurrent`` layer of any registered cell) reads the n input elements into
``e_j (B, n, H_out)``. A decoder of the same cell, initialised with the encoder's final state,
is stepped once per output; its input at step i is the element chosen at step i-1 (a learned
start vector at step 0). Pointer attention scores every candidate:
``u_j = vᵀ tanh(W1 e_j + W2 d_i)``, ``p(C_i = j) = softmax_j(u_j)``.

With ``end=True`` (default) a learned end candidate sits at index n (its key is learned, as is
the decoder input fed after it), so logits are ``(B, L, n + 1)``; this is the convention of
``rnnlab.tasks.pointer`` (targets: indices, then n). With ``mask_chosen=True`` (default) a
position chosen once is masked (logit = dtype min) at every later step, in training (from the
targets) and in decoding alike; after the end marker every input is masked, so later steps point
at the end marker.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..checks import check_bool, check_int
from ..nn.recurrent import Recurrent
from .block import check_mixer


class PointerNet(nn.Module):
    """``logits = model(points, targets)`` (teacher forcing) or ``model(points)`` (greedy);
    ``indices = model.decode(points)``.

    Args:
        input_dim: F, features per input element.
        hidden: H, the cell's hidden size (encoder and decoder).
        cell: a registered cell name (``rnnlab.cells.available()``), default ``"lstm"``.
        attention: A, width of the pointer attention (default ``hidden``).
        end: add the end-marker candidate at index n.
        mask_chosen: never point twice at the same input.
        engine: the encoder's engine (the decoder steps sequentially).
        cell_kwargs: options of the cell.

    Shapes: ``points (B, n, F)`` float; ``targets (B, L)`` long in ``[0, n + end)``;
    logits ``(B, L, n + end)``; indices ``(B, L)``.
    """

    def __init__(self, input_dim: int, hidden: int = 64, cell: str = "lstm",
                 attention: Optional[int] = None, end: bool = True, mask_chosen: bool = True,
                 engine="auto", **cell_kwargs):
        super().__init__()
        check_int("PointerNet", "input_dim", input_dim, 1)
        check_int("PointerNet", "hidden", hidden, 1)
        attention = hidden if attention is None else attention
        check_int("PointerNet", "attention", attention, 1)
        check_mixer("PointerNet", "cell", cell, attention=False)
        check_bool("PointerNet", "end", end)
        check_bool("PointerNet", "mask_chosen", mask_chosen)
        self.input_dim, self.end, self.mask_chosen = input_dim, end, mask_chosen
        self.encoder = Recurrent(cell, engine, input_size=input_dim, hidden_size=hidden,
                                 **cell_kwargs)
        self.decoder = Recurrent(cell, "sequential", input_size=input_dim, hidden_size=hidden,
                                 **cell_kwargs)
        width = self.encoder.output_size
        self.w1 = nn.Linear(width, attention, bias=False)
        self.w2 = nn.Linear(self.decoder.output_size, attention)
        self.v = nn.Linear(attention, 1, bias=False)
        self.start = nn.Parameter(torch.zeros(input_dim))  # decoder input at step 0
        self.end_input = nn.Parameter(torch.zeros(input_dim))  # decoder input after END
        self.end_key = nn.Parameter(0.1 * torch.randn(width))  # e_n, the END "encoding"

    def _check(self, points: torch.Tensor, targets: Optional[torch.Tensor],
               steps: Optional[int]) -> int:
        """Validate the inputs; the number of output steps L."""
        if points.dim() != 3 or points.shape[-1] != self.input_dim or \
                not points.is_floating_point():
            raise ValueError(f"PointerNet: points must be float (B, n, {self.input_dim}), got "
                             f"{points.dtype} {tuple(points.shape)}")
        n = points.shape[1]
        choices = n + int(self.end)
        if targets is not None:
            if targets.shape[:1] != points.shape[:1] or targets.dim() != 2 or \
                    targets.dtype != torch.long:
                raise ValueError(f"PointerNet: targets must be long (B, L) with "
                                 f"B={points.shape[0]}, got {targets.dtype} "
                                 f"{tuple(targets.shape)}")
            if targets.numel() and (targets.min() < 0 or targets.max() >= choices):
                raise ValueError(f"PointerNet: targets must be in [0, {choices}), got values in "
                                 f"[{int(targets.min())}, {int(targets.max())}]")
            return targets.shape[1]
        steps = choices if steps is None else steps
        most = n if (self.mask_chosen and not self.end) else None
        check_int("PointerNet", "steps", steps, 1, most)
        return steps

    def forward(self, points: torch.Tensor, targets: Optional[torch.Tensor] = None,
                steps: Optional[int] = None) -> torch.Tensor:
        """Pointer logits ``(B, L, n + end)``. With ``targets (B, L)`` the decoder is fed the
        targets (teacher forcing); without, its own greedy choices for ``steps`` steps
        (default n + end)."""
        logits, _ = self._run(points, targets, steps)
        return logits

    @torch.no_grad()
    def decode(self, points: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        """Greedy decoding with masking: indices ``(B, L)`` into the n inputs (n = END)."""
        return self._run(points, None, steps)[1]

    def _run(self, points, targets, steps):
        L = self._check(points, targets, steps)
        B, n, _ = points.shape
        enc, state = self.encoder(points)  # (B, n, H_out)
        cand = points
        keys = self.w1(enc)  # (B, n, A)
        if self.end:
            cand = torch.cat([points, self.end_input.expand(B, 1, -1).to(points.dtype)], 1)
            keys = torch.cat([keys, self.w1(self.end_key).expand(B, 1, -1).to(keys.dtype)], 1)
        chosen = torch.zeros(B, cand.shape[1], dtype=torch.bool, device=points.device)
        x = self.start.expand(B, -1).to(points.dtype)  # (B, F)
        rows = torch.arange(B, device=points.device)
        all_logits, picks = [], []
        for i in range(L):
            d, state = self.decoder.step(x[:, None], state)  # (B, 1, H_out)
            u = self.v(torch.tanh(keys + self.w2(d))).squeeze(-1)  # (B, n + end)
            if self.mask_chosen:
                u = u.masked_fill(chosen, torch.finfo(u.dtype).min)
            pick = targets[:, i] if targets is not None else u.argmax(-1)  # (B,)
            all_logits.append(u)
            picks.append(pick)
            chosen = self._mark(chosen, rows, pick, n)
            x = cand[rows, pick]  # (B, F): the chosen element is the next input
        return torch.stack(all_logits, 1), torch.stack(picks, 1)  # (B, L, n + end), (B, L)

    def _mark(self, chosen: torch.Tensor, rows: torch.Tensor, pick: torch.Tensor,
              n: int) -> torch.Tensor:
        """``chosen (B, n + end)`` with ``pick (B,)`` marked; after END every input is."""
        chosen = chosen.clone()
        chosen[rows, pick] = True
        if self.end:
            chosen[:, :n] |= (pick == n)[:, None]
            chosen[:, n] = False  # END stays available
        return chosen
