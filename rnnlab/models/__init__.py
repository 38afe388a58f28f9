"""Models built from rnnlab layers: ``SequenceModel`` (any cell, or the attention baseline)."""
from .attention import CausalSelfAttention  # noqa: F401
from .sequence import SequenceModel  # noqa: F401
