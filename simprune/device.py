"""The one device picker of the engine, the CLI and the service."""

from __future__ import annotations

import torch

from simprune.errors import InputError

_VALID = "auto, cpu, cuda, cuda:N or mps"


def select_device(name: str | torch.device | None = "auto") -> torch.device:
    """``None`` / ``"auto"``: CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``
    (or the same as a :class:`torch.device`) are checked.

    Raises :class:`InputError` when the requested device is not available or not understood.
    """
    if isinstance(name, torch.device):
        name = str(name)
    key = (name or "auto").strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(key)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {name!r}; use {_VALID}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "no GPU is visible" if torch.version.cuda else "this PyTorch build has no CUDA support"
            raise InputError(f"device {name!r} requested but CUDA is not available ({why}); use cpu or auto")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(f"device {name!r} requested but only {count} CUDA device(s) exist")
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"device {name!r} requested but MPS is not available; use cpu or auto")
        return dev
    raise InputError(f"unsupported device {name!r}; use {_VALID}")
