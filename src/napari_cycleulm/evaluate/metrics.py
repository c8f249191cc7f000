"""Quality metrics: CNR, FWHM, localisation matching, RMSE / SSIM of maps.

Units: positions and distances are in pixels unless a name ends in ``_um``;
``cnr_db`` is in decibels; ``fwhm`` is in the units of ``spacing``.
Positions follow the package convention ``(frame, y, x)`` with ``(0, 0)`` the
centre of the top-left pixel.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .._atomic import write_text_atomic
from .._json import jsonable
from ..errors import CycleULMError
from ..io.tables import PointTable

__all__ = [
    "MatchResult",
    "cnr_db",
    "evaluate_to_json",
    "fwhm",
    "line_profile",
    "map_correlation",
    "match_localisations",
    "path_profile",
    "precision_recall_sweep",
    "px_to_um",
    "rmse",
    "ssim",
]


# --------------------------------------------------------------------------
# Contrast
# --------------------------------------------------------------------------
def _check_mask(mask, shape, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise CycleULMError(
            f"{name} has shape {m.shape} but the image has shape {shape}; "
            "masks must have the image's shape."
        )
    m = m.astype(bool)
    if not m.any():
        raise CycleULMError(f"{name} is empty (no True pixel); draw a region first.")
    return m


def cnr_db(image, signal_mask, background_mask, definition: str = "contrast") -> float:
    """Contrast-to-noise ratio of a signal region against a background region.

    Parameters
    ----------
    image : array_like, shape (H, W) (or any shape matching the masks)
        Intensity image (any linear intensity unit, e.g. a density map).
    signal_mask, background_mask : array_like of bool, same shape as ``image``
        Pixels of the signal (vessel) region and of the background (noise)
        region.  They should not overlap.
    definition : {"contrast", "ratio"}
        ``"contrast"`` (default), the standard contrast-to-noise ratio
        ``20 log10(|mu_s - mu_b| / sigma_b)``, with ``mu`` the region means and
        ``sigma_b`` the standard deviation of the background.
        ``"ratio"``: ``20 log10(mu_s / mu_b)``, "the ratio of the mean value of
        the signal region to the mean value of the noise region" as worded in
        the CycleULM paper (section 3.5); both means must be positive.

    Returns
    -------
    float
        CNR in decibels (dB).  ``inf`` when the contrast definition meets a
        constant background (``sigma_b == 0``) with a non-zero contrast, and
        ``-inf`` when the contrast is zero.

    Raises
    ------
    CycleULMError
        On a mask whose shape differs from the image, an empty mask, an unknown
        ``definition``, non-finite region values, or non-positive means with
        ``definition="ratio"``.
    """
    img = np.asarray(image, dtype=np.float64)
    s = _check_mask(signal_mask, img.shape, "signal_mask")
    b = _check_mask(background_mask, img.shape, "background_mask")
    vs, vb = img[s], img[b]
    if not (np.isfinite(vs).all() and np.isfinite(vb).all()):
        raise CycleULMError("the image holds NaN or infinite values inside the masks.")
    mu_s, mu_b = float(vs.mean()), float(vb.mean())
    if definition == "contrast":
        sigma_b = float(vb.std())
        diff = abs(mu_s - mu_b)
        if diff == 0:
            return -math.inf
        if sigma_b == 0:
            return math.inf
        return 20.0 * math.log10(diff / sigma_b)
    if definition == "ratio":
        if mu_s <= 0 or mu_b <= 0:
            raise CycleULMError(
                f"definition='ratio' needs positive region means, got signal mean {mu_s:g} and "
                f"background mean {mu_b:g}; use definition='contrast' for signed data."
            )
        return 20.0 * math.log10(mu_s / mu_b)
    raise CycleULMError(f"unknown CNR definition {definition!r}; use 'contrast' or 'ratio'.")


# --------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------
def fwhm(profile, spacing: float = 1.0, baseline: float | None = None) -> float:
    """Full width at half maximum of a 1-D line profile around its highest peak.

    The half-maximum level is ``baseline + (peak - baseline) / 2`` where
    ``baseline`` defaults to the profile minimum.  The two crossings nearest
    the peak are found by linear interpolation between samples.

    Parameters
    ----------
    profile : array_like, shape (N,)
        Intensity samples along a line, equally spaced.
    spacing : float
        Distance between consecutive samples (pixels, or micrometres, ...).
    baseline : float, optional
        Background level to subtract; the profile minimum by default.

    Returns
    -------
    float
        FWHM in the units of ``spacing``; NaN when the profile does not fall
        below half maximum on both sides of the peak (peak at or too near an
        end, or a flat profile).

    Raises
    ------
    CycleULMError
        If the profile is not 1-D, has fewer than 3 samples, holds NaN, or
        ``spacing`` is not positive.
    """
    p = np.asarray(profile, dtype=np.float64)
    if p.ndim != 1 or p.size < 3:
        raise CycleULMError(f"profile must be 1-D with at least 3 samples, got shape {p.shape}.")
    if not np.isfinite(p).all():
        raise CycleULMError("profile holds NaN or infinite values.")
    if not spacing > 0:
        raise CycleULMError(f"spacing must be positive, got {spacing}.")
    base = float(p.min()) if baseline is None else float(baseline)
    i = int(np.argmax(p))
    peak = p[i]
    if peak <= base:
        return math.nan
    half = base + 0.5 * (peak - base)
    below_left = np.nonzero(p[:i] < half)[0]
    below_right = np.nonzero(p[i + 1 :] < half)[0]
    if below_left.size == 0 or below_right.size == 0:
        return math.nan
    a = int(below_left[-1])  # p[a] < half <= p[a + 1]
    left = a + (half - p[a]) / (p[a + 1] - p[a])
    b = i + 1 + int(below_right[0])  # p[b - 1] >= half > p[b]
    right = (b - 1) + (p[b - 1] - half) / (p[b - 1] - p[b])
    return float((right - left) * spacing)


#: Pixels kept around a scan line when :func:`path_profile` crops the image for
#: ``skimage.measure.profile_line``: the spline prefilter (orders 2-5) couples
#: pixels with weights below 0.43**d at distance d, < 1e-17 at this margin.
_PROFILE_MARGIN = 48


def _profile_line(img: np.ndarray, src: np.ndarray, dst: np.ndarray, count: int, order: int) -> np.ndarray:
    """``skimage.measure.profile_line`` from ``src`` to ``dst`` (``count`` points), on a crop."""
    from skimage.measure import profile_line

    h, w = img.shape
    ends = np.clip(np.vstack([src, dst]), 0, [h - 1, w - 1])  # points outside: their nearest pixel
    margin = 1 if order < 2 else _PROFILE_MARGIN
    lo = np.maximum(np.floor(ends.min(axis=0)).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(ends.max(axis=0)).astype(int) + margin + 1, [h, w])
    crop = img[lo[0] : hi[0], lo[1] : hi[1]]
    values = profile_line(crop, src - lo, dst - lo, linewidth=1, order=order, mode="nearest")
    if values.shape != (count,):  # pragma: no cover - guards the spacing arithmetic of path_profile
        raise RuntimeError(f"profile_line gave {values.shape[0]} samples where {count} were planned.")
    return values


def path_profile(image, vertices, n: int | None = None, *, order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Intensity profile along a line or polyline at ``n`` equally spaced arc lengths.

    The one line-profile sampler of the package (:func:`line_profile` and
    :func:`evaluate.profile_along` call it).  Values come from
    :func:`skimage.measure.profile_line` with ``linewidth=1`` (one line, no
    averaging across it) and ``mode="nearest"`` (a point outside the image
    takes the nearest edge value).  ``profile_line`` samples a scan line about
    once per pixel; finer spacings are read as several interleaved scan lines
    (one sample in ``stride``), so any ``n`` is honoured.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Image to sample.
    vertices : array_like, shape (N, 2)
        ``(y, x)`` vertices in pixels (``(0, 0)`` is the centre of the
        top-left pixel), ``N >= 2``; repeated consecutive vertices are
        ignored.  Samples are equally spaced along the whole path, the first
        on the first vertex and the last on the last one.
    n : int, optional
        Number of samples (>= 2); by default one per pixel of length plus one.
    order : int
        Spline interpolation order, 0-5.  3 (cubic, default) measures the
        FWHM of a Gaussian of sigma >= 1 px within about 3 % when sampled 4
        times per pixel, wherever its centre falls between pixels; 1
        (bilinear, ``profile_line``'s own default) overestimates it by up to
        10 % at sigma 1 px, because the linear interpolant is wider than the
        Gaussian between pixel centres.

    Returns
    -------
    distances : numpy.ndarray, shape (n,)
        Arc length of each sample from the first vertex, pixels.
    values : numpy.ndarray, shape (n,)
        Interpolated intensities (float64).

    Raises
    ------
    CycleULMError
        If the image is not 2-D, the vertices are not at least two finite
        ``(y, x)`` pairs, ``n < 2`` or the order is not 0-5.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.size == 0:
        raise CycleULMError(f"image must be 2-D (height, width), got shape {img.shape}.")
    if isinstance(order, bool) or order not in range(6):
        raise CycleULMError(f"order must be an integer from 0 to 5, got {order!r}.")
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 2 or len(v) < 2 or not np.isfinite(v).all():
        raise CycleULMError(f"vertices must be at least 2 finite (y, x) pairs, got {vertices!r}.")
    seg = np.hypot(*np.diff(v, axis=0).T)
    v = v[np.r_[True, seg > 0]]
    seg = seg[seg > 0]
    cum = np.r_[0.0, np.cumsum(seg)]
    length = float(cum[-1])
    n = int(math.ceil(length)) + 1 if n is None else int(n)
    if n < 2:
        raise CycleULMError(f"n must be at least 2, got {n}.")
    dist = np.linspace(0.0, length, n)
    if length == 0.0:
        return dist, np.full(n, _profile_line(img, v[0], v[0], 1, order)[0])
    step = length / (n - 1)
    # profile_line puts ceil(L) + 1 samples on a scan line of length L.  A scan
    # line through every stride-th sample (spacing `gap` <= 1 px, shrunk by 1e-12
    # so rounding never adds a sample) of c samples gets exactly c of them while
    # (c - 1) (1 - gap) < 1: longer runs are cut into chunks of `chunk` samples
    # (whole runs when the spacing divides a pixel, as with the default n).
    stride = max(1, int(math.floor(1.0 / step)))
    gap = stride * step * (1.0 - 1e-12)
    chunk = 1 if gap > 1.0 else min(n, 1 + int(math.floor((1.0 - 1e-6) / (1.0 - gap))))
    which = np.clip(np.searchsorted(cum, dist, side="right") - 1, 0, len(seg) - 1)
    unit = np.diff(v, axis=0) / seg[:, None]
    values = np.empty(n)
    for k in range(len(seg)):
        idx = np.flatnonzero(which == k)
        for phase in range(stride):
            run = idx[phase::stride]
            for j in range(0, len(run), chunk):
                part = run[j : j + chunk]
                src = v[k] + (dist[part[0]] - cum[k]) * unit[k]
                dst = src + (len(part) - 1) * gap * unit[k]
                values[part] = _profile_line(img, src, dst, len(part), order)
    return dist, values


def line_profile(image, start, end, n: int | None = None, *, order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Sample an image along a straight line (:func:`path_profile` of two vertices).

    Parameters
    ----------
    image : array_like, shape (H, W)
        Image to sample.
    start, end : (y, x)
        End points in pixels (``(0, 0)`` is the centre of the top-left pixel);
        both are included.  Points outside the image take the nearest edge
        value.
    n : int, optional
        Number of samples; by default one per pixel of length plus one.
    order : int
        Spline interpolation order (default 3, cubic: see :func:`path_profile`
        for why not bilinear).

    Returns
    -------
    distances : numpy.ndarray, shape (n,)
        Distance of each sample from ``start``, in pixels.
    values : numpy.ndarray, shape (n,)
        Interpolated intensities (float64).

    Raises
    ------
    CycleULMError
        If the image is not 2-D, a point is not a pair of finite numbers, or
        ``n < 2``.
    """
    p0 = np.asarray(start, dtype=np.float64).reshape(-1)
    p1 = np.asarray(end, dtype=np.float64).reshape(-1)
    if p0.size != 2 or p1.size != 2 or not (np.isfinite(p0).all() and np.isfinite(p1).all()):
        raise CycleULMError(f"start and end must be finite (y, x) pairs, got {start} and {end}.")
    return path_profile(image, [p0, p1], n, order=order)


