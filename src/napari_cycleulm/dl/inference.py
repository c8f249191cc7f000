"""Running a network forward for inference: one code path for CPU and GPU.

Every inference call of MB-DT, MBL-Net and MBT-Net goes through :func:`infer`:

* no autograd (``torch.inference_mode``);
* the input in channels-last memory layout (NHWC).  oneDNN on the CPU and
  cuDNN on GPUs run convolutions fastest in that layout.  On 511 x 659
  frames on 2 CPU cores it speeds MB-DT up 1.7x, MBL-Net 1.7x and MBT-Net
  1.3x, with results equal to the contiguous layout's to float32 rounding
  (``benchmarks/inference_speed.py``).  :func:`infer` itself never changes
  the network;
* bfloat16 autocast where the hardware computes in bfloat16 natively
  (:func:`default_precision`: CPUs with AMX or AVX-512-BF16, CUDA GPUs that
  support bfloat16), float32 elsewhere.  On 511 x 659 frames on this
  project's 2-core Xeon it is another 1.8-2.5x (MB-DT, MBL-Net, MBT-Net); on
  two held-out settings of ``benchmarks/generalisation.py`` it changed
  CycleULM-Loc's F1 by at most 0.0006 and CycleULM-E2E's SR RMSE by 0.3 %
  (``docs/benchmarks.md``).  The environment variable
  ``CYCLEULM_PRECISION=float32`` (or ``bfloat16``) overrides the choice for
  a whole run, e.g. to reproduce float32 results bit for bit.

Network weights (of a loaded checkpoint or of a module handed in) are put in
channels-last layout, values unchanged, when a network is resolved for
inference (:func:`napari_cycleulm.dl.models.resolve_network`): under
autocast, weights in the other layout are converted at every call, which
costs as much as the bfloat16 convolutions save.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from ..errors import CycleULMError

__all__ = ["BATCH_PIXELS", "PRECISIONS", "PRECISION_ENV", "default_batch_size", "default_precision", "infer",
           "resolve_batch_size", "resolve_precision"]

#: Frame pixels per network call on the CPU (:func:`default_batch_size`).  On
#: 2 CPU cores MB-DT and MBL-Net process the most pixels per second at 40,000-
#: 160,000 pixels per call (128 x 160 frames in batches of 2-4, 256 x 320 in
#: batches of 1-2); 8 frames of 511 x 659 per call, the former default, ran
#: MB-DT at half the speed of one frame per call (the activations no longer
#: fit the caches; ``benchmarks/inference_speed.py``).
BATCH_PIXELS = 4 * 128 * 160

#: Accepted ``precision`` values.
PRECISIONS = ("auto", "float32", "bfloat16")

#: Environment variable that overrides the automatic precision (one of :data:`PRECISIONS`).
PRECISION_ENV = "CYCLEULM_PRECISION"


def _native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes convolutions in bfloat16 natively."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        try:
            return any(bool(getattr(cpu, name)()) for name in probes if hasattr(cpu, name))
        except RuntimeError:  # pragma: no cover - exotic builds
            return False
    return False


def default_precision(device: torch.device | str = "cpu") -> str:
    """``"bfloat16"`` where ``device`` has native bfloat16 convolutions, else ``"float32"``.

    :data:`PRECISION_ENV` (``CYCLEULM_PRECISION``), when set to ``float32`` or
    ``bfloat16``, wins.
    """
    env = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    if env not in PRECISIONS:
        raise CycleULMError(
            f"{PRECISION_ENV}={os.environ.get(PRECISION_ENV)!r} is not a precision; use one of {PRECISIONS}."
        )
    if env != "auto":
        return env
    return "bfloat16" if _native_bfloat16(torch.device(device)) else "float32"


def resolve_precision(precision: str | None, device: torch.device | str = "cpu") -> torch.dtype:
    """The compute dtype for a ``precision`` name on ``device``.

    ``None`` and ``"auto"``: :func:`default_precision`.  ``"bfloat16"`` runs
    the convolutions in bfloat16 under autocast; outputs are returned as
    float32 either way.
    """
    if precision is None or precision == "auto":
        precision = default_precision(device)
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    raise CycleULMError(f"precision must be one of {PRECISIONS}, got {precision!r}.")


def default_batch_size(shape: tuple[int, int], device: torch.device | str = "cpu", cap: int = 16) -> int:
    """Frames (or MBT-Net windows) per network call for ``(H, W)`` frames on ``device``.

    ``BATCH_PIXELS // (H * W)`` on the CPU, 16x that on a GPU (which needs
    large batches to fill), at least 1 and at most ``cap``.  The batch size
    never changes the results, only the speed and the memory.
    """
    px = int(shape[0]) * int(shape[1])
    budget = BATCH_PIXELS * (16 if torch.device(device).type == "cuda" else 1)
    return int(max(1, min(int(cap), budget // max(px, 1))))


def resolve_batch_size(
    batch_size: int | None, shape: tuple[int, int], device: torch.device | str = "cpu", cap: int = 16
) -> int:
    """``batch_size`` checked (a whole number >= 1), or :func:`default_batch_size` (with ``cap``) when None."""
    if batch_size is None:
        return default_batch_size(shape, device, cap)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise CycleULMError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
    return int(batch_size)


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def infer(net: nn.Module, x: torch.Tensor, precision: str | None = None) -> torch.Tensor:
    """``net(x)`` for inference: no autograd, channels-last input, float32 output.

    Parameters
    ----------
    net : torch.nn.Module
        The network, or any callable taking ``(N, C, H, W)`` (e.g. MB-DT's
        ``translate``).
    x : torch.Tensor
        ``(N, C, H, W)`` input on the network's device.
    precision : {"auto", "float32", "bfloat16"}, optional
        Compute precision (:func:`resolve_precision`); default ``"auto"``.

    Returns
    -------
    torch.Tensor
        The output, float32, on the network's device.
    """
    dtype = resolve_precision(precision, x.device)
    if x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), _autocast(x.device, dtype):
        y = net(x)
    return y.float()
