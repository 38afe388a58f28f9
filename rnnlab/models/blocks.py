"""The LM's residual block under its former name: ``LMBlock`` is ``models.block.ResidualBlock``
built by ``make_block`` with a LayerNorm and a SwiGLU MLP (``block="default"``).

``x + fsmn(mixer(conv(norm(x))))``, then ``x + GatedMLP(norm(x))``; the state is ``(conv window,
mixer state, fsmn window)``; see ``models/block.py``.
"""
from __future__ import annotations

from typing import Optional

from .block import GatedMLP, ResidualBlock, block_parts, make_mixer  # noqa: F401 - re-exported


class LMBlock(ResidualBlock):
    """Pre-norm residual block with a recurrent or attention mixer and a gated MLP; ``block``
    ``"published"`` uses the family's published layer, norm and MLP."""

    def __init__(self, d_model: int, mixer: str = "gru", conv: int = 0,
                 dynamic_conv: bool = False, fsmn: int = 0, fsmn_dilation: int = 1,
                 heads: int = 4, window: Optional[int] = None, engine="auto",
                 cell_options: Optional[dict] = None, block: str = "default"):
        super().__init__(**block_parts(
            mixer, d_model, block=block, conv=conv, dynamic_conv=dynamic_conv, fsmn=fsmn,
            fsmn_dilation=fsmn_dilation, heads=heads, window=window, engine=engine,
            cell_options=cell_options))
