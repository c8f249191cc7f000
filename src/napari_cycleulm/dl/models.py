"""Finding and loading the CycleULM networks for inference.

Every inference function (:func:`~napari_cycleulm.dl.mbdt_inference.translate`,
:func:`~napari_cycleulm.localise.mblnet.localise_mblnet`,
:class:`~napari_cycleulm.render.e2e.E2EAccumulator`, the pipelines) accepts a
*model source*:

``None`` or ``"default"``
    The weights shipped with the package (:data:`DEFAULT_WEIGHTS`).
a path
    A checkpoint written by :func:`~napari_cycleulm.dl.checkpoint.save_checkpoint`
    (e.g. by ``cycleulm train``).
a :class:`~napari_cycleulm.dl.checkpoint.Checkpoint`
    Already loaded.
a ``torch.nn.Module``
    Used as is (inference functions only; handy for freshly trained networks).

Nothing is cached between calls: load a model once with :func:`load_model`
and pass the :class:`Checkpoint` to process many blocks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import Checkpoint, _check_kind, load_checkpoint
from ..device import resolve_device
from ..errors import CycleULMError
from .nets import DISPLAY_NAMES

__all__ = ["DEFAULT_WEIGHTS", "WEIGHTS_DIR", "check_psf_in_range", "load_model", "resolve_network"]

#: Folder of the shipped weights.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"

#: Checkpoint kind -> shipped default weights.
DEFAULT_WEIGHTS: dict[str, Path] = {
    "mbdt": WEIGHTS_DIR / "mbdt_default.pt",
    "mblnet": WEIGHTS_DIR / "mblnet_default.pt",
    "mbtnet": WEIGHTS_DIR / "mbtnet_default.pt",
}

#: Without ``extra["sigma_range_px"]``, a checkpoint trained for one PSF is
#: assumed to cope with MB-only sigmas within these factors of its own.
_SINGLE_PSF_TOLERANCE = (0.7, 1.4)

#: Relative margin around a stored training range: PSF estimates scatter by
#: 5-10 %, and a network trained for one PSF (a degenerate range, lo == hi)
#: still works for a slightly different one.
RANGE_MARGIN = 0.15


def load_model(
    kind: str,
    source: str | os.PathLike | Checkpoint | None = None,
    device: str | torch.device | None = None,
) -> Checkpoint:
    """Load a network for inference.

    Parameters
    ----------
    kind : {"mbdt", "mblnet", "mbtnet"}
        Which network.
    source : None, "default", path or Checkpoint
        ``None`` / ``"default"``: the shipped weights; a path: a checkpoint
        file; a :class:`Checkpoint`: checked and returned (moved to
        ``device`` when one is given).
    device : str or torch.device, optional
        Where to put the model (default: CUDA when available).

    Returns
    -------
    Checkpoint
        With the model in eval mode.

    Raises
    ------
    CycleULMError
        Unknown kind, default weights not shipped, missing or corrupt file,
        or a checkpoint of another kind.
    """
    _check_kind(kind)
    name = DISPLAY_NAMES[kind]
    if isinstance(source, Checkpoint):
        if source.kind != kind:
            raise CycleULMError(
                f"an {DISPLAY_NAMES.get(source.kind, source.kind)} checkpoint was given where an "
                f"{name} model is needed; pass the {name} checkpoint."
            )
        if device is not None:
            source.model.to(resolve_device(device))
        source.model.eval()
        return source
    if source is None or (isinstance(source, str) and source.lower() == "default"):
        path = DEFAULT_WEIGHTS[kind]
        if not path.is_file():
            raise CycleULMError(
                f"no default weights shipped for {name} ({path.name} is missing from "
                f"{path.parent}); train them with scripts/train_default_weights.py "
                f"(or `cycleulm train {kind}`) or pass a checkpoint."
            )
        return load_checkpoint(path, kind=kind, device=device)
    if isinstance(source, (str, os.PathLike)):
        return load_checkpoint(source, kind=kind, device=device)
    raise CycleULMError(
        f"the {name} model must be None, 'default', a checkpoint path or a Checkpoint, "
        f"got {type(source).__name__}."
    )


def resolve_network(
    kind: str, source, device: str | torch.device | None = None
) -> tuple[nn.Module, torch.device, Checkpoint | None]:
    """The torch module to run for ``source`` (see the module notes), its device, its checkpoint.

    A ``torch.nn.Module`` is used as given: moved to ``device`` when one is
    given, else left where its parameters are (CPU for parameter-free modules).
    The weights are put in channels-last layout (the values are unchanged; see
    :mod:`napari_cycleulm.dl.inference`).
    """
    if isinstance(source, nn.Module):
        if device is not None:
            dev = resolve_device(device)
            source.to(dev)
        else:
            p = next(iter(source.parameters()), None)
            dev = p.device if p is not None else torch.device("cpu")
        return source.to(memory_format=torch.channels_last), dev, None
    ckpt = load_model(kind, source, device)
    p = next(iter(ckpt.model.parameters()), None)
    dev = p.device if p is not None else resolve_device(device)
    return ckpt.model.to(memory_format=torch.channels_last), dev, ckpt


def _sigma_ranges(value) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """((lo_y, hi_y), (lo_x, hi_x)) from ``(lo, hi)`` or ``((lo, hi), (lo, hi))``."""
    try:
        arr = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value, dtype=float)
    except (TypeError, ValueError):
        return None
    if arr.shape == (2,):
        return (tuple(arr), tuple(arr))
    if arr.shape == (2, 2):
        return (tuple(arr[0]), tuple(arr[1]))
    return None


def check_psf_in_range(mb_psf, checkpoint: Checkpoint) -> str | None:
    """A warning message when the MB-only PSF is outside what the network was trained on.

    Parameters
    ----------
    mb_psf : PSF
        The MB-only domain PSF of the data (``psf.mbonly()``).
    checkpoint : Checkpoint
        An MBL-Net or MBT-Net (or MB-DT) checkpoint.  Its training range is
        ``checkpoint.extra["sigma_range_px"]`` (``(lo, hi)`` for both axes or
        ``((lo_y, hi_y), (lo_x, hi_x))``, MB-only sigmas in pixels), widened
        by :data:`RANGE_MARGIN` (15 %) on both sides; without it, a network
        trained for one PSF (``checkpoint.psf``, the CEUS PSF) covers its
        MB-only sigma within x0.7 - x1.4.

    Returns
    -------
    str or None
        The message, or None when in range or when the checkpoint records
        neither a range nor a PSF.
    """
    if mb_psf is None:
        return None
    name = DISPLAY_NAMES.get(checkpoint.kind, checkpoint.kind)
    where = f" ({checkpoint.path})" if checkpoint.path else ""
    ranges = _sigma_ranges((checkpoint.extra or {}).get("sigma_range_px"))
    if ranges is None and checkpoint.psf:
        try:
            factor = float(checkpoint.psf.get("mbonly_factor", 0.5))
            sy = float(checkpoint.psf["sigma_y_px"]) * factor
            sx = float(checkpoint.psf["sigma_x_px"]) * factor
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        lo, hi = _SINGLE_PSF_TOLERANCE
        ranges = ((sy * lo, sy * hi), (sx * lo, sx * hi))
    elif ranges is not None:
        m = RANGE_MARGIN
        ranges = tuple((a / (1 + m), b * (1 + m)) for a, b in ranges)
    if ranges is None:
        return None
    bad = []
    for axis, sigma, (lo, hi) in (
        ("y", mb_psf.sigma_y_px, ranges[0]),
        ("x", mb_psf.sigma_x_px, ranges[1]),
    ):
        if not lo <= sigma <= hi:
            bad.append(f"sigma_{axis} = {sigma:.2f} px outside [{lo:.2f}, {hi:.2f}]")
    if not bad:
        return None
    if checkpoint.kind == "mbdt":
        fix = "train MB-DT on this data (`cycleulm train mbdt INPUT`)"
    else:
        fix = f"train a network for this PSF (`cycleulm train {checkpoint.kind} --psf PSF.json`)"
    return (
        f"the MB-only PSF of the data ({'; '.join(bad)}) is outside the range the {name} "
        f"network{where} was trained on, so its output may be unreliable; {fix} or check the "
        "PSF estimate."
    )