# --------------------------------------------------------------------------
# Localisation matching
# --------------------------------------------------------------------------
def px_to_um(value, pixel_size_um):
    """Convert a length in pixels to micrometres.

    Parameters
    ----------
    value : float or array_like
        Length(s) in pixels.
    pixel_size_um : float
        Pixel size in micrometres per pixel (isotropic).

    Returns
    -------
    float or numpy.ndarray
        Length(s) in micrometres.
    """
    if not np.isscalar(pixel_size_um) or not pixel_size_um > 0:
        raise CycleULMError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}.")
    out = np.asarray(value, dtype=np.float64) * float(pixel_size_um)
    return float(out) if out.ndim == 0 else out


def _nan_to_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass
class MatchResult:
    """Outcome of matching detections to ground truth.

    Attributes
    ----------
    tp, fp, fn : int
        True positives (matched pairs), false positives (unmatched detections)
        and false negatives (unmatched ground-truth points).
    recall, precision, f1, jaccard : float
        ``tp/(tp+fn)``, ``tp/(tp+fp)``, their harmonic mean and
        ``tp/(tp+fp+fn)``; 0 when the denominator is 0.
    mean_error_px, rmse_px : float
        Mean and root-mean-square Euclidean ``(y, x)`` distance of matched
        pairs, in pixels; NaN without matches.
    gt_index, det_index : numpy.ndarray of int, shape (tp,)
        Row indices of the matched pairs in the ground-truth and detection
        tables (as given, before any sorting).
    errors : numpy.ndarray, shape (tp,)
        Distance of each matched pair, in pixels.
    offsets : numpy.ndarray, shape (tp, 2)
        ``(dy, dx)`` = detection minus ground truth for each pair, in pixels.
    tolerance : float
        Matching radius used, in pixels.
    """

    tp: int
    fp: int
    fn: int
    recall: float
    precision: float
    f1: float
    jaccard: float
    mean_error_px: float
    rmse_px: float
    gt_index: np.ndarray = field(repr=False)
    det_index: np.ndarray = field(repr=False)
    errors: np.ndarray = field(repr=False)
    offsets: np.ndarray = field(repr=False)
    tolerance: float = 1.0

    def errors_um(self, pixel_size_um) -> np.ndarray:
        """Matched-pair distances in micrometres.

        Parameters
        ----------
        pixel_size_um : float or (float, float)
            Pixel size in micrometres, isotropic or ``(y, x)``.
        """
        ps = np.asarray(pixel_size_um, dtype=np.float64).reshape(-1)
        if ps.size == 1:
            ps = np.repeat(ps, 2)
        if ps.size != 2 or not (ps > 0).all():
            raise CycleULMError(
                f"pixel_size_um must be a positive number or a (y, x) pair, got {pixel_size_um!r}."
            )
        return np.hypot(self.offsets[:, 0] * ps[0], self.offsets[:, 1] * ps[1])

    def to_dict(self, pixel_size_um=None, include_pairs: bool = False) -> dict:
        """A JSON-ready summary (NaN becomes ``None``).

        Parameters
        ----------
        pixel_size_um : float or (float, float), optional
            When given, ``mean_error_um`` and ``rmse_um`` are added.
        include_pairs : bool
            Also list ``gt_index``, ``det_index`` and ``errors_px``.
        """
        d = {
            "tp": int(self.tp),
            "fp": int(self.fp),
            "fn": int(self.fn),
            "recall": float(self.recall),
            "precision": float(self.precision),
            "f1": float(self.f1),
            "jaccard": float(self.jaccard),
            "mean_error_px": float(self.mean_error_px),
            "rmse_px": float(self.rmse_px),
            "tolerance_px": float(self.tolerance),
        }
        if pixel_size_um is not None:
            e = self.errors_um(pixel_size_um)
            d["pixel_size_um"] = np.asarray(pixel_size_um, dtype=float).tolist()
            d["mean_error_um"] = float(e.mean()) if e.size else math.nan
            d["rmse_um"] = float(np.sqrt(np.mean(e**2))) if e.size else math.nan
        if include_pairs:
            d["gt_index"] = self.gt_index.tolist()
            d["det_index"] = self.det_index.tolist()
            d["errors_px"] = self.errors.tolist()
        return {k: _nan_to_none(v) for k, v in d.items()}


