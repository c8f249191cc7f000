"""Microbubble localisation: NCC template matching, sparse deconvolution, MBL-Net.

:func:`localise` dispatches to :func:`~.ncc.localise_ncc` (``method="ncc"``),
:func:`~.decon.localise_decon` (``method="decon"``) or
:func:`~.mblnet.localise_mblnet` (``method="mblnet"``, on MB-only frames; takes
``model=``).  All return :class:`~napari_cycleulm.io.tables.Localisations` with
columns ``frame, y, x, intensity, score`` in pixels.
"""

from __future__ import annotations

from ..errors import CycleULMError
from ..io.tables import Localisations
from .decon import deconvolve, localise_decon
from .mblnet import localise_mblnet
from .ncc import localise_ncc, ncc_maps
from .peaks import SUBPIXEL_METHODS, find_peaks, refine_subpixel

__all__ = [
    "METHODS",
    "SUBPIXEL_METHODS",
    "deconvolve",
    "find_peaks",
    "localise",
    "localise_decon",
    "localise_mblnet",
    "localise_ncc",
    "ncc_maps",
    "refine_subpixel",
]

#: Localisation methods understood by :func:`localise`.
METHODS = ("ncc", "decon", "mblnet")


def localise(frames, psf, method: str = "ncc", **kw) -> Localisations:
    """Localise microbubbles in a ``(T, H, W)`` stack with a conventional method.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` stack or ``(H, W)`` image.
    psf : PSF or array_like
        PSF model or 2-D kernel (not used by ``"mblnet"``; may be None).
    method : {"ncc", "decon", "mblnet"}
        Normalised cross-correlation, sparsity-based deconvolution, or MBL-Net
        (MB-only frames; pass ``model=``, see :func:`~.mblnet.localise_mblnet`).
    **kw
        Passed to :func:`~.ncc.localise_ncc`, :func:`~.decon.localise_decon`
        or :func:`~.mblnet.localise_mblnet`.

    Returns
    -------
    Localisations

    Raises
    ------
    CycleULMError
        On an unknown method, or whatever the chosen method raises.
    """
    name = str(method).lower()
    if name == "ncc":
        return localise_ncc(frames, psf, **kw)
    if name in ("decon", "deconvolution"):
        return localise_decon(frames, psf, **kw)
    if name == "mblnet":
        return localise_mblnet(frames, **kw)
    raise CycleULMError(f"unknown localisation method {method!r}; choose one of {METHODS}.")
