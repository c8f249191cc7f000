"""PSF estimation: a 2-D Gaussian fitted to the mean of isolated bubbles.

:func:`estimate_psf` refines each given bubble, rejects those that cannot be
used (each with a :class:`Rejection` and its kind), averages the re-centred
patches and fits the :class:`~.model.PSF` to the mean.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from ..arrays import as_frames, robust_sigma
from ..errors import CycleULMError
from ..io.tables import PointTable
from .model import FWHM_PER_SIGMA, PSF, _canonical_axes

__all__ = [
    "MIN_BUBBLES",
    "PSFEstimate",
    "REJECTION_KINDS",
    "RELIABLE_BUBBLES",
    "Rejection",
    "estimate_psf",
]


#: Fewest bubbles an estimate needs, and fewest before it is trusted without a warning.
MIN_BUBBLES = 3
RELIABLE_BUBBLES = 10


# ---------------------------------------------------------------------------
# Estimation from isolated bubbles
# ---------------------------------------------------------------------------


@dataclass
class PSFEstimate:
    """A PSF estimated from bubbles, with the report of how it was obtained.

    Attributes
    ----------
    psf : PSF
        The fitted PSF (CEUS domain).
    used : numpy.ndarray
        ``(M, 3)`` refined sub-pixel ``(frame, y, x)`` of the bubbles averaged.
    used_index : numpy.ndarray
        ``(M,)`` indices of those bubbles in the input points.
    rejected : list of (int, Rejection)
        Index in the input points and the reason (a message with a
        :attr:`Rejection.kind`), for every point not used.
    patch_radius : int
        Half-size of the patches averaged (patches are ``2r+1`` square).
    exclusion_radius : float
        Radius (pixels) of the central lobe, beyond which a second maximum
        above ``second_peak_fraction`` of the peak rejects a bubble.
    """

    psf: PSF
    used: np.ndarray
    used_index: np.ndarray
    rejected: list[tuple[int, Rejection]]
    patch_radius: int
    exclusion_radius: float

    @property
    def n_used(self) -> int:
        """Number of bubbles averaged."""
        return len(self.used_index)

    @property
    def mbonly(self) -> PSF:
        """The MB-only domain PSF (``psf.mbonly()``)."""
        return self.psf.mbonly()

    def summary(self) -> str:
        """A human-readable report (FWHM, fit residual, used/rejected bubbles)."""
        p = self.psf
        lines = [
            f"PSF from {self.n_used} bubble(s): FWHM axial {p.fwhm_y_px:.2f} px, "
            f"lateral {p.fwhm_x_px:.2f} px, rotation {np.degrees(p.theta_rad):.1f} deg",
        ]
        if p.pixel_size_um is not None:
            lines.append(f"  = {p.fwhm_y_um:.1f} um axial, {p.fwhm_x_um:.1f} um lateral")
        lines.append(f"  fit RMS residual {p.residual:.3f} of the peak")
        for i, why in self.rejected:
            lines.append(f"  rejected point {i}: {why}")
        return "\n".join(lines)


def _gauss2d(params: np.ndarray, yy: np.ndarray, xx: np.ndarray, rotate: bool) -> np.ndarray:
    amp, off, y0, x0, sy, sx = params[:6]
    theta = params[6] if rotate else 0.0
    dy, dx = yy - y0, xx - x0
    c, s = np.cos(theta), np.sin(theta)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    return off + amp * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))


def _fit_gaussian(patch: np.ndarray, rotate: bool, sigma0: tuple[float, float] | None = None):
    """Least-squares 2-D Gaussian fit; returns ``(params, rms)`` with params
    ``amp, offset, y0, x0, sigma_y, sigma_x, theta``."""
    h, w = patch.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    p = patch.astype(np.float64)
    off0 = float(np.median(np.concatenate([p[0], p[-1], p[:, 0], p[:, -1]])))
    iy, ix = np.unravel_index(np.argmax(p), p.shape)
    amp0 = float(p[iy, ix] - off0)
    if sigma0 is None:
        wgt = np.clip(p - off0, 0, None)
        wgt = wgt * (wgt > 0.2 * amp0)
        tot = wgt.sum() or 1.0
        sy0 = np.sqrt(max((wgt * (yy - iy) ** 2).sum() / tot, 0.25))
        sx0 = np.sqrt(max((wgt * (xx - ix) ** 2).sum() / tot, 0.25))
        # Moments of the >20% core underestimate sigma; correct for the truncation.
        sigma0 = (sy0 * 1.6, sx0 * 1.6)
    smax = max(h, w)
    x0 = [amp0, off0, iy, ix, sigma0[0], sigma0[1]]
    lo = [0.0, -np.inf, 0.0, 0.0, 0.2, 0.2]
    hi = [np.inf, np.inf, h - 1.0, w - 1.0, smax, smax]
    if rotate:
        x0.append(0.0)
        lo.append(-np.pi)
        hi.append(np.pi)
    x0 = np.clip(np.array(x0, dtype=np.float64), np.array(lo) + 1e-9, np.array(hi) - 1e-9)

    def resid(q):
        return (_gauss2d(q, yy, xx, rotate) - p).ravel()

    best = None
    starts = [x0]
    if rotate:
        # A second start at 45 degrees avoids the flat valley of theta when the
        # initial sigmas are nearly equal.
        x1 = x0.copy()
        x1[6] = np.pi / 4
        starts.append(x1)
    for start in starts:
        res = optimize.least_squares(resid, start, bounds=(lo, hi), x_scale="jac", max_nfev=400)
        if best is None or res.cost < best.cost:
            best = res
    q = best.x
    if not rotate:
        q = np.append(q, 0.0)
    rms = float(np.sqrt(np.mean(best.fun**2)))
    return q, rms, bool(best.success)


def _half_max_width(profile: np.ndarray, ipk: int) -> float:
    half = profile[ipk] / 2.0
    i = ipk
    while i > 0 and profile[i - 1] > half:
        i -= 1
    if i == 0:
        return float("nan")
    left = i - (profile[i] - half) / (profile[i] - profile[i - 1])
    j = ipk
    while j < len(profile) - 1 and profile[j + 1] > half:
        j += 1
    if j == len(profile) - 1:
        return float("nan")
    right = j + (profile[j] - half) / (profile[j] - profile[j + 1])
    return float(right - left)


def _rough_sigma(frames: np.ndarray, points: np.ndarray, max_points: int = 20) -> float:
    """Rough PSF sigma (pixels, larger axis) from half-maximum widths at the points.

    Used only to size patches; returns 2.0 when nothing can be measured.
    """
    t, h, w = frames.shape
    r = 12
    widths = []
    for f, y, x in points[:max_points]:
        f, iy, ix = int(round(f)), int(round(y)), int(round(x))
        if not (0 <= f < t and 0 <= iy < h and 0 <= ix < w):
            continue
        y0, y1, x0, x1 = max(iy - r, 0), min(iy + r + 1, h), max(ix - r, 0), min(ix + r + 1, w)
        win = frames[f, y0:y1, x0:x1].astype(np.float64)
        win = win - np.median(win)
        # Peak near the point, not elsewhere in the window.
        sy0, sx0 = max(iy - 2 - y0, 0), max(ix - 2 - x0, 0)
        sub = win[sy0 : iy + 3 - y0, sx0 : ix + 3 - x0]
        if sub.size == 0:
            continue
        py, px = np.unravel_index(np.argmax(sub), sub.shape)
        py, px = py + sy0, px + sx0
        if win[py, px] <= 0:
            continue
        wy = _half_max_width(win[:, px], py)
        wx = _half_max_width(win[py, :], px)
        if np.isfinite(wy) and np.isfinite(wx):
            widths.append(max(wy, wx))
    if not widths:
        return 2.0
    return float(np.median(widths) / FWHM_PER_SIGMA)


def _as_points(points, n_frames: int) -> np.ndarray:
    if points is None:
        raise CycleULMError("no bubble points given; pass an (N, 3) array of (frame, y, x).")
    if isinstance(points, PointTable):
        pts = points.positions
    else:
        try:
            pts = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError):
            raise CycleULMError("points must be an (N, 3) array of numbers (frame, y, x).") from None
        if pts.ndim == 1 and pts.size in (2, 3):
            pts = pts[None]
        if pts.ndim == 2 and pts.shape[1] == 2 and n_frames == 1:
            pts = np.column_stack([np.zeros(len(pts)), pts])
        if pts.ndim != 2 or pts.shape[1] != 3:
            if pts.size == 0:
                pts = pts.reshape(0, 3)
            else:
                raise CycleULMError(
                    f"points must be an (N, 3) array of (frame, y, x) pixels, got shape {pts.shape}."
                )
    if len(pts) == 0:
        raise CycleULMError(
            "no bubble points given; select at least 3 (ideally 10 or more) isolated bubbles "
            "or use estimate_psf_auto."
        )
    if not np.isfinite(pts).all():
        raise CycleULMError("points contain NaN or infinite coordinates.")
    return pts


#: Kinds of the reasons :func:`estimate_psf` rejects a bubble for (:attr:`Rejection.kind`),
#: with a short caption each.
REJECTION_KINDS = {
    "frame": "no such frame",
    "outside": "outside the image",
    "border": "too close to the border",
    "dim": "too dim",
    "neighbour": "has a neighbour",
    "fit": "fit failed",
    "other": "rejected",
}


class Rejection(str):
    """Why :func:`estimate_psf` / :func:`screen_bubbles` reject a bubble.

    The message itself (a ``str``: reports, comparisons and JSON see the
    text) carrying a structured :attr:`kind`, so code sorts rejections by
    kind without reading the English message.

    Attributes
    ----------
    kind : str
        A key of :data:`REJECTION_KINDS`: ``"frame"`` (no such frame),
        ``"outside"`` (outside the image), ``"border"`` (the patch would leave
        the image), ``"dim"`` (no bubble above the background),
        ``"neighbour"`` (a second bubble in the patch), ``"fit"`` (the
        Gaussian fit failed) or ``"other"``.
    """

    kind: str

    def __new__(cls, message: str, kind: str) -> Rejection:
        if kind not in REJECTION_KINDS:
            raise ValueError(f"unknown rejection kind {kind!r}; use one of {sorted(REJECTION_KINDS)}.")
        self = super().__new__(cls, message)
        self.kind = kind
        return self

    def __getnewargs__(self) -> tuple[str, str]:  # pickle / copy keep the kind
        return str(self), self.kind


def _local_maxima(image: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of the 3x3 local maxima of a 2-D image above ``threshold`` (exclusive).

    :func:`localise.peaks.find_peaks` with ``min_distance=1`` (the package's one
    peak finder; float64 images are compared in float64).  Of a flat-topped
    maximum (equal neighbours) only the first pixel in raster order is kept.
    """
    from ..localise.peaks import find_peaks  # not at module level: the localisers import psf

    _, y, x, _ = find_peaks(image, float(threshold), min_distance=1)
    mask = np.zeros(image.shape, bool)
    mask[y, x] = True
    return mask


