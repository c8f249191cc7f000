"""Picking bubbles for the PSF: automatically, or by hand with the napari PSF widget.

:func:`pick_isolated_bubbles` finds bright isolated bubbles and
:func:`estimate_psf_auto` estimates the PSF from them; :func:`snap_to_maximum`,
:func:`bubble_patches` and :func:`screen_bubbles` help a user who clicks
bubbles (the per-bubble checks are those of :func:`~.fit.estimate_psf`).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from ..arrays import as_frames, robust_sigma
from ..errors import CycleULMError
from ..io.tables import PointTable
from .fit import (
    MIN_BUBBLES,
    RELIABLE_BUBBLES,
    PSFEstimate,
    Rejection,
    _as_points,
    _local_maxima,
    _rough_sigma,
    _screen_points,
    _screening_radii,
    estimate_psf,
    patch_radius_px,
)

__all__ = [
    "AUTO_PATCH_RADIUS_SIGMAS",
    "AUTO_SEPARATION_FACTORS",
    "bubble_patches",
    "estimate_psf_auto",
    "pick_isolated_bubbles",
    "screen_bubbles",
    "snap_to_maximum",
]


def pick_isolated_bubbles(
    frames,
    n: int = 20,
    *,
    min_separation: float | None = None,
    separation_factor: float = 1.0,
    frames_to_search: int | None = None,
    seed: int = 0,
    neighbour_fraction: float = 0.2,
    radius_sigmas: float = 4.0,
) -> np.ndarray:
    """Find bright, isolated bubbles automatically (for headless PSF estimation).

    Candidates are local maxima of the lightly smoothed frame (Gaussian,
    sigma 1 px) brighter than ``median + max(6 noise, 0.2 (max - median))``.
    Maxima closer than the central lobe to a brighter one are merged; a
    candidate is kept if no other maximum above ``neighbour_fraction`` of its
    height lies within ``min_separation`` and it is ``patch radius + 2`` px
    from the border.  The brightest are returned, spread over frames: at most
    ``ceil(n / frames with candidates)`` per frame first, then the rest by
    brightness.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` CEUS stack.
    n : int
        Maximum number of bubbles to return.
    min_separation : float, optional
        Isolation distance (pixels); default ``8 sigma`` of a rough PSF width
        (twice the default patch radius of :func:`estimate_psf`).
    separation_factor : float
        Scales the default ``min_separation`` (ignored when that is given);
        :func:`estimate_psf_auto` lowers it on small or crowded images.
    frames_to_search : int, optional
        Number of frames to search, chosen at random (``seed``) when fewer than
        ``T``; default all frames up to 200.
    seed : int
        Seed for the frame subset.
    neighbour_fraction : float
        See above.
    radius_sigmas : float
        Half-size of the patch :func:`estimate_psf` will cut around each
        bubble, in rough PSF sigmas (``ceil(radius_sigmas * sigma)`` clipped
        to [4, 30] pixels; 4 is :func:`estimate_psf`'s default).  It sets the
        border margin and the default ``min_separation`` (twice the radius).

    Returns
    -------
    numpy.ndarray
        ``(M, 3)`` float array of ``(frame, y, x)`` pixel positions, ``M <= n``,
        brightest first.
    """
    frames = as_frames(frames)
    t, h, w = frames.shape
    if int(n) != n or n < 1:
        raise CycleULMError(f"n must be a positive integer, got {n!r}.")
    rng = np.random.default_rng(seed)
    k = min(t, 200 if frames_to_search is None else int(frames_to_search))
    if k < 1:
        raise CycleULMError(f"frames_to_search must be >= 1, got {frames_to_search!r}.")
    fidx = np.sort(rng.choice(t, size=k, replace=False)) if k < t else np.arange(t)

    cands = []  # (height, frame, y, x)
    brightest = []
    for f in fidx:
        img = ndimage.gaussian_filter(frames[f].astype(np.float64), 1.0)
        med = float(np.median(img))
        noise = float(robust_sigma(img, center=med))
        ys, xs = np.nonzero(_local_maxima(img, med + 3 * noise))
        hts = img[ys, xs] - med
        thr = max(6 * noise, 0.2 * float(img.max() - med))
        for j in np.argsort(-hts)[: min(len(hts), 5)]:
            if hts[j] >= thr:
                brightest.append((int(f), ys[j], xs[j]))
        cands.append((int(f), ys, xs, hts, thr))
    if not brightest:
        return np.zeros((0, 3))
    sigma = _rough_sigma(frames, np.array(brightest[:40], dtype=np.float64), max_points=40)
    if not (np.isfinite(radius_sigmas) and radius_sigmas > 0):
        raise CycleULMError(f"radius_sigmas must be a positive number, got {radius_sigmas!r}.")
    radius = patch_radius_px(sigma, radius_sigmas)
    excl = max(2.0, 2.0 * sigma)
    sep = float(min_separation) if min_separation is not None else 2.0 * radius * separation_factor
    edge = radius + 2

    picked = []  # (height, frame, y, x)
    for f, ys, xs, hts, thr in cands:
        order = np.argsort(-hts)
        ys, xs, hts = ys[order], xs[order], hts[order]
        alive = np.ones(len(hts), bool)
        for a in range(len(hts)):
            if not alive[a]:
                continue
            d = np.hypot(ys - ys[a], xs - xs[a])
            # Maxima in the central lobe of a brighter one are the same bubble.
            alive &= ~((d <= excl) & (np.arange(len(hts)) > a))
        ys, xs, hts = ys[alive], xs[alive], hts[alive]
        for a in range(len(hts)):
            if hts[a] < thr:
                continue
            y, x = ys[a], xs[a]
            if y < edge or x < edge or y >= h - edge or x >= w - edge:
                continue
            d = np.hypot(ys - y, xs - x)
            near = (d > 0) & (d < sep) & (hts > neighbour_fraction * hts[a])
            if near.any():
                continue
            picked.append((float(hts[a]), f, float(y), float(x)))
    if not picked:
        return np.zeros((0, 3))
    picked.sort(key=lambda p: -p[0])
    n_frames_with = len({p[1] for p in picked})
    cap = max(1, int(np.ceil(n / n_frames_with)))
    per_frame: dict[int, int] = {}
    first, rest = [], []
    for p in picked:
        if per_frame.get(p[1], 0) < cap:
            per_frame[p[1]] = per_frame.get(p[1], 0) + 1
            first.append(p)
        else:
            rest.append(p)
    chosen = (first + rest)[: int(n)]
    chosen.sort(key=lambda p: -p[0])
    return np.array([(p[1], p[2], p[3]) for p in chosen], dtype=np.float64)


#: Fractions of the default isolation distance tried in turn by :func:`estimate_psf_auto`.
AUTO_SEPARATION_FACTORS = (1.0, 0.75, 0.5)

#: Patch half-sizes, in rough PSF sigmas, tried in turn by :func:`estimate_psf_auto`
#: (4 is :func:`estimate_psf`'s default).  A wide PSF on a small or crowded image
#: leaves no bubble alone in a 4-sigma patch (a 13 px FWHM on 160 x 160 frames
#: with 10 bubbles per frame: every candidate has a neighbour 20-25 px away);
#: 3 and 2.5 sigma still hold the central lobe and its shoulders, and on data
#: where 4 sigma works they give the same FWHM within 0.1 px (docs/science.md).
AUTO_PATCH_RADIUS_SIGMAS = (4.0, 3.0, 2.5)


def estimate_psf_auto(frames, n: int = 20, **kw) -> PSFEstimate:
    """Pick isolated bubbles automatically and estimate the PSF from them.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` CEUS stack.
    n : int
        Number of bubbles to pick (see :func:`pick_isolated_bubbles`).
    **kw
        ``min_separation``, ``frames_to_search``, ``seed`` go to
        :func:`pick_isolated_bubbles`; the rest to :func:`estimate_psf`.
        Without ``min_separation`` the isolation distance is relaxed in
        turn (:data:`AUTO_SEPARATION_FACTORS`); without ``patch_radius``,
        when no estimate works with 4-sigma patches, smaller patches are
        tried (:data:`AUTO_PATCH_RADIUS_SIGMAS`).

    Returns
    -------
    PSFEstimate
        ``n_used`` says how many bubbles were averaged.

    Raises
    ------
    CycleULMError
        If fewer than 3 isolated bubbles can be found.
    """
    pick_keys = ("min_separation", "frames_to_search", "seed", "neighbour_fraction")
    pick_kw = {k: kw.pop(k) for k in pick_keys if k in kw}
    frames = as_frames(frames)
    # On small or crowded images the default isolation (8 sigma) leaves too few
    # bubbles: relax it step by step, keeping the first estimate with enough
    # bubbles; if none works with the default patch, cut smaller patches.
    factors = (1.0,) if "min_separation" in pick_kw else AUTO_SEPARATION_FACTORS
    given_radius = kw.pop("patch_radius", None)
    radii = AUTO_PATCH_RADIUS_SIGMAS[:1] if given_radius is not None else AUTO_PATCH_RADIUS_SIGMAS
    best, found, last_error = None, 0, None
    for radius_sigmas in radii:
        for factor in factors:
            pts = pick_isolated_bubbles(frames, n, separation_factor=factor,
                                        radius_sigmas=radius_sigmas, **pick_kw)
            found = max(found, len(pts))
            if len(pts) < MIN_BUBBLES:
                continue
            radius = (given_radius if given_radius is not None
                      else patch_radius_px(_rough_sigma(frames, pts), radius_sigmas))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    est = estimate_psf(frames, pts, patch_radius=radius, **kw)
            except CycleULMError as exc:
                last_error = exc
                continue
            if best is None or est.n_used > best.n_used:
                best = est
            if best.n_used >= RELIABLE_BUBBLES:
                break
        if best is not None:
            break  # the largest patch that works; smaller ones only when it does not
    if best is None:
        detail = f" ({last_error})" if last_error else ""
        raise CycleULMError(
            f"found only {found} isolated bubble(s) automatically; at least {MIN_BUBBLES} are "
            f"needed{detail}. Select bubbles by hand, search more frames, or lower min_separation."
        )
    if best.n_used < RELIABLE_BUBBLES:
        warnings.warn(
            f"PSF estimated from only {best.n_used} automatically picked bubbles; the estimate "
            "is uncertain (10 or more are recommended).",
            UserWarning,
            stacklevel=2,
        )
    return best


# ---------------------------------------------------------------------------
# Helpers for picking bubbles by hand (the napari PSF widget uses them)
# ---------------------------------------------------------------------------


def _stack_for_reading(frames, name: str = "frames"):
    """A ``(T, H, W)`` stack that is only read frame by frame (no copy, no full scan).

    Arrays with ``shape``/``dtype``/indexing (numpy, dask, zarr) are kept as
    they are so a click on a long acquisition does not convert the whole stack.
    """
    if not (hasattr(frames, "shape") and hasattr(frames, "dtype") and hasattr(frames, "__getitem__")):
        frames = np.asarray(frames)
    try:
        dtype = np.dtype(frames.dtype)
    except TypeError:
        raise CycleULMError(f"{name} must be a numeric array, got dtype {frames.dtype}.") from None
    if np.issubdtype(dtype, np.complexfloating):
        raise CycleULMError(
            f"{name} is complex (IQ data); take its magnitude with numpy.abs first."
        )
    if dtype == object or not (np.issubdtype(dtype, np.number) or dtype == bool):
        raise CycleULMError(f"{name} must be numeric, got dtype {dtype}.")
    if len(frames.shape) == 2:
        frames = frames[None]
    if len(frames.shape) != 3:
        raise CycleULMError(
            f"{name} must be a (frames, height, width) stack or a (height, width) image, "
            f"got shape {tuple(frames.shape)}."
        )
    if 0 in tuple(frames.shape):
        raise CycleULMError(f"{name} is empty (shape {tuple(frames.shape)}).")
    return frames


def _points_or_empty(points, n_frames: int) -> np.ndarray:
    """``(N, 3)`` float points; an empty input gives ``(0, 3)`` instead of an error."""
    if points is not None and not isinstance(points, PointTable):
        try:
            arr = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError):
            raise CycleULMError("points must be an (N, 3) array of numbers (frame, y, x).") from None
        if arr.size == 0:
            return np.zeros((0, 3))
    elif isinstance(points, PointTable) and len(points) == 0:
        return np.zeros((0, 3))
    return _as_points(points, n_frames)


def snap_to_maximum(frames, points, radius_px: float = 3) -> np.ndarray:
    """Move each point onto the brightest pixel within ``radius_px`` of it, in its frame.

    Meant for clicks on bubbles: a click a couple of pixels off the bubble
    lands on its peak.  The search disk is cut at the image border, so the
    result is always inside the image.  Ties go to the pixel nearest the point.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` CEUS stack or one ``(H, W)`` frame.  Only the frames
        holding points are read (numpy, dask or zarr arrays are not copied).
    points : array_like or PointTable
        ``(N, 3)`` ``(frame, y, x)`` pixel positions (``(N, 2)`` ``(y, x)``
        for a single frame).  The frame is rounded to the nearest index.
    radius_px : float
        Search radius in pixels (a disk); 0 only rounds to the nearest pixel.

    Returns
    -------
    numpy.ndarray
        ``(N, 3)`` float64 ``(frame, y, x)`` with integer-valued pixel
        positions; ``(0, 3)`` for no points.  NaN pixels are never chosen.

    Raises
    ------
    CycleULMError
        If ``radius_px`` is negative or not a number, the stack is not a
        numeric ``(T, H, W)`` array, the points are malformed, or a point is
        in a frame that does not exist or outside the image.
    """
    if (
        isinstance(radius_px, bool)
        or not isinstance(radius_px, (int, float, np.number))
        or not np.isfinite(radius_px)
        or radius_px < 0
    ):
        raise CycleULMError(f"radius_px must be a number of pixels >= 0, got {radius_px!r}.")
    stack = _stack_for_reading(frames)
    t, h, w = (int(v) for v in stack.shape)
    pts = _points_or_empty(points, t)
    out = pts.copy()
    if len(pts) == 0:
        return out
    frames_idx = np.rint(pts[:, 0]).astype(np.int64)
    bad = np.flatnonzero((frames_idx < 0) | (frames_idx >= t))
    if len(bad):
        i = int(bad[0])
        raise CycleULMError(
            f"point {i} is in frame {frames_idx[i]}, which does not exist (the stack has {t} "
            f"frames, 0-{t - 1}); delete it."
        )
    y, x = pts[:, 1], pts[:, 2]
    bad = np.flatnonzero(~((y >= -0.5) & (y < h - 0.5) & (x >= -0.5) & (x < w - 0.5)))
    if len(bad):
        i = int(bad[0])
        raise CycleULMError(
            f"point {i} at (y={y[i]:.1f}, x={x[i]:.1f}) is outside the {h}x{w} image; "
            f"delete it and click on a bubble inside the image."
        )
    r = int(np.floor(radius_px))
    for f in np.unique(frames_idx):
        rows = np.flatnonzero(frames_idx == f)
        img = np.asarray(stack[int(f)], dtype=np.float64)
        for i in rows:
            iy, ix = int(np.rint(y[i])), int(np.rint(x[i]))
            y0, y1 = max(iy - r, 0), min(iy + r + 1, h)
            x0, x1 = max(ix - r, 0), min(ix + r + 1, w)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            inside = np.hypot(yy - iy, xx - ix) <= radius_px
            vals = np.where(inside & np.isfinite(img[y0:y1, x0:x1]), img[y0:y1, x0:x1], -np.inf)
            best = vals.max()
            if not np.isfinite(best):  # nothing readable around the point: only round it
                out[i] = (f, iy, ix)
                continue
            cand = np.flatnonzero(vals.ravel() == best)
            d = np.hypot(yy.ravel()[cand] - y[i], xx.ravel()[cand] - x[i])
            k = cand[np.argmin(d)]
            out[i] = (f, yy.ravel()[k], xx.ravel()[k])
    return out


def bubble_patches(frames, points, radius_px: int = 8) -> np.ndarray:
    """Square patches of the stack around each point (for a gallery of the picks).

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` CEUS stack or one ``(H, W)`` frame; only the frames
        holding points are read.
    points : array_like or PointTable
        ``(N, 3)`` ``(frame, y, x)`` pixel positions, rounded to the nearest pixel.
    radius_px : int
        Patch half-size; patches are ``2 radius_px + 1`` pixels square.

    Returns
    -------
    numpy.ndarray
        ``(N, 2r+1, 2r+1)`` float32, centred on the points; NaN where the patch
        leaves the image, and all NaN for a point in a frame that does not
        exist.  A point is never an error here: the gallery shows it, and
        :func:`estimate_psf` says why it cannot be used.

    Raises
    ------
    CycleULMError
        If ``radius_px`` is not an integer >= 1, the stack is not a numeric
        ``(T, H, W)`` array or the points are malformed.
    """
    if isinstance(radius_px, bool) or int(radius_px) != radius_px or radius_px < 1:
        raise CycleULMError(f"radius_px must be an integer >= 1, got {radius_px!r}.")
    r = int(radius_px)
    stack = _stack_for_reading(frames)
    t, h, w = (int(v) for v in stack.shape)
    pts = _points_or_empty(points, t)
    out = np.full((len(pts), 2 * r + 1, 2 * r + 1), np.nan, np.float32)
    for i, (fr, y, x) in enumerate(pts):
        f, iy, ix = int(np.rint(fr)), int(np.rint(y)), int(np.rint(x))
        if not 0 <= f < t:
            continue
        y0, y1 = max(iy - r, 0), min(iy + r + 1, h)
        x0, x1 = max(ix - r, 0), min(ix + r + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        out[i, y0 - (iy - r) : y1 - (iy - r), x0 - (ix - r) : x1 - (ix - r)] = np.asarray(
            stack[f, y0:y1, x0:x1], dtype=np.float32
        )
    return out


def screen_bubbles(
    frames,
    points,
    *,
    patch_radius: int | None = None,
    exclusion_radius: float | None = None,
    fit_rotation: bool = True,
    second_peak_fraction: float = 0.5,
    average: str = "power",
) -> list[Rejection | None]:
    """Why :func:`estimate_psf` would reject each point (None: the point is usable).

    Runs exactly the per-bubble checks of :func:`estimate_psf` with the same
    parameters, without requiring enough usable bubbles, so a user whose
    picks all fail can see why each one does.

    Parameters
    ----------
    frames, points, patch_radius, exclusion_radius, fit_rotation, second_peak_fraction, average
        As for :func:`estimate_psf`.

    Returns
    -------
    list of Rejection or None
        One entry per point: the rejection reason (with its ``kind``) or None.

    Raises
    ------
    CycleULMError
        If no points are given or the stack or parameters are invalid.
    """
    frames = as_frames(frames)
    pts = _as_points(points, frames.shape[0])
    if patch_radius is not None and (int(patch_radius) != patch_radius or patch_radius < 2):
        raise CycleULMError(f"patch_radius must be an integer >= 2, got {patch_radius!r}.")
    if average not in ("power", "amplitude"):
        raise CycleULMError(f"average must be 'power' or 'amplitude', got {average!r}.")
    r, excl, search = _screening_radii(frames, pts, patch_radius, exclusion_radius)
    reasons: list[Rejection | None] = [None] * len(pts)
    for i, reason, _ in _screen_points(
        frames, pts, r, excl, search, fit_rotation, second_peak_fraction, average
    ):
        reasons[i] = reason
    return reasons
