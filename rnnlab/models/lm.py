"""``LM``: a causal language model from any registered cell, optionally hybrid with attention.

    lm = LM(vocab_size=256, d_model=128, n_layers=2, cell="gru")
    logits = lm(ids)                           # (B, T) -> (B, T, vocab)
    logits, state = lm(ids, lm.initial_state(B))   # streaming: chunks of any length
    out = lm.generate(prompt, max_new_tokens=100, temperature=0.8, top_k=20)

``attention_every=k`` makes every k-th layer causal attention (``window`` for sliding-window);
``cell="attention"`` makes them all attention (a Transformer LM). ``block="published"`` gives the
recurrent layers their family's published block (``models.block.make_block``: Mamba's gated
block, xLSTM's blocks, DeltaNet's convs and norms, ...). ``save_pretrained(dir)`` /
``LM.from_pretrained(dir)`` write and read config.json + model.safetensors (huggingface_hub).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from huggingface_hub.utils import HFValidationError, validate_repo_id
from torch import nn

from ..cells.base import OptionTypeError
from ..cells.registry import check_options
from ..checks import check_int, check_number
from .block import ATTENTION, check_block, check_mixer, make_block, run_blocks

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"  # what save_pretrained writes


class PretrainedNotFound(FileNotFoundError, ValueError):
    """``from_pretrained`` was given a directory that does not exist or lacks a file: a
    ValueError as every rnnlab user error, and the OSError huggingface users catch."""


def check_pretrained_dir(path, what: str, weights: Sequence[str] = (WEIGHTS_FILE,)) -> None:
    """Refuse a local ``path`` that is no directory, or lacks ``config.json`` or all of
    ``weights``, naming what is missing. A hub repo id (``user/model``) passes through."""
    text = str(path)
    if os.path.isdir(text):
        missing = [] if os.path.isfile(os.path.join(text, CONFIG_FILE)) else [CONFIG_FILE]
        if weights and not any(os.path.isfile(os.path.join(text, w)) for w in weights):
            missing.append(" or ".join(weights))
        if missing:
            raise PretrainedNotFound(f"{what}: directory {text!r} has no {' and no '.join(missing)}"
                                     f"; is it a directory save_pretrained wrote?")
        _check_json(os.path.join(text, CONFIG_FILE), what)
        return
    if os.path.exists(text):
        raise PretrainedNotFound(f"{what}: {text!r} is a file; expected the directory "
                                 f"save_pretrained wrote")
    local = isinstance(path, Path) or text.startswith(("~", "."))
    try:
        validate_repo_id(text)
    except HFValidationError:  # no hub id looks like this: it was meant as a directory
        local = True
    if local:
        raise PretrainedNotFound(f"{what}: directory {text!r} does not exist")


def _check_json(file: str, what: str) -> None:
    try:
        with open(file, encoding="utf-8") as f:
            ok = isinstance(json.load(f), dict)
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise ValueError(f"{what}: {file!r} is not a JSON object (truncated or foreign file); "
                         f"save the model again with save_pretrained")


def _check_arguments(cell_options, **args) -> None:
    """LM's arguments: types from its signature (``engine``: ``resolve`` checks it), then
    ranges, names, and options of layers the model does not have (ignored without a word)."""
    check_options("LM", LM, args)
    if cell_options is not None and not isinstance(cell_options, dict):
        raise OptionTypeError(f"LM: cell_options must be a dict of cell options or None, "
                              f"got {type(cell_options).__name__}")
    for name in ("vocab_size", "d_model", "n_layers"):
        check_int("LM", name, args[name], 1)
    for name in ("conv", "fsmn", "attention_every"):
        check_int("LM", name, args[name], 0)
    cell, every, window = args["cell"], args["attention_every"], args["window"]
    check_mixer("LM", "cell", cell)
    if cell != ATTENTION:  # attention layers always take the default block
        check_block("LM", args["block"], cell)
    layers = f"(cell={cell!r}, attention_every={every})"
    if cell_options and (cell == ATTENTION or every == 1):
        raise ValueError(f"LM: cell_options apply to recurrent layers and this model has none "
                         f"{layers}, got {cell_options!r}")
    if window is not None and cell != ATTENTION and not 1 <= every <= args["n_layers"]:
        raise ValueError(f"LM: window applies to attention layers and this model has none "
                         f"{layers}, got {window!r}")


def _tensors(tree) -> Iterator[torch.Tensor]:
    """The tensors in a state: nested lists/tuples of tensors and None."""
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)


class LM(nn.Module, PyTorchModelHubMixin, library_name="rnnlab", tags=["rnnlab"]):
    """Causal LM: embedding -> ``n_layers`` blocks (``make_block``) -> norm -> logits (tied to the
    embedding when ``tie_embeddings``). Options of every block: ``conv`` (short conv width, 0 =
    none), ``dynamic_conv``, ``fsmn`` (FSMN memory order, 0 = none), ``fsmn_dilation``, ``heads``
    and ``window`` (attention layers), ``engine``, ``cell_options`` and ``block`` (recurrent
    layers: ``"default"`` or ``"published"``)."""

    def __init__(self, vocab_size: int, d_model: int = 128, n_layers: int = 2, cell: str = "gru",
                 conv: int = 0, dynamic_conv: bool = False, fsmn: int = 0,
                 fsmn_dilation: int = 1, attention_every: int = 0,
                 window: Optional[int] = None, heads: int = 4, engine: str = "auto",
                 tie_embeddings: bool = True, cell_options: Optional[dict] = None,
                 block: str = "default"):
        super().__init__()
        _check_arguments(cell_options, vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                         cell=cell, conv=conv, dynamic_conv=dynamic_conv, fsmn=fsmn,
                         fsmn_dilation=fsmn_dilation, attention_every=attention_every,
                         window=window, heads=heads, tie_embeddings=tie_embeddings, block=block)
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)  # unit-scale tied logits
        self.blocks = nn.ModuleList()
        for i in range(n_layers):
            attn = cell == ATTENTION or (attention_every and (i + 1) % attention_every == 0)
            self.blocks.append(make_block(
                ATTENTION if attn else cell, d_model, block="default" if attn else block,
                conv=conv, dynamic_conv=dynamic_conv, fsmn=fsmn, fsmn_dilation=fsmn_dilation,
                heads=heads, window=window, engine=engine,
                cell_options=None if attn else cell_options))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embed.weight

    def initial_state(self, batch: int, device=None) -> List[tuple]:
        """The zero state of every layer for ``batch`` sequences (recurrent states, conv
        windows, empty KV caches)."""
        check_int("LM.initial_state", "batch", batch, 1)
        device = device if device is not None else self.embed.weight.device
        return [block.initial_state(batch, device) for block in self.blocks]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a model ``save_pretrained`` wrote (a directory, or a hub repo id)."""
        check_pretrained_dir(pretrained_model_name_or_path, f"{cls.__name__}.from_pretrained")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def _check_ids(self, ids) -> None:
        """``ids``: integer ``(B, T)``, B, T >= 1, token ids in ``[0, vocab_size)``, on the
        model's device (nn.Embedding would raise a bare IndexError, or a CUDA assert)."""
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"LM: ids must be an integer tensor (B, T), got {type(ids).__name__}")
        if ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"LM: ids must be integer (B, T), got {ids.dtype} "
                             f"{tuple(ids.shape)}")
        if 0 in ids.shape:
            raise ValueError(f"LM: ids must hold at least one token of one sequence (B, T >= 1), "
                             f"got shape {tuple(ids.shape)}")
        if ids.device != self.embed.weight.device:
            raise ValueError(f"LM: ids are on {ids.device} but the model is on "
                             f"{self.embed.weight.device}; move one with .to(device)")
        if torch.compiler.is_compiling():
            return  # a data-dependent check would break the graph; eager runs check
        low, high = (int(v) for v in torch.aminmax(ids))
        if low < 0 or high >= self.vocab_size:
            raise ValueError(f"LM: ids must be token ids in [0, vocab_size={self.vocab_size}), "
                             f"got min {low}, max {high}")

    def _check_state(self, state, ids: torch.Tensor) -> None:
        """``state`` as ``initial_state(B)`` makes it: one entry per layer, batch B, on the
        device of ``ids``."""
        if not isinstance(state, (list, tuple)) or len(state) != len(self.blocks):
            got = f"{len(state)} entries" if isinstance(state, (list, tuple)) \
                else type(state).__name__
            raise ValueError(f"LM: state must hold one entry per layer ({len(self.blocks)}), "
                             f"as initial_state(B) makes it, got {got}")
        for i, entry in enumerate(state):
            for t in _tensors(entry):
                if t.device != ids.device:
                    raise ValueError(f"LM: state[{i}] is on {t.device} but ids are on "
                                     f"{ids.device}; make it with initial_state(B, ids.device)")
                if t.dim() and t.shape[0] != ids.shape[0]:
                    raise ValueError(f"LM: state[{i}] holds {t.shape[0]} sequences but ids hold "
                                     f"B={ids.shape[0]}; make it with initial_state(B)")

    def forward(self, ids: torch.Tensor, state: Optional[List[tuple]] = None):
        """``ids (B, T)`` -> ``logits (B, T, vocab)``; with ``state``, ``(logits, state)``."""
        self._check_ids(ids)
        if state is not None:
            self._check_state(state, ids)
        return self._run(ids, state)

    def _run(self, ids: torch.Tensor, state: Optional[List[tuple]]):
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
        check_options("generate", LM.generate, dict(max_new_tokens=max_new_tokens,
                                                    temperature=temperature, top_k=top_k))
        check_int("generate", "max_new_tokens", max_new_tokens, 0)
        check_number("generate", "temperature", temperature, 0, note=" (finite; 0: greedy)")
        check_int("generate", "top_k", top_k, 1, optional=True)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise OptionTypeError(f"generate: generator must be a torch.Generator or None, "
                                  f"got {type(generator).__name__}")
        self._check_ids(ids)
        out = [ids]
        if max_new_tokens == 0:
            return ids
        logits, state = self(ids, self.initial_state(ids.shape[0], ids.device))
        for i in range(max_new_tokens):
            token = _sample(logits[:, -1], temperature, top_k, generator)  # (B, 1)
            out.append(token)
            if i + 1 < max_new_tokens:
                logits, state = self._run(token, state)  # our own tokens: no checks
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
