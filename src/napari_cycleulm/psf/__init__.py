"""Point spread function (PSF): model, estimation from bubbles, JSON I/O."""

from __future__ import annotations

from .fit import (
    AUTO_SEPARATION_FACTORS,
    FWHM_PER_SIGMA,
    MAX_SIGMA_PX,
    MIN_BUBBLES,
    MIN_SIGMA_PX,
    PSF,
    PSF_JSON_VERSION,
    REJECTION_KINDS,
    RELIABLE_BUBBLES,
    PSFEstimate,
    Rejection,
    bubble_patches,
    check_psf_extent,
    estimate_psf,
    estimate_psf_auto,
    gaussian_kernel,
    pick_isolated_bubbles,
    screen_bubbles,
    snap_to_maximum,
)

__all__ = [
    "AUTO_SEPARATION_FACTORS",
    "FWHM_PER_SIGMA",
    "MAX_SIGMA_PX",
    "MIN_BUBBLES",
    "MIN_SIGMA_PX",
    "PSF",
    "PSF_JSON_VERSION",
    "REJECTION_KINDS",
    "RELIABLE_BUBBLES",
    "PSFEstimate",
    "Rejection",
    "bubble_patches",
    "check_psf_extent",
    "estimate_psf",
    "estimate_psf_auto",
    "gaussian_kernel",
    "pick_isolated_bubbles",
    "screen_bubbles",
    "snap_to_maximum",
]
