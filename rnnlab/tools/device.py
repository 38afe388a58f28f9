"""``--device``: parse it and check this machine has it, before anything is written."""
from __future__ import annotations

import torch


def check_device(value, name: str = "--device") -> torch.device:
    """``value`` as a ``torch.device`` that exists here; ValueError naming ``name`` otherwise."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}: expected a torch device such as 'cpu', 'cuda' or 'cuda:1', "
                         f"got {value!r}") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if device.type == "mps":
        available = torch.backends.mps.is_available
    if available is None:
        raise ValueError(f"{name}: expected cpu, cuda, mps or xpu, got {value!r}")
    if not available():
        raise ValueError(f"{name}: {value!r} is not available on this machine (torch "
                         f"{torch.__version__} sees no {device.type} device); use --device cpu")
    count = getattr(backend, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        raise ValueError(f"{name}: {value!r} asks for {device.type} device {device.index}, but "
                         f"this machine has {count} (indices 0..{count - 1})")
    return device
