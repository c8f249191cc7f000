"""Batched peak finding and sub-pixel refinement on score maps.

Shared by the NCC and deconvolution localisers, the network heads and the
PSF estimation (second bubbles in a patch, automatic bubble picking): a score
map per frame goes in, ``(frame, y, x, value)`` arrays come out.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CycleULMError

__all__ = ["find_peaks", "refine_subpixel", "SUBPIXEL_METHODS"]

#: Sub-pixel refinement methods understood by :func:`refine_subpixel`.
SUBPIXEL_METHODS = ("parabolic", "gaussian", "centroid", "centroid5", "none")


def _as_maps(maps) -> torch.Tensor:
    if isinstance(maps, torch.Tensor):
        t = maps.detach()
    else:
        arr = np.asarray(maps)
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise CycleULMError(f"maps must be real numbers, got dtype {arr.dtype}.")
        dtype = np.float64 if arr.dtype == np.float64 else np.float32
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=dtype))
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise CycleULMError(f"maps must be (frames, height, width), got shape {tuple(t.shape)}.")
    # float64 maps stay float64 (two values equal in float32 are not a plateau); the rest are float32.
    return t if t.dtype == torch.float64 else t.float()


def box_max(m: torch.Tensor, d: int) -> torch.Tensor:
    """Maximum over ``(2d + 1)^2`` boxes of ``(T, H, W)`` maps (``-inf`` outside).

    Separable running maxima of shifted views: the same values as
    ``max_pool2d(m, 2d + 1, stride=1, padding=d)``, several times faster on CPU.
    """
    h, w = m.shape[-2:]
    p = F.pad(m, (d, d, d, d), value=-float("inf"))
    rows = p[..., :, : w].clone()
    for i in range(1, 2 * d + 1):
        torch.maximum(rows, p[..., :, i : i + w], out=rows)
    out = rows[..., : h, :].clone()
    for i in range(1, 2 * d + 1):
        torch.maximum(out, rows[..., i : i + h, :], out=out)
    return out


def find_peaks(
    maps,
    threshold: float,
    min_distance: int = 1,
    exclude_border: int = 0,
    max_peaks: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Local maxima above a threshold, batched over frames.

    A pixel is a peak when it equals the maximum of its
    ``(2 min_distance + 1)^2`` neighbourhood (:func:`box_max` equality) and its
    value is ``> threshold``.  Ties (plateaus) are broken deterministically:
    among tied candidates within one neighbourhood only the first in raster
    order (smallest ``y``, then ``x``) is kept.

    Parameters
    ----------
    maps : array_like or torch.Tensor
        ``(T, H, W)`` (or ``(H, W)``) score maps; tensors stay on their device.
        float64 maps are compared in float64, any other type in float32.
    threshold : float
        Minimum value (exclusive).
    min_distance : int
        Half-size of the suppression window in pixels (>= 1).
    exclude_border : int
        Peaks closer than this many pixels to the image edge are dropped.
    max_peaks : int, optional
        Keep at most this many peaks per frame (the highest).

    Returns
    -------
    frame, y, x : numpy.ndarray
        int64 indices of the peaks, sorted by frame then decreasing value.
    value : numpy.ndarray
        float64 map value at each peak.
    """
    m = _as_maps(maps)
    d = int(min_distance)
    if d < 1:
        raise CycleULMError(f"min_distance must be >= 1, got {min_distance!r}.")
    t, h, w = m.shape
    cand = (m == box_max(m, d)) & (m > threshold)
    eb = int(exclude_border)
    if eb > 0:
        border = torch.zeros((h, w), dtype=torch.bool, device=m.device)
        border[eb : h - eb, eb : w - eb] = True
        cand &= border
    if cand.any():
        # Tie-break: keep the candidate with the smallest raster index per window.
        idx = torch.arange(h * w, device=m.device, dtype=torch.float32).reshape(1, h, w)
        neg = torch.where(cand, -idx, torch.full_like(m, -float("inf")))
        cand &= neg == box_max(neg, d)
    f, y, x = torch.nonzero(cand, as_tuple=True)
    v = m[f, y, x]
    f, y, x, v = (a.cpu().numpy() for a in (f, y, x, v))
    order = np.lexsort((-v, f))
    f, y, x, v = f[order], y[order], x[order], v[order].astype(np.float64)
    if max_peaks is not None and f.size:
        # Rank within each frame (already sorted by decreasing value).
        starts = np.r_[0, np.flatnonzero(np.diff(f)) + 1]
        rank = np.arange(f.size) - np.repeat(starts, np.diff(np.r_[starts, f.size]))
        keep = rank < int(max_peaks)
        f, y, x, v = f[keep], y[keep], x[keep], v[keep]
    return f.astype(np.int64), y.astype(np.int64), x.astype(np.int64), v


