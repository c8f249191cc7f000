"""Denoising and intensity scaling: Bradley-Roth adaptive thresholding, intensity normalisation.

* :func:`adaptive_threshold` is the Baseline denoiser: Bradley & Roth (2007)
  adaptive thresholding against the local mean, computed with integral images.
* :func:`normalise_intensity` scales a stack so that a high percentile maps to 1.

All functions take a ``(T, H, W)`` stack (or a single ``(H, W)`` image) and
return numpy arrays.
"""

from __future__ import annotations

import numpy as np
import torch

from ..arrays import as_frames
from ..intensity import intensity_reference
from ..device import resolve_device
from ..errors import CycleULMError

__all__ = [
    "adaptive_threshold",
    "box_mean",
    "default_window",
    "normalise_intensity",
]


# ---------------------------------------------------------------------------
# Integral images
# ---------------------------------------------------------------------------
def _box_sums(x: torch.Tensor, ry: int, rx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and pixel counts over ``(2 ry + 1) x (2 rx + 1)`` boxes clipped to the image.

    ``x`` is ``(B, H, W)``; the summed-area table is built in float64 so the
    differences of large partial sums stay exact enough for variances.
    """
    b, h, w = x.shape
    sat = torch.zeros((b, h + 1, w + 1), dtype=torch.float64, device=x.device)
    sat[:, 1:, 1:] = x.to(torch.float64).cumsum(1).cumsum(2)
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    y0 = (ys - ry).clamp(0, h)
    y1 = (ys + ry + 1).clamp(0, h)
    x0 = (xs - rx).clamp(0, w)
    x1 = (xs + rx + 1).clamp(0, w)
    s = (
        sat[:, y1][:, :, x1]
        - sat[:, y0][:, :, x1]
        - sat[:, y1][:, :, x0]
        + sat[:, y0][:, :, x0]
    )
    counts = (y1 - y0).to(torch.float64)[:, None] * (x1 - x0).to(torch.float64)[None, :]
    return s, counts


def box_mean(
    frames, window: int | tuple[int, int], device: str | torch.device | None = None
) -> np.ndarray:
    """Local mean over a ``window`` box, exact at the borders.

    At each pixel the mean is taken over the pixels of the box centred on it
    that lie inside the image (a summed-area table with per-pixel counts), so
    borders are neither zero-padded nor mirrored.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` stack or ``(H, W)`` image.
    window : int or (int, int)
        Box size ``(wy, wx)`` in pixels; an even size is rounded up to the next
        odd size so the box is centred.
    device : str or torch.device, optional
        Torch device (default: CUDA when available).

    Returns
    -------
    numpy.ndarray
        float32 ``(T, H, W)`` local means.
    """
    arr = as_frames(frames)
    wy, wx = _window_pair(window)
    dev = resolve_device(device)
    x = torch.from_numpy(arr).to(dev)
    s, c = _box_sums(x, wy // 2, wx // 2)
    return (s / c).to(torch.float32).cpu().numpy()


def _window_pair(window) -> tuple[int, int]:
    if np.isscalar(window):
        window = (window, window)
    try:
        wy, wx = (int(v) for v in window)
    except (TypeError, ValueError):
        raise CycleULMError(f"window must be an int or a pair of ints, got {window!r}.") from None
    if wy < 1 or wx < 1:
        raise CycleULMError(f"window must be at least 1 pixel, got {window!r}.")
    return wy | 1, wx | 1


def default_window(shape: tuple[int, int], psf=None) -> int:
    """Default adaptive-threshold window (odd, pixels).

    Bradley & Roth use about 1/8 of the image width.  When a PSF is given the
    window is 8 PSF widths (8 x the larger FWHM) instead, which keeps the local
    mean dominated by background even where bubbles are dense; in both cases the
    window is at least 3 pixels and at most the smaller image side.
    """
    h, w = shape
    if psf is not None:
        fwhm = max(float(psf.fwhm_y_px), float(psf.fwhm_x_px))
        win = int(round(8.0 * fwhm))
    else:
        win = int(round(min(h, w) / 8.0))
    side = min(h, w)
    win = max(3, min(win, side)) | 1
    if win > side:  # odd sizes only: the largest odd window inside the image
        win = max(1, side - 1 + side % 2)
    return win


# ---------------------------------------------------------------------------
# Adaptive threshold (Baseline denoiser)
# ---------------------------------------------------------------------------
def adaptive_threshold(
    frames,
    window: int | tuple[int, int] | None = None,
    sensitivity: float = 2.0,
    *,
    psf=None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Bradley & Roth (2007) adaptive thresholding, adapted to bright bubbles.

    Each pixel is compared with the mean of its ``window x window``
    neighbourhood (summed-area table, exact box means at the borders).  The
    original method binarises an image of dark text on a bright page and keeps
    pixels with ``I <= mean * (1 - s)`` as foreground.  In ULM the foreground is
    the bright microbubbles, so the sign is flipped: a pixel is kept when

        ``I > (1 + sensitivity) * local_mean``

    and the output holds the original intensity at kept pixels and 0 elsewhere
    (no binarisation).  A flat background (``I == local_mean``) is therefore
    always zeroed.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` stack or ``(H, W)`` image of non-negative intensities
        (B-mode / envelope data).
    window : int or (int, int), optional
        Neighbourhood size in pixels (even sizes are rounded up to odd).
        Default: :func:`default_window` - 1/8 of the smaller image side, or
        8 PSF FWHMs when ``psf`` is given.
    sensitivity : float
        Relative margin ``s >= 0`` above the local mean.  Bradley & Roth
        use 0.15 for text; residual speckle after a clutter filter has local
        maxima of 2-3 times its local mean, so the ULM default is 2.0 (keep
        pixels brighter than 3x the local mean).  Checked on five simulated
        settings (clutter -6/-12/-20 dB, 5-60 bubbles per frame, two PSF
        sizes): 2.0 gave the best or near-best localisation F1 of Baseline 1
        and 2 in each; 0.15 lost 0.1-0.25 in F1 (see docs/science.md).
    psf : PSF, optional
        Only used for the default window.
    batch_size : int
        Frames processed at once.
    device : str or torch.device, optional
        Torch device (default: CUDA when available).

    Returns
    -------
    numpy.ndarray
        float32 ``(T, H, W)``: input intensity where kept, 0 elsewhere.

    Raises
    ------
    CycleULMError
        On bad frames (see :func:`napari_cycleulm.arrays.as_frames`), a negative
        ``sensitivity`` or a bad window.
    """
    arr = as_frames(frames)
    if not np.isfinite(sensitivity) or sensitivity < 0:
        raise CycleULMError(f"sensitivity must be >= 0, got {sensitivity!r}.")
    if window is None:
        window = default_window(arr.shape[1:], psf)
    wy, wx = _window_pair(window)
    dev = resolve_device(device)
    out = np.empty_like(arr)
    for start in range(0, arr.shape[0], max(1, int(batch_size))):
        x = torch.from_numpy(arr[start : start + batch_size]).to(dev)
        s, c = _box_sums(x, wy // 2, wx // 2)
        keep = x.to(torch.float64) > (1.0 + sensitivity) * (s / c)
        out[start : start + batch_size] = torch.where(keep, x, torch.zeros_like(x)).cpu().numpy()
    return out


# ---------------------------------------------------------------------------
# Intensity normalisation
# ---------------------------------------------------------------------------
def normalise_intensity(frames, percentile: float = 99.9) -> np.ndarray:
    """Scale a stack so that its ``percentile``-th percentile maps to 1.

    One scale factor is used for the whole stack (no per-frame rescaling, so
    relative brightness between frames is kept) and values are not clipped:
    the brightest 0.1 % of pixels end up above 1.  If that percentile is not
    positive (sparse bubbles on a zero background), the maximum absolute value
    is used instead; an all-zero stack is returned unchanged.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` stack or ``(H, W)`` image.
    percentile : float
        Percentile in ``(0, 100]`` mapped to 1.

    Returns
    -------
    numpy.ndarray
        float32 ``(T, H, W)`` scaled copy.

    Raises
    ------
    CycleULMError
        On bad frames or a percentile outside ``(0, 100]``.
    """
    arr = as_frames(frames)
    if not (0 < percentile <= 100):
        raise CycleULMError(f"percentile must be in (0, 100], got {percentile!r}.")
    ref = intensity_reference(arr, percentile)
    if ref <= 0:
        return arr.copy()
    return (arr / np.float32(ref)).astype(np.float32)