def _as_positions(points, name: str) -> np.ndarray:
    if isinstance(points, PointTable):
        pos = points.positions
    else:
        pos = np.asarray(points, dtype=np.float64)
        if pos.size == 0:
            pos = pos.reshape(0, 3)
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise CycleULMError(
                f"{name} must be a Localisations table or an (N, 3) array of (frame, y, x), "
                f"got shape {pos.shape}."
            )
    if not np.isfinite(pos).all():
        raise CycleULMError(f"{name} holds NaN or infinite positions.")
    return pos


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def match_localisations(
    ground_truth, detections, tolerance: float = 1.0, per_frame: bool = True
) -> MatchResult:
    """One-to-one matching of detections to ground truth (Hungarian assignment).

    Pairs are only allowed between points of the same frame (when
    ``per_frame``) whose Euclidean ``(y, x)`` distance is at most
    ``tolerance``.  Among the allowed pairs the assignment first maximises the
    number of matches, then minimises their summed distance.  Candidate pairs
    come from a k-d tree and the problem is split into independent connected
    groups, so large tables (1e5+ points) are matched in about a second.

    Parameters
    ----------
    ground_truth, detections : Localisations or array_like, shape (N, 3)
        ``(frame, y, x)`` positions in pixels.
    tolerance : float
        Maximum matching distance in pixels (inclusive).
    per_frame : bool
        Match only within the same frame (default).  ``False`` ignores the
        frame column (e.g. to compare accumulated positions).

    Returns
    -------
    MatchResult
        Counts, rates, errors (pixels) and matched indices.

    Raises
    ------
    CycleULMError
        On malformed inputs or a negative / non-finite tolerance.
    """
    gt = _as_positions(ground_truth, "ground_truth")
    det = _as_positions(detections, "detections")
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise CycleULMError(f"tolerance must be a finite number >= 0 pixels, got {tolerance}.")
    tol = float(tolerance)
    n_gt, n_det = len(gt), len(det)
    gi_all = np.empty(0, np.int64)
    di_all = np.empty(0, np.int64)

    if n_gt and n_det:
        # Separate frames by a gap larger than the tolerance so one 3-D tree
        # only yields same-frame candidates.
        if per_frame:
            gap = 2.0 * tol + 1.0
            a = np.column_stack([gt[:, 0] * gap, gt[:, 1], gt[:, 2]])
            b = np.column_stack([det[:, 0] * gap, det[:, 1], det[:, 2]])
        else:
            a, b = gt[:, 1:], det[:, 1:]
        # A little slack so a pair exactly at the tolerance survives rounding.
        reach = tol + 1e-9 * max(1.0, tol)
        pairs = cKDTree(a).sparse_distance_matrix(cKDTree(b), reach, output_type="ndarray")
        pi = pairs["i"].astype(np.int64)
        pj = pairs["j"].astype(np.int64)
        # Exact (y, x) distance (the 3-D tree distance equals it within a frame).
        pd = np.hypot(gt[pi, 1] - det[pj, 1], gt[pi, 2] - det[pj, 2])
        keep = pd <= reach
        pi, pj, pd = pi[keep], pj[keep], pd[keep]
        if pi.size:
            gi_all, di_all = _assign(pi, pj, pd, n_gt, n_det, tol)

    tp = int(gi_all.size)
    fp, fn = n_det - tp, n_gt - tp
    offsets = det[di_all, 1:] - gt[gi_all, 1:]
    errors = np.hypot(offsets[:, 0], offsets[:, 1])
    recall, precision = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
    f1 = _ratio(2 * precision * recall, precision + recall)
    order = np.argsort(gi_all, kind="stable")
    return MatchResult(
        tp=tp,
        fp=fp,
        fn=fn,
        recall=recall,
        precision=precision,
        f1=f1,
        jaccard=_ratio(tp, tp + fp + fn),
        mean_error_px=float(errors.mean()) if tp else math.nan,
        rmse_px=float(np.sqrt(np.mean(errors**2))) if tp else math.nan,
        gt_index=gi_all[order],
        det_index=di_all[order],
        errors=errors[order],
        offsets=offsets[order],
        tolerance=tol,
    )


