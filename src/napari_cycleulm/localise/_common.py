"""Pieces shared by the conventional localisers: PSF kernels and FFT sizes."""

from __future__ import annotations

import numpy as np

from ..errors import CycleULMError
from ..psf import FWHM_PER_SIGMA, PSF


def psf_kernel(psf, name: str = "psf") -> tuple[np.ndarray, tuple[float, float]]:
    """Kernel array of a PSF (or a 2-D array) and its FWHM ``(y, x)`` in pixels.

    For a :class:`~napari_cycleulm.psf.PSF` the Gaussian model kernel is used;
    for an array the FWHM is estimated from its second moments.
    """
    if psf is None:
        raise CycleULMError(
            f"{name} is missing: pass a PSF (napari_cycleulm.psf.PSF, e.g. estimated from "
            "isolated bubbles) or a 2-D kernel array."
        )
    if isinstance(psf, PSF):
        k = psf.kernel
        return k.astype(np.float32), (psf.fwhm_y_px, psf.fwhm_x_px)
    k = np.asarray(psf)
    if k.dtype == object or not np.issubdtype(k.dtype, np.number) or np.iscomplexobj(k):
        raise CycleULMError(f"{name} kernel must be a real 2-D array, got dtype {k.dtype}.")
    if k.ndim != 2 or k.size == 0:
        raise CycleULMError(f"{name} kernel must be a non-empty 2-D array, got shape {k.shape}.")
    k = k.astype(np.float32)
    if not np.isfinite(k).all():
        raise CycleULMError(f"{name} kernel contains NaN or infinite values.")
    if k.max() <= 0:
        raise CycleULMError(f"{name} kernel must have a positive peak.")
    w = np.clip(k, 0, None)
    yy, xx = np.mgrid[0 : k.shape[0], 0 : k.shape[1]]
    tot = w.sum()
    cy, cx = (w * yy).sum() / tot, (w * xx).sum() / tot
    sy = np.sqrt(max((w * (yy - cy) ** 2).sum() / tot, 0.25))
    sx = np.sqrt(max((w * (xx - cx) ** 2).sum() / tot, 0.25))
    return k, (float(FWHM_PER_SIGMA * sy), float(FWHM_PER_SIGMA * sx))


def check_kernel_fits(kernel: np.ndarray, shape: tuple[int, int], name: str = "psf") -> None:
    """Raise if the kernel is larger than the frames."""
    if kernel.shape[0] > shape[0] or kernel.shape[1] > shape[1]:
        raise CycleULMError(
            f"the {name} kernel {kernel.shape} is larger than the frames {tuple(shape)}; "
            "use a smaller kernel (crop it) or larger frames."
        )


def fast_len(n: int) -> int:
    """Smallest ``m >= n`` whose prime factors are 2, 3 and 5 (fast FFT size)."""
    n = max(int(n), 1)
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            q = p35
            while q < n:
                q *= 2
            best = min(best, q)
            p35 *= 3
        p5 *= 5
    return best