def patch_radius_px(sigma_px: float, radius_sigmas: float = 4.0) -> int:
    """Half-size (pixels) of a bubble patch: ``ceil(radius_sigmas * sigma)`` clipped to [4, 30]."""
    return int(np.clip(np.ceil(radius_sigmas * sigma_px), 4, 30))


def _screening_radii(frames: np.ndarray, pts: np.ndarray, patch_radius, exclusion_radius):
    """Patch radius, central-lobe radius and peak search radius for :func:`estimate_psf`."""
    sigma_rough = _rough_sigma(frames, pts)
    r = int(patch_radius) if patch_radius is not None else patch_radius_px(sigma_rough)
    excl = float(exclusion_radius) if exclusion_radius is not None else max(2.0, 2.0 * sigma_rough)
    search = max(1, int(round(sigma_rough)))
    return r, excl, search


def _screen_points(frames, pts, r, excl, search, fit_rotation, second_peak_fraction, average):
    """Check each point and cut its re-centred patch.

    Yields ``(index, Rejection, None)`` for a rejected point and
    ``(index, None, (patch, (frame, y, x)))`` for an accepted one.
    """
    t, h, w = frames.shape
    margin = 2  # extra pixels so the sub-pixel shift does not pull in padding
    big = r + margin

    yy, xx = np.mgrid[-big : big + 1, -big : big + 1]
    dist = np.hypot(yy, xx)
    border = np.zeros((2 * r + 1, 2 * r + 1), bool)
    border[[0, -1], :] = border[:, [0, -1]] = True

    for i, (fr, y, x) in enumerate(pts):
        f = int(round(fr))
        if not 0 <= f < t:
            yield i, Rejection(f"frame {f} does not exist (the stack has {t} frames, 0-{t - 1})", "frame"), None
            continue
        if not (-0.5 <= y < h - 0.5 and -0.5 <= x < w - 0.5):
            yield i, Rejection(f"({y:.1f}, {x:.1f}) is outside the {h}x{w} image", "outside"), None
            continue
        iy, ix = int(round(y)), int(round(x))
        ys, xs = slice(max(iy - search, 0), iy + search + 1), slice(max(ix - search, 0), ix + search + 1)
        sub = frames[f, ys, xs]
        py, px = np.unravel_index(np.argmax(sub), sub.shape)
        py, px = py + ys.start, px + xs.start
        if py - big < 0 or px - big < 0 or py + big >= h or px + big >= w:
            yield i, Rejection(f"too close to the image border (needs {big} px around the bubble)", "border"), None
            continue
        raw = frames[f, py - big : py + big + 1, px - big : px + big + 1].astype(np.float64)
        win = raw
        core = win[margin:-margin, margin:-margin]
        ring = core[border]
        bg = float(np.median(ring))
        noise = float(robust_sigma(ring, center=bg))
        win = win - bg
        peak = float(win[big, big])
        if peak <= max(3.0 * noise, 1e-12):
            yield i, Rejection("no bubble above the background at this point", "dim"), None
            continue
        maxima = _local_maxima(win, second_peak_fraction * peak) & (dist > excl)
        if maxima.any():
            k = np.argmax(np.where(maxima, win, -np.inf))
            ky, kx = np.unravel_index(k, win.shape)
            yield (
                i,
                Rejection(f"a second bubble in the patch (maximum at {ky - big:+d}, {kx - big:+d} px, "
                          f"{100 * win[ky, kx] / peak:.0f}% of the peak)", "neighbour"),
                None,
            )
            continue
        q, _, ok = _fit_gaussian(win, rotate=fit_rotation)
        amp, _, cy, cx = q[:4]
        if not ok or amp <= 0 or abs(cy - big) > 1.5 or abs(cx - big) > 1.5:
            yield i, Rejection("the Gaussian fit on its patch failed (not a single bubble?)", "fit"), None
            continue
        if average == "power":
            power = raw**2
            power_bg = float(np.median(power[margin:-margin, margin:-margin][border]))
            shifted = ndimage.shift(power - power_bg, (big - cy, big - cx), order=3, mode="nearest")
            shifted = shifted[margin:-margin, margin:-margin]
            patch = shifted / max(float(shifted[r, r]), 1e-12)
        else:
            shifted = ndimage.shift(win, (big - cy, big - cx), order=3, mode="nearest")
            patch = shifted[margin:-margin, margin:-margin] / amp
        yield i, None, (patch, (f, py - big + cy, px - big + cx))


