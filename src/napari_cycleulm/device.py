"""Choice of the torch device: CUDA when present, overridable everywhere."""

from __future__ import annotations

import torch

from .errors import CycleULMError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the torch device to compute on.

    Parameters
    ----------
    device : str, torch.device or None
        ``None`` or ``"auto"`` picks CUDA when available, else the CPU.
        Anything else (``"cpu"``, ``"cuda"``, ``"cuda:1"``) is used as given.

    Raises
    ------
    CycleULMError
        If the device name is unknown, or CUDA is requested but not available.
    """
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise CycleULMError(
            f"unknown device {str(device)!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'."
        ) from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise CycleULMError(
            f"device {str(device)!r} is not supported; use 'cpu', 'cuda', 'cuda:N' or 'auto'."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CycleULMError(
            f"device {str(device)!r} was requested but MPS is not available on this machine; "
            "use device='cpu' or 'auto'."
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CycleULMError(
            f"device {str(device)!r} was requested but CUDA is not available on this "
            "machine; use device='cpu' or 'auto'."
        )
    return dev
