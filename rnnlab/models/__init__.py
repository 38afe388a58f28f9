"""Models built from rnnlab layers: ``SequenceModel`` (the arena's, any cell or attention),
``LM`` (causal LM: streaming, generation, save/load), ``UniversalTransformer`` (ACT) and
``PointerNet``, and ``Classifier`` (sequence classification, bidirectional option). The block
models build their blocks with ``make_block`` / ``make_mixer`` (``models/block.py``), each cell
family's published layer (``block="published"``) included."""
from .attention import CausalSelfAttention  # noqa: F401
from .block import ResidualBlock, make_block, make_mixer  # noqa: F401
from .classifier import Classifier  # noqa: F401
from .lm import LM  # noqa: F401
from .pointer import PointerNet  # noqa: F401
from .sequence import SequenceModel  # noqa: F401
from .universal import UniversalTransformer  # noqa: F401