def estimate_psf(
    frames,
    points,
    *,
    patch_radius: int | None = None,
    pixel_size_um: float | None = None,
    exclusion_radius: float | None = None,
    fit_rotation: bool = True,
    shrink_factor: float = 0.5,
    second_peak_fraction: float = 0.5,
    average: str = "power",
) -> PSFEstimate:
    """Estimate the PSF as a 2-D Gaussian fitted to the mean of isolated bubbles.

    Each point is refined to sub-pixel precision by a Gaussian fit on its
    patch, the patch is shifted (cubic spline) so the bubble sits on the
    central pixel, background-subtracted (median of the patch border) and
    normalised to its fitted peak; the accepted patches are averaged and a
    2-D Gaussian (amplitude, offset, centre, ``sigma_y``, ``sigma_x``,
    optional rotation) is fitted to the mean with ``scipy.optimize.least_squares``.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` CEUS stack (or one ``(H, W)`` frame).
    points : array_like or Localisations
        ``(N, 3)`` approximate bubble centres ``(frame, y, x)`` in pixels;
        centres within a couple of pixels of the true peak are enough.
    patch_radius : int, optional
        Half-size of the averaged patch; default ``ceil(4 sigma)`` of a rough
        half-maximum width measured at the points, clipped to [4, 30].
    pixel_size_um : float, optional
        Pixel size (micrometres) for the FWHM in micrometres.
    exclusion_radius : float, optional
        Radius of the central lobe (pixels); default ``max(2, 2 sigma)`` of
        the rough estimate.  A second local maximum above
        ``second_peak_fraction`` of the peak farther than this from the
        centre rejects the bubble.
    fit_rotation : bool
        Fit the ellipse rotation; otherwise the Gaussian is axis-aligned.
    shrink_factor : float
        Stored as ``psf.mbonly_factor``: the MB-only PSF is the fitted one
        shrunk by this factor (CycleULM uses 0.5).
    second_peak_fraction : float
        See ``exclusion_radius``.
    average : {"power", "amplitude"}
        How patches are averaged.  ``"power"`` (default) averages squared
        envelopes and subtracts the background power before taking the
        square root: for envelope (magnitude) data, bubble and clutter powers
        add (E|a + c|^2 = a^2 + E|c|^2), whereas averaging magnitudes
        compresses the PSF tails into the clutter floor (Rician bias) and
        under-estimates the FWHM by 10-15 % at -12 dB clutter.
        ``"amplitude"`` averages background-subtracted magnitudes: use it for
        data that are not linear envelopes (e.g. log-compressed).

    Returns
    -------
    PSFEstimate
        The PSF and the report (bubbles used, rejected with reasons).

    Raises
    ------
    CycleULMError
        If no points are given, the stack is invalid, or fewer than 3 bubbles
        remain after rejection.

    Warns
    -----
    UserWarning
        When only 3-9 bubbles are usable (estimate uncertain).
    """
    frames = as_frames(frames)
    t = frames.shape[0]
    pts = _as_points(points, t)
    if patch_radius is not None and (int(patch_radius) != patch_radius or patch_radius < 2):
        raise CycleULMError(f"patch_radius must be an integer >= 2, got {patch_radius!r}.")
    if not 0 < shrink_factor <= 1:
        raise CycleULMError(f"shrink_factor must be in (0, 1], got {shrink_factor!r}.")
    if pixel_size_um is not None and not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise CycleULMError(f"pixel_size_um must be positive, got {pixel_size_um!r}.")

    if average not in ("power", "amplitude"):
        raise CycleULMError(f"average must be 'power' or 'amplitude', got {average!r}.")
    r, excl, search = _screening_radii(frames, pts, patch_radius, exclusion_radius)
    patches, used, used_index, rejected = [], [], [], []
    for i, reason, payload in _screen_points(
        frames, pts, r, excl, search, fit_rotation, second_peak_fraction, average
    ):
        if reason is not None:
            rejected.append((i, reason))
            continue
        patch, centre = payload
        patches.append(patch)
        used.append(centre)
        used_index.append(i)

    n = len(patches)
    if n < MIN_BUBBLES:
        reasons = "; ".join(f"point {i}: {why}" for i, why in rejected[:10])
        more = f" (and {len(rejected) - 10} more)" if len(rejected) > 10 else ""
        raise CycleULMError(
            f"only {n} usable bubble(s) out of {len(pts)}; at least {MIN_BUBBLES} isolated "
            f"bubbles away from the border are needed (10 or more recommended). "
            f"Rejected: {reasons}{more}."
        )
    if n < RELIABLE_BUBBLES:
        warnings.warn(
            f"PSF estimated from only {n} bubbles; the estimate is uncertain "
            f"(10 or more are recommended).",
            UserWarning,
            stacklevel=2,
        )
    mean = np.mean(patches, axis=0)
    q, rms, _ = _fit_gaussian(mean, rotate=fit_rotation)
    amp = float(q[0])
    # A Gaussian envelope of width sigma has a Gaussian power of width sigma/sqrt(2);
    # fitting the power keeps the (zero-mean) background noise from biasing the width.
    width = np.sqrt(2.0) if average == "power" else 1.0
    sy, sx, theta = _canonical_axes(q[4] * width, q[5] * width, q[6])
    if not fit_rotation:
        theta = 0.0
        sy, sx = float(q[4]) * width, float(q[5]) * width
    if average == "power":
        mean = np.sqrt(np.clip(mean, 0.0, None))
    peak = float(mean.max())
    psf = PSF(
        sigma_y_px=sy,
        sigma_x_px=sx,
        theta_rad=theta,
        pixel_size_um=pixel_size_um,
        measured=(mean / peak).astype(np.float32) if peak > 0 else mean.astype(np.float32),
        n_bubbles=n,
        residual=rms / amp if amp > 0 else float("nan"),
        mbonly_factor=shrink_factor,
    )
    return PSFEstimate(
        psf=psf,
        used=np.asarray(used, dtype=np.float64).reshape(-1, 3),
        used_index=np.asarray(used_index, dtype=np.int64),
        rejected=rejected,
        patch_radius=r,
        exclusion_radius=excl,
    )
