"""A cell's own input projection, optional: ``in_proj=False`` leaves it to the block around the
cell (Mamba's, xLSTM's and DeltaNet's published blocks project, convolve and gate the input
before the cell reads it)."""
from __future__ import annotations

from torch import nn

from ..checks import check_bool


def check_in_proj(owner: str, in_proj, input_size: int, width: int, layout: str) -> None:
    """``in_proj`` is a bool; ``in_proj=False`` (the cell reads its projected input ``layout``
    as given, a published block projects it) needs ``input_size == width``."""
    check_bool(owner, "in_proj", in_proj)
    if not in_proj and input_size != width:
        raise ValueError(f"{owner}: in_proj=False reads the input as {layout}, so input_size "
                         f"must be {width}, got {input_size}")


def input_projection(owner: str, in_proj, input_size: int, width: int, layout: str,
                     **linear) -> nn.Module:
    """``nn.Linear(input_size, width, **linear)``, or with ``in_proj=False`` the identity (see
    ``check_in_proj``)."""
    check_in_proj(owner, in_proj, input_size, width, layout)
    return nn.Linear(input_size, width, **linear) if in_proj else nn.Identity()
