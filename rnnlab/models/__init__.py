"""Models built from rnnlab layers: ``SequenceModel`` (the arena's, any cell or attention),
``LM`` (causal LM: streaming, generation, save/load), ``UniversalTransformer`` (ACT) and
``PointerNet``, and ``Classifier`` (sequence classification, bidirectional option)."""
from .attention import CausalSelfAttention  # noqa: F401
from .classifier import Classifier  # noqa: F401
from .lm import LM  # noqa: F401
from .pointer import PointerNet  # noqa: F401
from .sequence import SequenceModel  # noqa: F401
from .universal import UniversalTransformer  # noqa: F401
