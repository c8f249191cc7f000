"""Localisation by normalised cross-correlation (NCC) with the PSF.

Each frame is correlated with the zero-mean PSF template; the correlation is
divided by the local energy of the frame under the template window, which
gives a score in ``[-1, 1]`` that does not depend on bubble brightness.  Peaks
of the score map above a threshold are the bubbles, refined to sub-pixel
precision.
"""

from __future__ import annotations

import numpy as np
import torch

from ..arrays import as_frames
from ..device import resolve_device
from ..errors import CycleULMError
from ..io.tables import Localisations
from ._common import check_kernel_fits, fast_len, psf_kernel
from .peaks import SUBPIXEL_METHODS, find_peaks, refine_subpixel

__all__ = ["localise_ncc", "ncc_maps"]

#: Windows whose local variance is below this fraction of the largest local
#: variance in the frame are treated as flat (score 0): a noise-free background
#: has no structure to correlate with, and float rounding would otherwise turn
#: it into arbitrary scores.
FLAT_FRACTION = 1e-6


def _window_sums(x: torch.Tensor, kh: int, kw: int, cy: int, cx: int):
    """Sums of ``x`` and ``x**2`` over the template window at every pixel.

    The window at ``(y, x)`` covers rows ``y - cy .. y - cy + kh - 1`` and columns
    ``x - cx .. x - cx + kw - 1``; pixels outside the frame count as 0 (the same
    zero padding as the FFT correlation).
    """
    b, h, w = x.shape
    x64 = x.to(torch.float64)
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    y0 = (ys - cy).clamp(0, h)
    y1 = (ys - cy + kh).clamp(0, h)
    x0 = (xs - cx).clamp(0, w)
    x1 = (xs - cx + kw).clamp(0, w)
    out = []
    for v in (x64, x64 * x64):
        sat = torch.zeros((b, h + 1, w + 1), dtype=torch.float64, device=x.device)
        sat[:, 1:, 1:] = v.cumsum(1).cumsum(2)
        out.append(
            sat[:, y1][:, :, x1]
            - sat[:, y0][:, :, x1]
            - sat[:, y1][:, :, x0]
            + sat[:, y0][:, :, x0]
        )
    return out


class _NCC:
    """Batched NCC against one template, FFT sizes cached per frame shape."""

    def __init__(self, kernel: np.ndarray, shape: tuple[int, int], device: torch.device):
        kh, kw = kernel.shape
        h, w = shape
        self.kh, self.kw = kh, kw
        self.cy, self.cx = kh // 2, kw // 2
        self.n = float(kh * kw)
        tz = kernel.astype(np.float64) - kernel.mean(dtype=np.float64)
        self.tnorm = float(np.sqrt((tz**2).sum()))
        if self.tnorm <= 0:
            raise CycleULMError("the PSF kernel is constant; NCC needs a kernel with structure.")
        self.size = (fast_len(h + kh - 1), fast_len(w + kw - 1))
        flipped = torch.from_numpy(np.ascontiguousarray(tz[::-1, ::-1])).to(device, torch.float32)
        self.kf = torch.fft.rfft2(flipped, s=self.size)
        self.h, self.w = h, w
        self.device = device

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """NCC score and fitted amplitude maps, both ``(B, H, W)``."""
        full = torch.fft.irfft2(torch.fft.rfft2(x, s=self.size) * self.kf, s=self.size)
        oy, ox = self.kh - 1 - self.cy, self.kw - 1 - self.cx
        num = full[:, oy : oy + self.h, ox : ox + self.w].to(torch.float64)
        s1, s2 = _window_sums(x, self.kh, self.kw, self.cy, self.cx)
        var = (s2 - s1 * s1 / self.n).clamp_min(0)
        vmax = var.amax(dim=(1, 2), keepdim=True)
        flat = var <= FLAT_FRACTION * vmax
        score = num / (torch.sqrt(var) * self.tnorm + 1e-30)
        score = torch.where(flat, torch.zeros_like(score), score).clamp(-1, 1)
        amp = num / (self.tnorm**2)
        return score.to(torch.float32), amp.to(torch.float32)


