"""Optional ``transformers`` integration (``pip install rnnlab[hf]``).

``RnnlabConfig`` and ``RnnlabForCausalLM`` wrap ``rnnlab.models.LM`` as a ``PreTrainedModel``,
registered with ``AutoConfig`` / ``AutoModelForCausalLM`` under model type ``"rnnlab"``, so
``AutoModelForCausalLM.from_pretrained(dir)`` and transformers' ``generate()`` work; the cache
``generate()`` carries between steps is rnnlab's own recurrent state (constant size for
recurrent-only models), passed as ``past_key_values``.

    from rnnlab.hf import RnnlabConfig, RnnlabForCausalLM
    model = RnnlabForCausalLM(RnnlabConfig(vocab_size=256, cell="mamba", conv=4))
    out = model.generate(ids, max_new_tokens=20, do_sample=False)
"""
from __future__ import annotations

from typing import Optional

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig,
                          PreTrainedModel)
from transformers.modeling_outputs import CausalLMOutputWithPast

from .models.lm import LM, check_pretrained_dir

# what transformers' save_pretrained may write as weights, one of which from_pretrained needs
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# transformers 5 renamed past_key_values to cache
CACHE_FIELD = ("cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__
               else "past_key_values")
LM_FIELDS = ("vocab_size", "d_model", "n_layers", "cell", "conv", "dynamic_conv", "fsmn",
             "fsmn_dilation", "attention_every", "window", "heads", "engine", "tie_embeddings",
             "cell_options", "block")


class RnnlabConfig(PretrainedConfig):
    """The arguments of ``rnnlab.models.LM`` as a transformers config."""

    model_type = "rnnlab"

    def __init__(self, vocab_size: int = 256, d_model: int = 128, n_layers: int = 2,
                 cell: str = "gru", conv: int = 0, dynamic_conv: bool = False, fsmn: int = 0,
                 fsmn_dilation: int = 1, attention_every: int = 0, window: Optional[int] = None,
                 heads: int = 4, engine: str = "auto", tie_embeddings: bool = True,
                 cell_options: Optional[dict] = None, block: str = "default", **kwargs):
        self.vocab_size, self.d_model, self.n_layers, self.cell = vocab_size, d_model, n_layers, cell
        self.block = block  # "published": the cell family's own block (models.block)
        self.conv, self.dynamic_conv, self.fsmn, self.fsmn_dilation = (conv, dynamic_conv, fsmn,
                                                                      fsmn_dilation)
        self.attention_every, self.window, self.heads = attention_every, window, heads
        self.engine, self.tie_embeddings = engine, tie_embeddings
        self.cell_options = cell_options or {}
        kwargs["tie_word_embeddings"] = tie_embeddings  # LM ties its head; transformers saves once
        super().__init__(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader, after saying which directory or file is missing."""
        check_pretrained_dir(pretrained_model_name_or_path, f"{cls.__name__}.from_pretrained",
                             weights=())
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


class RecurrentCache(list):
    """rnnlab's per-layer state, as the object ``generate()`` passes back as past_key_values."""

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    seen = 0


class RnnlabForCausalLM(PreTrainedModel, GenerationMixin):
    """``rnnlab.models.LM`` behind the transformers causal-LM interface."""

    config_class = RnnlabConfig
    base_model_prefix = "lm"
    _supports_cache_class = False
    _is_stateful = True  # tells generate() the cache is a state, not per-position keys
    _tied_weights_keys = {"lm.head.weight": "lm.embed.weight"}

    def __init__(self, config: RnnlabConfig):
        super().__init__(config)
        self.lm = LM(**{k: getattr(config, k) for k in LM_FIELDS})
        self.post_init()

    def _init_weights(self, module):  # LM initializes itself; keep its init
        pass

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader, after saying which directory or file is missing."""
        check_pretrained_dir(pretrained_model_name_or_path, f"{cls.__name__}.from_pretrained",
                             weights=WEIGHT_FILES)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def get_input_embeddings(self):
        return self.lm.embed

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is rnnlab's state, created by forward

    def forward(self, input_ids: torch.Tensor, cache=None, use_cache: bool = False,
                labels: Optional[torch.Tensor] = None, attention_mask=None,
                past_key_values=None, **kwargs):
        """``input_ids (B, T)``: new tokens only when a ``cache`` (transformers >= 5) or
        ``past_key_values`` (older) is given."""
        state = cache if cache is not None else past_key_values
        if state is None and use_cache:
            state = RecurrentCache(self.lm.initial_state(input_ids.shape[0], input_ids.device))
        if state is None:
            logits, new = self.lm(input_ids), None
        else:
            logits, new = self.lm(input_ids, list(state))
            new = RecurrentCache(new)
            new.seen = getattr(state, "seen", 0) + input_ids.shape[1]
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: new})

    def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None,
                                      **kwargs):
        state = cache if cache is not None else past_key_values
        if state is not None and getattr(state, "seen", 0):
            input_ids = input_ids[:, state.seen:]  # only what the state has not seen
        return {"input_ids": input_ids, CACHE_FIELD: state, "use_cache": True}


AutoConfig.register("rnnlab", RnnlabConfig, exist_ok=True)
AutoModelForCausalLM.register(RnnlabConfig, RnnlabForCausalLM, exist_ok=True)