#: Above this many cells a group is solved as a sparse matching instead of a dense one.
_DENSE_LIMIT = 30_000_000  # 240 MB of float64 costs; dense LSA is much faster


def _sparse_assign(ri, rj, cd, n, m, tol):
    """Maximum-cardinality, minimum-distance matching on a sparse candidate graph.

    Padding makes a full matching always exist: gt ``i`` may take its own dummy
    detection ``m + i`` and detection ``j`` its own dummy gt ``n + j`` (cost
    ``big`` each); each candidate pair ``(i, j)`` is mirrored between the dummies
    (``n + j``, ``m + i``) so a real match frees both dummies.  The total cost is
    then ``sum(d) + big * (n + m - 2 k)`` for ``k`` real matches.
    """
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    eps = 1e-9  # csgraph ignores zero-weight entries
    big = (tol + 1.0) * (min(n, m) + 1)
    ar_n, ar_m = np.arange(n), np.arange(m)
    rows = np.concatenate([ri, ar_n, n + ar_m, n + rj])
    cols = np.concatenate([rj, m + ar_n, ar_m, m + ri])
    w = np.concatenate([cd + eps, np.full(n, big), np.full(m, big), np.full(ri.size, eps)])
    graph = sparse.csr_matrix((w, (rows, cols)), shape=(n + m, m + n))
    r, c = min_weight_full_bipartite_matching(graph)
    real = (r < n) & (c < m)
    return r[real], c[real]


