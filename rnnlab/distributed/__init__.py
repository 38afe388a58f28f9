"""Scale-out pieces built on ``torch.distributed``.

``sequence_parallel(layer, x_local, initial_state=None, group=None)``: one recurrent layer over
a sequence split along time across the ranks of a process group (``sequence.py``; the carry
exchange in ``carry.py``, Newton's iterations in ``newton.py``).
"""
from .sequence import sequence_parallel

__all__ = ["sequence_parallel"]