def _neighbourhood(m: np.ndarray, f, y, x, r: int) -> np.ndarray:
    """``(N, 2r+1, 2r+1)`` patches around integer peaks, edge-replicated."""
    t, h, w = m.shape
    off = np.arange(-r, r + 1)
    yy = np.clip(y[:, None] + off[None], 0, h - 1)
    xx = np.clip(x[:, None] + off[None], 0, w - 1)
    return m[f[:, None, None], yy[:, :, None], xx[:, None, :]]


def _parabola_offset(fm, f0, fp) -> np.ndarray:
    denom = fm - 2.0 * f0 + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        off = 0.5 * (fm - fp) / denom
    off = np.where((denom < 0) & np.isfinite(off), off, 0.0)
    return np.clip(off, -0.5, 0.5)


def refine_subpixel(
    maps,
    frame,
    y,
    x,
    method: str = "parabolic",
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel positions of integer peaks.

    Methods
    -------
    ``"parabolic"``
        Separable 3-point parabola through the peak and its two neighbours
        along y and along x.
    ``"gaussian"``
        The same on the logarithm of the values (exact for a sampled Gaussian);
        values are floored at a small positive number first.
    ``"centroid"`` / ``"centroid5"``
        Weighted centroid in the 3x3 / 5x5 window, weights are the values minus
        the window minimum.
    ``"none"``
        The integer positions.

    Offsets of the parabolic and Gaussian fits are clipped to +-0.5 pixel (the
    integer peak is the maximum); peaks on the image edge use replicated values
    and so get no correction across the edge.

    Parameters
    ----------
    maps : array_like or torch.Tensor
        ``(T, H, W)`` maps the peaks were found on.
    frame, y, x : array_like of int
        Integer peak positions (from :func:`find_peaks`).
    method : str
        One of :data:`SUBPIXEL_METHODS`.

    Returns
    -------
    y, x : numpy.ndarray
        float64 refined positions in pixels.
    """
    if method not in SUBPIXEL_METHODS:
        raise CycleULMError(f"method must be one of {SUBPIXEL_METHODS}, got {method!r}.")
    f = np.asarray(frame, dtype=np.int64).reshape(-1)
    yi = np.asarray(y, dtype=np.int64).reshape(-1)
    xi = np.asarray(x, dtype=np.int64).reshape(-1)
    if not (f.size == yi.size == xi.size):
        raise CycleULMError("frame, y and x must have the same length.")
    if f.size == 0 or method == "none":
        return yi.astype(np.float64), xi.astype(np.float64)
    m = _as_maps(maps).cpu().numpy().astype(np.float64, copy=False)
    if method in ("parabolic", "gaussian"):
        p = _neighbourhood(m, f, yi, xi, 1)
        if method == "gaussian":
            floor = np.maximum(np.abs(p).max(axis=(1, 2), keepdims=True) * 1e-6, 1e-30)
            p = np.log(np.maximum(p, floor))
        dy = _parabola_offset(p[:, 0, 1], p[:, 1, 1], p[:, 2, 1])
        dx = _parabola_offset(p[:, 1, 0], p[:, 1, 1], p[:, 1, 2])
    else:
        r = 1 if method == "centroid" else 2
        p = _neighbourhood(m, f, yi, xi, r)
        wgt = p - p.min(axis=(1, 2), keepdims=True)
        tot = wgt.sum(axis=(1, 2))
        off = np.arange(-r, r + 1, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            dy = (wgt.sum(axis=2) @ off) / tot
            dx = (wgt.sum(axis=1) @ off) / tot
        dy = np.where(tot > 0, dy, 0.0)
        dx = np.where(tot > 0, dx, 0.0)
    return yi + dy, xi + dx