def _assign(pi, pj, pd, n_gt, n_det, tol):
    """Solve the assignment on candidate pairs, one connected group at a time."""
    # Bipartite graph on gt nodes [0, n_gt) and detection nodes [n_gt, n_gt+n_det).
    n = n_gt + n_det
    graph = sparse.coo_matrix((np.ones(pi.size), (pi, pj + n_gt)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    comp = labels[pi]
    # Sort candidate pairs by component; unique pairs alone in their group are
    # matched directly, the rest solved with linear_sum_assignment.
    order = np.argsort(comp, kind="stable")
    pi, pj, pd, comp = pi[order], pj[order], pd[order], comp[order]
    starts = np.flatnonzero(np.r_[True, comp[1:] != comp[:-1]])
    stops = np.r_[starts[1:], comp.size]
    single = (stops - starts) == 1
    gi = [pi[starts[single]]]
    di = [pj[starts[single]]]
    for s, e in zip(starts[~single], stops[~single]):
        ci, cj, cd = pi[s:e], pj[s:e], pd[s:e]
        ui, ri = np.unique(ci, return_inverse=True)
        uj, rj = np.unique(cj, return_inverse=True)
        if ui.size * uj.size > _DENSE_LIMIT:
            r, c = _sparse_assign(ri, rj, cd, ui.size, uj.size, tol)
            gi.append(ui[r])
            di.append(uj[c])
            continue
        # An impossible pair costs more than any set of allowed pairs, so the
        # optimum maximises the number of allowed matches first.
        big = (tol + 1.0) * (min(ui.size, uj.size) + 1)
        cost = np.full((ui.size, uj.size), big)
        cost[ri, rj] = cd
        r, c = linear_sum_assignment(cost)
        ok = cost[r, c] < big
        gi.append(ui[r[ok]])
        di.append(uj[c[ok]])
    return np.concatenate(gi).astype(np.int64), np.concatenate(di).astype(np.int64)


def precision_recall_sweep(
    ground_truth,
    detections,
    score_column: str = "score",
    thresholds=None,
    tolerance: float = 1.0,
    per_frame: bool = True,
) -> list[dict]:
    """Detection quality as a function of a score threshold.

    Parameters
    ----------
    ground_truth : Localisations or array_like, shape (N, 3)
        ``(frame, y, x)`` in pixels.
    detections : Localisations
        Detections with a ``score_column`` column (higher = more confident).
    score_column : str
        Column holding the detection score.
    thresholds : array_like, optional
        Keep detections with ``score >= threshold``.  By default 21 quantiles
        of the scores (0 %, 5 %, ..., 100 %), duplicates removed.
    tolerance : float
        Matching radius in pixels.
    per_frame : bool
        See :func:`match_localisations`.

    Returns
    -------
    list of dict
        One dict per threshold, in increasing threshold order, with keys
        ``threshold, recall, precision, f1, mean_error_px, n_detections``.

    Raises
    ------
    CycleULMError
        If ``detections`` is not a table with ``score_column``.
    """
    if not isinstance(detections, PointTable):
        raise CycleULMError("detections must be a Localisations table with a score column.")
    if score_column not in detections:
        raise CycleULMError(
            f"detections have no {score_column!r} column; columns are {detections.names}."
        )
    scores = detections[score_column]
    if thresholds is None:
        if len(scores) == 0:
            thresholds = np.array([0.0])
        else:
            thresholds = np.unique(np.quantile(scores, np.linspace(0, 1, 21)))
    thresholds = np.sort(np.asarray(thresholds, dtype=np.float64).reshape(-1))
    gt = _as_positions(ground_truth, "ground_truth")
    det = detections.positions
    out = []
    for thr in thresholds:
        keep = scores >= thr
        res = match_localisations(gt, det[keep], tolerance=tolerance, per_frame=per_frame)
        out.append(
            {
                "threshold": float(thr),
                "recall": res.recall,
                "precision": res.precision,
                "f1": res.f1,
                "mean_error_px": res.mean_error_px,
                "n_detections": int(keep.sum()),
            }
        )
    return out


# --------------------------------------------------------------------------
# Map comparisons
# --------------------------------------------------------------------------
def _pair(a, b, normalise):
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise CycleULMError(f"images must have the same shape, got {x.shape} and {y.shape}.")
    if x.size == 0:
        raise CycleULMError("images are empty.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise CycleULMError("images hold NaN or infinite values.")
    if normalise == "max":
        x, y = _norm_max(x), _norm_max(y)
    elif normalise is not None:
        raise CycleULMError(f"unknown normalise {normalise!r}; use 'max' or None.")
    return x, y


def _norm_max(x: np.ndarray) -> np.ndarray:
    m = float(x.max())
    return x / m if m > 0 else x


def rmse(a, b, normalise: str | None = None) -> float:
    """Root-mean-square difference between two images of equal shape.

    Parameters
    ----------
    a, b : array_like
        Images (same shape, any intensity unit).
    normalise : {None, "max"}
        ``"max"`` divides each image by its own maximum first (images whose
        maximum is not positive are left as they are), so maps with different
        scales (e.g. a super-resolution map and a ground-truth map) compare.

    Returns
    -------
    float
        RMSE in the images' intensity unit (unitless after ``"max"``).
    """
    x, y = _pair(a, b, normalise)
    return float(np.sqrt(np.mean((x - y) ** 2)))


def map_correlation(a, b, sigma_px: float = 0.0) -> float:
    """Pearson correlation between two maps, e.g. an SR density map and the ground-truth map.

    Unlike :func:`rmse` and :func:`ssim` after ``"max"`` normalisation, it
    does not reward an empty map: the sparse ground truth of an SR map is
    mostly zero, so an all-zero map has an RMSE as small as a good map's,
    while its correlation is 0.

    Parameters
    ----------
    a, b : array_like
        Maps of equal shape (any intensity unit; the correlation is scale-free).
    sigma_px : float
        Standard deviation, in pixels of the maps, of a Gaussian that smooths
        both first (0: none): a tolerance for positions off by a fraction of
        that, as the matching tolerance of :func:`match_localisations`.

    Returns
    -------
    float
        In ``[-1, 1]``; 0 when either map is constant (e.g. empty).
    """
    x, y = _pair(a, b, None)
    if not (np.isfinite(sigma_px) and sigma_px >= 0):
        raise CycleULMError(f"sigma_px must be >= 0, got {sigma_px!r}.")
    if sigma_px > 0:
        from scipy import ndimage

        x = ndimage.gaussian_filter(x, sigma_px, mode="constant")
        y = ndimage.gaussian_filter(y, sigma_px, mode="constant")
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt(np.sum(x * x) * np.sum(y * y)))
    return float(np.sum(x * y) / denom) if denom > 0 else 0.0


def ssim(a, b, data_range: float | None = None, normalise: str | None = "max") -> float:
    """Structural similarity index between two 2-D images.

    The CycleULM paper compares super-resolution (SR) maps with ground-truth
    maps; their scales differ, so by default each image is divided by its own
    maximum (``normalise="max"``) before computing SSIM with
    :func:`skimage.metrics.structural_similarity`.

    Parameters
    ----------
    a, b : array_like, shape (H, W)
        Images of equal shape.
    data_range : float, optional
        Intensity range for the SSIM constants; by default 1 after ``"max"``
        normalisation, else ``max(a, b) - min(a, b)`` over both images.
    normalise : {"max", None}
        Per-image normalisation to maximum 1 (default) or none.

    Returns
    -------
    float
        SSIM (unitless, 1 for identical images).
    """
    from skimage.metrics import structural_similarity

    x, y = _pair(a, b, normalise)
    if min(x.shape) < 7:
        raise CycleULMError(f"SSIM needs images of at least 7x7 pixels, got {x.shape}.")
    if data_range is None:
        lo = min(float(x.min()), float(y.min()))
        hi = max(float(x.max()), float(y.max()))
        data_range = 1.0 if normalise == "max" and hi <= 1.0 and lo >= 0.0 else hi - lo
        if data_range <= 0:
            data_range = 1.0
    return float(structural_similarity(x, y, data_range=float(data_range)))


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------
def _jsonable(obj):
    return jsonable(obj.to_dict() if isinstance(obj, MatchResult) else obj)


def evaluate_to_json(result, path: str | os.PathLike, **extra) -> dict:
    """Write a metrics report as JSON, atomically.

    Parameters
    ----------
    result : MatchResult, dict or list
        What to write; a :class:`MatchResult` is written via ``to_dict()``.
        NaN and infinities become ``null``.
    path : str or PathLike
        Destination ``.json`` file.
    **extra
        Additional top-level entries (e.g. ``pixel_size_um=...``, a sweep list),
        used when ``result`` is a MatchResult or a dict.

    Returns
    -------
    dict or list
        The JSON-ready object written.
    """
    data = _jsonable(result)
    if extra:
        if not isinstance(data, dict):
            raise CycleULMError("extra entries need a MatchResult or dict result.")
        data.update(_jsonable(extra))
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    return data

