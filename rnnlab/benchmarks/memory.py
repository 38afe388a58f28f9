"""Activation memory on any device: the bytes an autograd graph holds for its backward, found by
walking the graph from its outputs (torch has no peak-memory counter on CPU, and ``torch.func``
refuses ``saved_tensors_hooks``). Used by ``rnnlab bench cells``."""
from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

import torch


def _storage(t: torch.Tensor) -> Tuple[int, int]:
    """(key, bytes) of the memory a tensor holds: its storage, or the tensor itself."""
    try:
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return id(t), t.numel() * t.element_size()


_SAVED_ATTRS: dict = {}  # autograd node type -> names of its saved-tensor attributes


def _tensors(value) -> List[torch.Tensor]:
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _node_tensors(node) -> List[torch.Tensor]:
    """What one autograd node holds for backward: a built-in node's ``_saved_*`` attributes, an
    ``autograd.Function`` context's ``saved_tensors`` and tensor attributes."""
    names = _SAVED_ATTRS.get(type(node))
    if names is None:
        names = _SAVED_ATTRS[type(node)] = [n for n in dir(node) if n.startswith("_saved_")
                                            or n == "saved_tensors"]
    held = list(getattr(node, "__dict__", {}).values())
    for name in names:
        try:
            held.append(getattr(node, name))
        except RuntimeError:  # already freed, or not readable from Python
            pass
    return _tensors(held)


def held_bytes(roots: Sequence[torch.Tensor], exclude: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages that the roots and every node of their autograd graph
    hold, leaving out the storages of ``exclude``."""
    skip = {_storage(t)[0] for t in exclude}
    held = {}
    for t in roots:
        key, nbytes = _storage(t)
        held[key] = nbytes
    todo = [t.grad_fn for t in roots if t.grad_fn is not None]
    seen = set(todo)
    while todo:
        node = todo.pop()
        for t in _node_tensors(node):
            key, nbytes = _storage(t)
            held[key] = max(nbytes, held.get(key, 0))
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                todo.append(child)
    return sum(n for key, n in held.items() if key not in skip)
