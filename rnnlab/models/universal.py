"""Universal Transformer (Dehghani et al., ICLR 2019): one shared block applied recurrently in
depth, with per-position Adaptive Computation Time (Graves 2016) deciding how many times.

Each depth step t = 1, 2, ... runs the *same* block on the state ``H (B, T, D)``::

    P^t = sinusoid(position) + sinusoid(t)                 # coordinate embedding, (T, D)
    A^t = LN(H^{t-1} + P^t + Mixer(H^{t-1} + P^t))
    H^t = LN(A^t + Transition(A^t))                        # Transition: D -> 4D -> D, ReLU

The mixer is self-attention (causal by default; rotary positions inside too, unless
``rotary=False``, the paper's UT) or any registered
recurrent cell, so the same depth recurrence runs over a Transformer or an RNN; ``block=
"published"`` uses the cell family's published layer as the mixer (``models.block.make_mixer``).
The depth step ``SharedBlock`` is the ``ResidualBlock`` of every other model with its norms after
the residual adds (``post_norm=True``) and a ReLU MLP of width 4D.

ACT, per position (UT's formulation of Graves's rule, threshold ``θ = 1 - eps``). Before step t
the halting probability ``p^t = σ(w·(H^{t-1} + P^t) + b)`` is read (``b`` starts at
``halting_bias``). A position halts at the first step ``N`` where ``Σ_{n≤N} p^n ≥ θ`` or where
``N = max_steps``; its remainder is ``R = 1 - Σ_{n<N} p^n`` and its update weights are
``w^n = p^n`` for ``n < N``, ``w^N = R`` and 0 after, so ``Σ_n w^n = 1`` for every position.
The next step's input is the *unweighted* ``H^t`` (halted positions keep being transformed, so
others can still attend to them); the model's output state ``Y`` combines the steps:

- ``act_combine="interpolate"`` (UT, the default): ``Y ← w^t·H^t + (1 - w^t)·Y`` from ``Y = 0``;
- ``act_combine="sum"`` (Graves): ``Y = Σ_n w^n H^n``, a convex combination.

The loop stops when every position has halted (at most ``max_steps`` steps).

Two bugs of the tensor2tensor reference are *not* reproduced: it writes
``previous_state * 1 - update_weights`` (precedence: ``prev - w`` instead of ``prev·(1 - w)``),
and positions stopped by the step limit there get no remainder, so their weights sum to less than
1 and their ponder cost misses R; here the step limit halts them like the threshold does.

Ponder cost (the quantity added to the loss): ``ponder_weight · mean_{B,T}(N + R)``, the
per-position mean of Graves's ``N(t) + R(t)`` over the batch and every position (t2t's
normalisation; a per-position mean keeps ``ponder_weight`` independent of batch size and
length, like a per-position cross-entropy). ``N`` is piecewise constant, so its gradient flows
only through ``R``: ``∂(N + R)/∂p^n = -1`` for ``n < N`` and 0 otherwise.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..checks import check_bool, check_choice, check_int, check_number
from .attention import SelfAttention  # noqa: F401 - re-exported
from .block import (  # noqa: F401 - re-exported
    ATTENTION,
    BidirectionalMixer,
    ResidualBlock,
    check_block,
    check_mixer,
    make_mixer,
    make_mlp,
)

COMBINES = ("interpolate", "sum")
KINDS = ("tokens", "real")


def sinusoid(index: torch.Tensor, d_model: int) -> torch.Tensor:
    """Sinusoidal embedding of ``index (...)`` (e.g. ``(T,)``): ``(..., D)``, sines then cosines
    over geometric timescales from 1 to 10^4 (Vaswani et al.; t2t's ``get_timing_signal_1d``)."""
    half = d_model // 2
    scale = math.log(1e4) / max(half - 1, 1)
    freqs = torch.exp(-scale * torch.arange(half, dtype=torch.float32, device=index.device))
    angles = index.float()[..., None] * freqs  # (..., D/2)
    signal = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (..., 2*(D/2))
    return nn.functional.pad(signal, (0, d_model - 2 * half))  # (..., D), odd D pads one zero


class SharedBlock(ResidualBlock):
    """One depth step: ``H^t = LN(A + Transition(A))``, ``A = LN(x + Mixer(x))``,
    ``x = H^{t-1} + P^t``; all ``(B, T, D)``. The post-norm ``ResidualBlock`` with a ReLU MLP of
    width 4D; ``forward(x) -> y`` (the mixers that read both ways keep no state)."""

    LEGACY = {"norm1.": "norm.", "transition.": "mlp.", "norm2.": "mlp_norm."}  # old -> new

    def __init__(self, mixer: nn.Module, d_model: int):
        super().__init__(mixer, d_model, mlp=make_mlp("relu", d_model), post_norm=True)

    def forward(self, x: torch.Tensor, prefix: Optional[torch.Tensor] = None) -> torch.Tensor:
        return super().forward(x, None, prefix)[0]  # (B, T, D)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        """State dicts saved before the block became a ``ResidualBlock`` (``norm1``,
        ``transition``, ``norm2``) load under the new names."""
        for old, new in self.LEGACY.items():
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args)


class UniversalTransformer(nn.Module):
    """``logits = model(inputs)``: ``(B, T)`` tokens or ``(B, T, vocab_size)`` reals ->
    ``(B, T, n_outputs)``; one shared block applied up to ``max_steps`` times (see module doc).

    Args:
        vocab_size: input tokens (``kind="tokens"``) or input channels (``kind="real"``).
        n_outputs: classes, or output channels.
        d_model: width D.
        max_steps: most depth steps (exactly this many when ``act=False``).
        mixer: ``"attention"`` or a registered cell name (``rnnlab.cells.available()``).
        causal: position t sees only positions <= t; ``False`` attends both ways (attention)
            or adds a time-reversed copy of the recurrent mixer.
        heads: attention heads (None: 4); for a cell mixer, the cell's ``heads`` option.
        act: adaptive computation time; ``False`` runs exactly ``max_steps`` steps.
        eps: ACT threshold is ``1 - eps``, ``0 < eps < 1``.
        ponder_weight: τ, the factor of the ponder cost, >= 0.
        halting_bias: initial bias of the halting unit (σ(1) ≈ 0.73: most positions halt
            after 2 steps at init).
        act_combine: ``"interpolate"`` (UT) or ``"sum"`` (Graves): how steps form the output.
        block: ``"default"`` (the cell as a ``Recurrent`` layer) or ``"published"`` (the cell
            family's published layer as the mixer).
        position_offset: in training only, each sequence's positions start at a random offset
            in ``[0, position_offset]`` (as the UT paper trains its algorithmic tasks, recalled
            from the paper: so that positions beyond the train lengths have been seen); 0
            (default) never shifts. The offsets come from the model's own generator, whose
            state is a buffer (``offset_rng``), so a checkpointed run resumes exactly.
        restart_at: a token id (``kind="tokens"`` only): in each row, positions start again
            from 0 at the first occurrence of this token, and a learned segment embedding
            marks the steps from it on. An encoder-decoder's alignment in one stream: with the
            delimiter of copy, reverse or addition, the output step at position p sits at the
            same position as input symbol p (one random offset serves both parts). None
            (default): positions run on.
        rotary: RoPE inside the attention (default); False leaves the coordinates above as the
            only positions, as in the paper's UT (attention mixers only).
        encoder: with ``restart_at`` and causal attention, the steps before each row's restart
            token also attend ahead to each other (a prefix-LM mask): the paper's bidirectional
            encoder, in one stream. The steps from the restart token on stay causal.
        tied: one block shared by every depth step (the UT, default); False gives each of the
            ``max_steps`` steps a block of its own (``layers``). With ``act=False`` that is the
            paper's own view of a standard Transformer (distinct layers, fixed depth), with the
            same positions as the UT: the control that tells the UT's recurrence in depth from
            its position scheme (the coordinates are still added before every step).
        cell_kwargs: options of the cell (recurrent mixers only).

    After each forward: ``ponder_cost`` (scalar tensor, differentiable: add it to the loss),
    ``n_updates (B, T)`` steps each position took (N), ``remainders (B, T)`` (R, 0 without
    ACT) and ``update_weights (B, T, S)`` the per-step weights w (S steps were run).
    """

    def __init__(self, vocab_size: int, n_outputs: int, d_model: int = 64, max_steps: int = 6,
                 mixer: str = ATTENTION, causal: bool = True, heads: Optional[int] = None,
                 act: bool = True, eps: float = 0.01, ponder_weight: float = 0.01,
                 halting_bias: float = 1.0, act_combine: str = "interpolate",
                 kind: str = "tokens", engine="auto", block: str = "default",
                 position_offset: int = 0, restart_at: Optional[int] = None,
                 rotary: bool = True, encoder: bool = False, tied: bool = True,
                 **cell_kwargs):
        super().__init__()
        check_int("UniversalTransformer", "position_offset", position_offset, 0)
        self._check(vocab_size, n_outputs, d_model, max_steps, mixer, causal, act, eps,
                    ponder_weight, halting_bias, act_combine, kind, cell_kwargs)
        self._check_restart(restart_at, vocab_size, kind)
        self._check_encoder(encoder, restart_at, mixer, causal)
        check_block("UniversalTransformer", block, mixer)
        self.d_model, self.max_steps, self.act, self.eps = d_model, max_steps, act, float(eps)
        self.ponder_weight, self.act_combine = float(ponder_weight), act_combine
        self.embed = (nn.Embedding(vocab_size, d_model) if kind == "tokens"
                      else nn.Linear(vocab_size, d_model))
        check_bool("UniversalTransformer", "tied", tied)
        self.tied = tied
        blocks = [self._block(mixer, d_model, causal, heads, engine, block, rotary, cell_kwargs)
                  for _ in range(1 if tied else max_steps)]
        if tied:  # ``block`` as before: the state dicts of tied models keep their keys
            self.block = blocks[0]
        else:
            self.layers = nn.ModuleList(blocks)
        self.halting = nn.Linear(d_model, 1)
        nn.init.constant_(self.halting.bias, float(halting_bias))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_outputs)
        self.ponder_cost: Optional[torch.Tensor] = None
        self.n_updates: Optional[torch.Tensor] = None
        self.remainders: Optional[torch.Tensor] = None
        self.update_weights: Optional[torch.Tensor] = None
        self.position_offset, self.restart_at, self.encoder = position_offset, restart_at, encoder
        if restart_at is not None:  # only then: the state dicts of other models keep their keys
            self.segment = nn.Embedding(2, d_model)
        if position_offset:  # seeded from the global generator: torch.manual_seed fixes it
            seed = int(torch.randint(0, 2 ** 62, (1,), device="cpu"))
            self.register_buffer("offset_rng", torch.Generator().manual_seed(seed).get_state())

    @staticmethod
    def _check(vocab_size, n_outputs, d_model, max_steps, mixer, causal, act, eps,
               ponder_weight, halting_bias, act_combine, kind, cell_kwargs) -> None:
        owner = "UniversalTransformer"
        for arg, value in (("vocab_size", vocab_size), ("n_outputs", n_outputs),
                           ("d_model", d_model), ("max_steps", max_steps)):
            check_int(owner, arg, value, 1)
        check_mixer(owner, "mixer", mixer)
        if mixer == ATTENTION and cell_kwargs:
            raise ValueError(f"UniversalTransformer: cell options {sorted(cell_kwargs)} need a "
                             f"cell mixer, got mixer={mixer!r}")
        check_bool(owner, "causal", causal)
        check_bool(owner, "act", act)
        check_number(owner, "eps", eps, 0, 1, low_open=True, high_open=True)
        check_number(owner, "ponder_weight", ponder_weight, 0)
        check_number(owner, "halting_bias", halting_bias, note=" (finite)")
        check_choice(owner, "act_combine", act_combine, COMBINES)
        check_choice(owner, "kind", kind, KINDS)

    @staticmethod
    def _check_restart(restart_at, vocab_size, kind) -> None:
        if restart_at is None:
            return
        if kind != "tokens":
            raise ValueError(f"UniversalTransformer: restart_at needs token inputs "
                             f"(kind='tokens'), got kind={kind!r}")
        check_int("UniversalTransformer", "restart_at", restart_at, 0, vocab_size - 1)

    @staticmethod
    def _check_encoder(encoder, restart_at, mixer, causal) -> None:
        check_bool("UniversalTransformer", "encoder", encoder)
        if encoder and (restart_at is None or mixer != ATTENTION or not causal):
            raise ValueError(f"UniversalTransformer: encoder=True needs restart_at (where the "
                             f"input ends), the attention mixer and causal=True, got "
                             f"restart_at={restart_at!r}, mixer={mixer!r}, causal={causal!r}")

    @staticmethod
    def _block(mixer, d_model, causal, heads, engine, block, rotary,
               cell_kwargs) -> SharedBlock:
        """The shared depth step around ``make_mixer``'s mixer."""
        check_int("UniversalTransformer", "heads", heads, 1, optional=True)
        check_bool("UniversalTransformer", "rotary", rotary)
        if mixer != ATTENTION and not rotary:
            raise ValueError(f"UniversalTransformer: rotary=False needs the attention mixer "
                             f"(a recurrent mixer has no RoPE), got mixer={mixer!r}")
        if mixer != ATTENTION and heads is not None:
            cell_kwargs = dict(cell_kwargs, heads=heads)
        return SharedBlock(make_mixer(mixer, d_model, 4 if heads is None else heads, None, engine,
                                      cell_kwargs, causal=causal, block=block, rotary=rotary),
                           d_model)

    def step_block(self, step: int) -> SharedBlock:
        """The block that depth step ``step`` (1, 2, ...) runs: the shared one, or its own."""
        return self.block if self.tied else self.layers[step - 1]

    def coordinates(self, length: int, step: int, device=None,
                    offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``P^step``: sinusoidal position plus sinusoidal depth-step embedding, ``(T, D)``, or
        ``(B, T, D)`` with position t of row b at ``t + offset``: ``offset (B, 1)`` shifts each
        row, ``(B, T)`` each step (``shifts``)."""
        index = torch.arange(length, device=device)  # (T,)
        index = index if offset is None else offset + index  # (T,) or (B, T)
        pos = sinusoid(index, self.d_model)  # (T, D) or (B, T, D)
        return pos + sinusoid(torch.tensor([step], device=device), self.d_model)  # (1, D) added

    def offsets(self, batch: int, device=None) -> Optional[torch.Tensor]:
        """``(B, 1)`` random start positions in ``[0, position_offset]`` while training (None
        otherwise); advances the generator kept in ``offset_rng``."""
        if not (self.training and self.position_offset):
            return None
        gen = torch.Generator()
        gen.set_state(self.offset_rng.cpu())
        drawn = torch.randint(0, self.position_offset + 1, (batch, 1), generator=gen)
        self.offset_rng.copy_(gen.get_state())
        return drawn.to(device)

    def shifts(self, inputs: torch.Tensor) -> Optional[torch.Tensor]:
        """What ``coordinates`` adds to each step's position: the random row offsets
        (``offsets``, training only) and, with ``restart_at``, minus the step of each row's
        first ``restart_at`` token from that step on. ``(B, 1)``, ``(B, T)`` or None."""
        B, T = inputs.shape[:2]
        offset = self.offsets(B, inputs.device)  # (B, 1) or None
        if self.restart_at is None:
            return offset
        marked = self.segments(inputs).bool()  # (B, T): at or after the first restart token
        first = marked.long().argmax(dim=1, keepdim=True)  # (B, 1); 0 where none (unused)
        restart = torch.where(marked, -first, 0)  # (B, T)
        return restart if offset is None else restart + offset

    def encoder_steps(self, inputs: torch.Tensor) -> Optional[torch.Tensor]:
        """With ``encoder``: ``(B,)`` how many steps of each row read both ways, those before
        its first restart token (0 in a row without one: it stays causal); else None."""
        if not self.encoder:
            return None
        return self.segments(inputs).argmax(dim=1)  # (B,): the first 1, or 0 where there is none

    def segments(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` long: 1 at and after each row's first ``restart_at`` token, else 0."""
        return ((inputs == self.restart_at).long().cumsum(dim=1) > 0).long()

    def halting_probability(self, state: torch.Tensor) -> torch.Tensor:
        """``p = σ(w·state + b)``: ``(B, T, D) -> (B, T)``."""
        return torch.sigmoid(self.halting(state)).squeeze(-1)

    def forward(self, inputs: torch.Tensor, return_ponder: bool = False):
        """``(B, T)`` or ``(B, T, vocab_size)`` -> logits ``(B, T, n_outputs)``; with
        ``return_ponder`` also the ponder cost (scalar)."""
        h = self.embed(inputs)  # (B, T, D)
        if self.restart_at is not None:
            h = h + self.segment(self.segments(inputs))  # (B, T, D)
        shift, prefix = self.shifts(inputs), self.encoder_steps(inputs)
        out = self._act(h, shift, prefix) if self.act else self._fixed(h, shift, prefix)
        logits = self.head(self.norm(out))  # (B, T, n_outputs)
        return (logits, self.ponder_cost) if return_ponder else logits

    def _fixed(self, h: torch.Tensor, offset: Optional[torch.Tensor],
               prefix: Optional[torch.Tensor]) -> torch.Tensor:
        """Exactly ``max_steps`` steps; the last state is the output."""
        B, T, _ = h.shape
        for step in range(1, self.max_steps + 1):
            h = self.step_block(step)(h + self.coordinates(T, step, h.device, offset).to(h.dtype),
                                      prefix)
        self.ponder_cost = h.new_zeros(())
        self.n_updates = torch.full((B, T), self.max_steps, dtype=torch.long, device=h.device)
        self.remainders = h.new_zeros(B, T)
        self.update_weights = h.new_zeros(B, T, self.max_steps)
        self.update_weights[..., -1] = 1.0
        return h

    def _act(self, h: torch.Tensor, offset: Optional[torch.Tensor],
             prefix: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-position ACT loop (module doc); sets ``ponder_cost`` and the inspection
        tensors."""
        B, T, _ = h.shape
        theta = 1.0 - self.eps
        halted = torch.zeros(B, T, dtype=torch.bool, device=h.device)
        hp = h.new_zeros(B, T)  # Σ p of the steps taken before halting
        rem = h.new_zeros(B, T)  # R
        n = torch.zeros(B, T, dtype=torch.long, device=h.device)  # N
        out = torch.zeros_like(h)  # (B, T, D)
        weights = []
        for step in range(1, self.max_steps + 1):
            x = h + self.coordinates(T, step, h.device, offset).to(h.dtype)  # (B, T, D)
            p = self.halting_probability(x)  # (B, T)
            running = ~halted
            halt = running & ((hp + p >= theta) | (step == self.max_steps))
            going = (running & ~halt).to(p.dtype)
            hp = hp + p * going
            r_new = halt.to(p.dtype) * (1.0 - hp)  # the remainder, on the halting step only
            rem = rem + r_new
            n = n + running.long()
            w = p * going + r_new  # (B, T)
            h = self.step_block(step)(x, prefix)  # (B, T, D); the next input: unweighted
            if self.act_combine == "sum":
                out = out + w[..., None] * h
            else:
                out = w[..., None] * h + (1.0 - w[..., None]) * out
            weights.append(w)
            halted = halted | halt
            if bool(halted.all()):
                break
        self.ponder_cost = self.ponder_weight * (n.to(rem.dtype) + rem).mean()
        self.n_updates, self.remainders = n, rem.detach()
        self.update_weights = torch.stack(weights, dim=-1).detach()  # (B, T, S)
        return out