def ncc_maps(
    frames, psf, *, batch_size: int = 32, device: str | torch.device | None = None
) -> np.ndarray:
    """NCC score maps of a stack with the PSF template.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` stack or ``(H, W)`` image.
    psf : PSF or array_like
        PSF model or a 2-D kernel (the template).
    batch_size : int
        Frames per FFT batch.
    device : str or torch.device, optional
        Torch device (default: CUDA when available).

    Returns
    -------
    numpy.ndarray
        float32 ``(T, H, W)`` scores in ``[-1, 1]``; the score at ``(y, x)`` is
        that of the template centred on the pixel (index ``kh // 2, kw // 2`` of
        the kernel).
    """
    arr = as_frames(frames)
    kernel, _ = psf_kernel(psf)
    check_kernel_fits(kernel, arr.shape[1:])
    dev = resolve_device(device)
    op = _NCC(kernel, arr.shape[1:], dev)
    out = np.empty_like(arr)
    bs = max(1, int(batch_size))
    for s in range(0, arr.shape[0], bs):
        score, _ = op(torch.from_numpy(arr[s : s + bs]).to(dev))
        out[s : s + bs] = score.cpu().numpy()
    return out


def localise_ncc(
    frames,
    psf,
    threshold: float = 0.5,
    *,
    min_distance: int | None = None,
    subpixel: str = "gaussian",
    max_per_frame: int | None = None,
    exclude_border: int = 0,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> Localisations:
    """Localise bubbles as peaks of the normalised cross-correlation with the PSF.

    ``NCC = sum((I - mean_I)(T - mean_T)) / sqrt(sum((I - mean_I)^2) sum((T - mean_T)^2))``
    over the template window, computed for all pixels at once: the numerator by
    an FFT correlation with the zero-mean template, the local mean and energy of
    the frame by summed-area tables (float64).  Windows with (near) zero local
    variance score 0.  Peaks come from :func:`~.peaks.find_peaks` and are
    refined on the score map with :func:`~.peaks.refine_subpixel`.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` stack or ``(H, W)`` image (real intensities).
    psf : PSF or array_like
        PSF model (its Gaussian kernel is the template) or a 2-D kernel array.
        The template centre is its geometric centre; for even kernel sizes the
        half-pixel shift is corrected in the output positions.
    threshold : float
        Minimum NCC score (exclusive), in ``[-1, 1]``.
    min_distance : int, optional
        Peak suppression half-window in pixels; default is half the smaller PSF
        FWHM (rounded, at least 1).
    subpixel : str
        Refinement of the score-map peak, one of
        :data:`~.peaks.SUBPIXEL_METHODS`.  The default ``"gaussian"`` (3-point
        log-parabola) was the most accurate on Gaussian bubbles.
    max_per_frame : int, optional
        Keep at most this many best-scoring peaks per frame.
    exclude_border : int
        Drop peaks closer than this many pixels to the frame edge.
    batch_size : int
        Frames per FFT batch.
    device : str or torch.device, optional
        Torch device (default: CUDA when available).

    Returns
    -------
    Localisations
        Columns ``frame, y, x`` (pixels), ``intensity`` (least-squares amplitude
        of the template above the local mean at the integer peak, in frame
        units) and ``score`` (NCC value), sorted by frame then decreasing score.

    Raises
    ------
    CycleULMError
        On bad frames, a missing or invalid PSF, a kernel larger than the
        frames, or invalid parameters.
    """
    arr = as_frames(frames)
    kernel, fwhm = psf_kernel(psf)
    check_kernel_fits(kernel, arr.shape[1:])
    if not np.isfinite(threshold) or not -1.0 <= threshold < 1.0:
        raise CycleULMError(f"threshold must be in [-1, 1) for NCC scores, got {threshold!r}.")
    if subpixel not in SUBPIXEL_METHODS:
        raise CycleULMError(f"subpixel must be one of {SUBPIXEL_METHODS}, got {subpixel!r}.")
    if min_distance is None:
        min_distance = max(1, int(round(0.5 * min(fwhm))))
    dev = resolve_device(device)
    op = _NCC(kernel, arr.shape[1:], dev)
    shift_y = (kernel.shape[0] - 1) / 2.0 - op.cy
    shift_x = (kernel.shape[1] - 1) / 2.0 - op.cx
    parts = []
    bs = max(1, int(batch_size))
    for s in range(0, arr.shape[0], bs):
        score, amp = op(torch.from_numpy(arr[s : s + bs]).to(dev))
        f, y, x, v = find_peaks(
            score, threshold, min_distance, exclude_border=exclude_border, max_peaks=max_per_frame
        )
        if f.size == 0:
            continue
        score_np = score.cpu().numpy()
        yr, xr = refine_subpixel(score_np, f, y, x, method=subpixel)
        inten = amp.cpu().numpy()[f, y, x].astype(np.float64)
        parts.append(
            Localisations(
                {
                    "frame": f + s,
                    "y": yr + shift_y,
                    "x": xr + shift_x,
                    "intensity": inten,
                    "score": v,
                }
            )
        )
    if not parts:
        return Localisations({"frame": [], "y": [], "x": [], "intensity": [], "score": []})
    return Localisations.concat(parts)
