"""Conventional microbubble localisation: NCC template matching and sparse deconvolution.

:func:`localise` dispatches to :func:`~.ncc.localise_ncc` (``method="ncc"``)
or :func:`~.decon.localise_decon` (``method="decon"``).  Both return
:class:`~napari_cycleulm.tables.Localisations` with columns
``frame, y, x, intensity, score`` in pixels.
"""

from __future__ import annotations

from ..errors import CycleULMError
from ..tables import Localisations
from .decon import deconvolve, localise_decon
from .ncc import localise_ncc, ncc_maps
from .peaks import SUBPIXEL_METHODS, find_peaks, refine_subpixel

__all__ = [
    "METHODS",
    "SUBPIXEL_METHODS",
    "deconvolve",
    "find_peaks",
    "localise",
    "localise_decon",
    "localise_ncc",
    "ncc_maps",
    "refine_subpixel",
]

#: Localisation methods understood by :func:`localise`.
METHODS = ("ncc", "decon")


def localise(frames, psf, method: str = "ncc", **kw) -> Localisations:
    """Localise microbubbles in a ``(T, H, W)`` stack with a conventional method.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` stack or ``(H, W)`` image.
    psf : PSF or array_like
        PSF model or 2-D kernel.
    method : {"ncc", "decon"}
        Normalised cross-correlation or sparsity-based deconvolution.
    **kw
        Passed to :func:`~.ncc.localise_ncc` or :func:`~.decon.localise_decon`.

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
    raise CycleULMError(f"unknown localisation method {method!r}; choose one of {METHODS}.")
