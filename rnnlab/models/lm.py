"""``LM``: a causal language model from any registered cell, optionally hybrid with attention.

    lm = LM(vocab_size=256, d_model=128, n_layers=2, cell="gru")
    logits = lm(ids)                           # (B, T) -> (B, T, vocab)
    logits, state = lm(ids, lm.initial_state(B))   # streaming: chunks of any length
    out = lm.generate(prompt, max_new_tokens=100, temperature=0.8, top_k=20)

``attention_every=k`` makes every k-th layer causal attention (``window`` for sliding-window);
``cell="attention"`` makes them all attention (a Transformer LM). ``save_pretrained(dir)`` /
``LM.from_pretrained(dir)`` write and read config.json + model.safetensors (huggingface_hub).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .. import cells as _cells
from .blocks import LMBlock
from .sequence import ATTENTION, run_blocks


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"LM: {name} must be an int >= 1, got {value!r}")


class LM(nn.Module, PyTorchModelHubMixin, library_name="rnnlab", tags=["rnnlab"]):
    """Causal LM: embedding -> ``n_layers`` ``LMBlock`` -> norm -> logits (tied to the embedding
    when ``tie_embeddings``). Options of every block: ``conv`` (short conv width, 0 = none),
    ``dynamic_conv``, ``fsmn`` (FSMN memory order, 0 = none), ``fsmn_dilation``, ``heads`` and
    ``window`` (attention layers), ``engine`` and ``cell_options`` (recurrent layers)."""

    def __init__(self, vocab_size: int, d_model: int = 128, n_layers: int = 2, cell: str = "gru",
                 conv: int = 0, dynamic_conv: bool = False, fsmn: int = 0,
                 fsmn_dilation: int = 1, attention_every: int = 0,
                 window: Optional[int] = None, heads: int = 4, engine: str = "auto",
                 tie_embeddings: bool = True, cell_options: Optional[dict] = None):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model),
                            ("n_layers", n_layers)):
            _positive(name, value)
        if cell != ATTENTION and cell not in _cells.available():
            raise ValueError(f"LM: cell must be {ATTENTION!r} or a registered cell "
                             f"({', '.join(_cells.available())}), got {cell!r}")
        if isinstance(attention_every, bool) or not isinstance(attention_every, int) \
                or attention_every < 0:
            raise ValueError(f"LM: attention_every must be an int >= 0, got {attention_every!r}")
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)  # unit-scale tied logits
        self.blocks = nn.ModuleList()
        for i in range(n_layers):
            attn = attention_every and (i + 1) % attention_every == 0
            self.blocks.append(LMBlock(d_model, ATTENTION if attn else cell, conv, dynamic_conv,
                                       fsmn, fsmn_dilation, heads, window, engine, cell_options))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embed.weight

    def initial_state(self, batch: int, device=None) -> List[tuple]:
        """The zero state of every layer for ``batch`` sequences (recurrent states, conv
        windows, empty KV caches)."""
        device = device if device is not None else self.embed.weight.device
        return [block.initial_state(batch, device) for block in self.blocks]

    def forward(self, ids: torch.Tensor, state: Optional[List[tuple]] = None):
        """``ids (B, T)`` -> ``logits (B, T, vocab)``; with ``state``, ``(logits, state)``."""
        if ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"LM: ids must be integer (B, T), got {ids.dtype} "
                             f"{tuple(ids.shape)}")
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"LM: state must hold one entry per layer ({len(self.blocks)}), "
                             f"got {len(state)}")
        x, new_state = run_blocks(self.blocks, self.embed(ids), state)  # (B, T, D)
        logits = self.head(self.norm(x))  # (B, T, vocab)
        return logits if state is None else (logits, new_state)

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Prompt ``ids (B, T)`` followed by ``max_new_tokens`` sampled tokens: ``(B, T + n)``.

        One prefill over the prompt, then one token at a time from the recurrent state (memory
        per token is constant for recurrent-only models). ``temperature=0`` is greedy."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be an int >= 0, "
                             f"got {max_new_tokens!r}")
        if temperature < 0:
            raise ValueError(f"generate: temperature must be >= 0, got {temperature!r}")
        if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
            raise ValueError(f"generate: top_k must be None or an int >= 1, got {top_k!r}")
        out = [ids]
        if max_new_tokens == 0:
            return ids
        logits, state = self(ids, self.initial_state(ids.shape[0], ids.device))
        for i in range(max_new_tokens):
            token = _sample(logits[:, -1], temperature, top_k, generator)  # (B, 1)
            out.append(token)
            if i + 1 < max_new_tokens:
                logits, state = self(token, state)
        return torch.cat(out, dim=1)


def _sample(logits: torch.Tensor, temperature: float, top_k: Optional[int],
            generator: Optional[torch.Generator]) -> torch.Tensor:
    """One token per row of ``logits (B, V)``: ``(B, 1)``."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)
