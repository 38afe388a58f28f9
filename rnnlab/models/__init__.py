"""Models built from rnnlab layers: ``SequenceModel`` (any cell, or the attention baseline) and
``LM`` (causal LM, streaming, generation, save/load)."""
from .attention import CausalSelfAttention  # noqa: F401
from .lm import LM  # noqa: F401
from .sequence import SequenceModel  # noqa: F401
