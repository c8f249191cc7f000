"""Evaluation of CEUS and MB-only frames and of localisations (headless).

What the Evaluate widget and ``cycleulm evaluate`` report, as plain functions:

* **CNR on the MIP** (:func:`cnr_on_mip`, :func:`compare_cnr`): the contrast of
  a signal region (a vessel) against a background region, measured on the
  maximum-intensity projection (MIP) over time of the raw CEUS frames and of
  the MB-only frames, as in the CycleULM paper.  Both definitions of
  :func:`metrics.cnr_db` are reported: ``contrast``
  ``20 log10(|mu_s - mu_b| / sigma_b)`` and ``ratio`` ``20 log10(mu_s / mu_b)``
  (the paper's wording).
* **FWHM along a line on the MIP** (:func:`fwhm_on_mip`,
  :func:`compare_fwhm`): the intensity profile along a line (or polyline)
  drawn across a vessel, and its full width at half maximum in pixels and
  micrometres.
* **Localisation accuracy** (:func:`score_localisations`,
  :func:`sweep_localisations`): precision, recall, F1 and mean error against
  ground truth for several detection tables, and precision-recall curves over
  a score threshold.
* Plots on a matplotlib ``Axes`` (:func:`plot_profiles`,
  :func:`plot_precision_recall`) and table text (:func:`rows_to_text`,
  :func:`write_rows_csv`).

Units: positions and lengths in pixels (``(0, 0)`` is the centre of the
top-left pixel; vertices are ``(y, x)``) unless a name ends in ``_um``; CNR in
dB.  Nothing here imports Qt or napari.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._atomic import write_text_atomic
from .._json import jsonable
from ..errors import CycleULMError
from ..io.stacks import LazyStack, _is_lazy_array, magnitude
from .metrics import cnr_db, fwhm, match_localisations, path_profile, precision_recall_sweep
from ..io.tables import PointTable

__all__ = [
    "CNRResult",
    "Profile",
    "SCORE_COLUMNS",
    "cnr_on_mip",
    "compare_cnr",
    "compare_fwhm",
    "fwhm_on_mip",
    "method_from_name",
    "mip",
    "peak_fwhm",
    "plot_precision_recall",
    "plot_profiles",
    "profile_along",
    "format_value",
    "rows_to_text",
    "score_localisations",
    "sweep_localisations",
    "write_rows_csv",
]

#: Columns of the localisation accuracy table, in display order.
SCORE_COLUMNS = (
    "layer", "method", "n_detections", "n_ground_truth", "tp", "fp", "fn",
    "precision", "recall", "f1", "mean_error_px", "mean_error_um",
)


# --------------------------------------------------------------------------
# Maximum-intensity projection
# --------------------------------------------------------------------------
def mip(frames, block_size: int = 128) -> np.ndarray:
    """Maximum-intensity projection over time: the one MIP of the package.

    Used by the Evaluate widget, :func:`cnr_on_mip` / :func:`fwhm_on_mip` and
    the exports (a stack's PNG is its MIP).

    NaN rule: NaN means "no value here" (e.g. a map pixel no track crossed),
    so NaN is ignored: each pixel's MIP is the largest of its non-NaN values,
    and a pixel that is NaN in every frame stays NaN (no warning).  Infinite
    values take part like any other value.

    Parameters
    ----------
    frames : array_like, LazyStack or lazy array (dask, zarr), shape (T, H, W) or (H, W)
        Frames (any intensity unit).  Read block by block, so a lazy stack is
        never loaded whole; complex (IQ) frames are projected as their
        magnitude.  A 2-D image is returned as it is (as float32).
    block_size : int
        Frames read at a time.

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W)`` maximum over the frames.

    Raises
    ------
    CycleULMError
        On data that is not 2-D / 3-D, empty, or not numeric, or a bad
        ``block_size``.
    """
    if int(block_size) != block_size or block_size < 1:
        raise CycleULMError(f"block_size must be a whole number >= 1, got {block_size}.")
    stack = frames if isinstance(frames, LazyStack) or _is_lazy_array(frames) else np.asarray(frames)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise CycleULMError(
            f"a MIP needs (frames, height, width) frames or one (height, width) image, got shape "
            f"{tuple(stack.shape)}."
        )
    if stack.shape[0] == 0 or 0 in stack.shape[1:]:
        raise CycleULMError(f"the stack is empty (shape {tuple(stack.shape)}); a MIP needs at least one frame.")
    dtype = np.dtype(getattr(stack, "dtype", np.float32))
    numeric = np.issubdtype(dtype, np.number) or dtype == bool or {"real", "imag"} <= set(dtype.names or ())
    if not numeric:
        raise CycleULMError(f"a MIP needs numeric frames, got dtype {dtype}.")
    stack = magnitude(stack)
    out = None
    for start in range(0, stack.shape[0], int(block_size)):
        block = stack.block(start, start + int(block_size)) if isinstance(stack, LazyStack) else \
            stack[start : start + int(block_size)]
        block = np.asarray(block, dtype=np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN pixel: stays NaN
            m = np.nanmax(block, axis=0)
        out = m if out is None else np.fmax(out, m)
    return out


def _as_mip(frames, name: str) -> np.ndarray:
    try:
        return mip(frames)
    except CycleULMError as exc:
        raise CycleULMError(f"{name}: {exc}") from None


# --------------------------------------------------------------------------
# CNR
# --------------------------------------------------------------------------
@dataclass
class CNRResult:
    """Contrast-to-noise ratio of one image (usually a MIP).

    Attributes
    ----------
    name : str
        What was measured (e.g. ``"raw"``, ``"MB-only"``).
    cnr_db : float
        ``20 log10(|mu_s - mu_b| / sigma_b)``, dB (``inf`` for a constant background).
    cnr_ratio_db : float
        ``20 log10(mu_s / mu_b)`` (the paper's wording), dB; NaN when a mean is not positive.
    signal_mean, background_mean, background_std : float
        Region statistics, in the image's intensity unit.
    n_signal, n_background : int
        Pixels in each region (the background excludes signal pixels).
    """

    name: str
    cnr_db: float
    cnr_ratio_db: float
    signal_mean: float
    background_mean: float
    background_std: float
    n_signal: int
    n_background: int

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN and infinities become ``None``)."""
        return jsonable(dict(self.__dict__))


def _region_masks(signal_mask, background_mask, shape) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(signal_mask)
    b = np.asarray(background_mask)
    for m, what in ((s, "signal"), (b, "background")):
        if m.shape != tuple(shape):
            raise CycleULMError(
                f"the {what} mask has shape {m.shape} but the image is {tuple(shape)}; draw the "
                "regions on the same image."
            )
    s, b = s.astype(bool), b.astype(bool)
    if not s.any():
        raise CycleULMError("the signal region covers no pixel; draw it over a vessel in the image.")
    # A background drawn around the vessel would otherwise count the vessel as noise.
    b = b & ~s
    if not b.any():
        raise CycleULMError(
            "the background region covers no pixel outside the signal region; draw it beside "
            "the vessel, not on it."
        )
    return s, b


def cnr_on_mip(frames, signal_mask, background_mask, name: str = "") -> CNRResult:
    """CNR of a signal region against a background region on the MIP over time.

    Parameters
    ----------
    frames : array_like or LazyStack, shape (T, H, W) or (H, W)
        CEUS or MB-only frames (a 2-D image is used as it is).
    signal_mask, background_mask : array_like of bool, shape (H, W)
        Regions (e.g. from :func:`roi.rois_to_mask`).  Pixels in both count as
        signal only.
    name : str
        Label stored in the result.

    Returns
    -------
    CNRResult
        Both CNR definitions (dB) and the region statistics.

    Raises
    ------
    CycleULMError
        On bad frames, masks of the wrong shape, or empty regions.
    """
    image = _as_mip(frames, name or "frames").astype(np.float64)
    s, b = _region_masks(signal_mask, background_mask, image.shape)
    contrast = cnr_db(image, s, b, definition="contrast")
    try:
        ratio = cnr_db(image, s, b, definition="ratio")
    except CycleULMError:  # a non-positive mean: the ratio is undefined
        ratio = math.nan
    vs, vb = image[s], image[b]
    return CNRResult(
        name=name,
        cnr_db=float(contrast),
        cnr_ratio_db=float(ratio),
        signal_mean=float(vs.mean()),
        background_mean=float(vb.mean()),
        background_std=float(vb.std()),
        n_signal=int(s.sum()),
        n_background=int(b.sum()),
    )


def compare_cnr(frames: Mapping[str, object], signal_mask, background_mask) -> list[CNRResult]:
    """:func:`cnr_on_mip` for several stacks (e.g. ``{"raw": ..., "MB-only": ...}``).

    The same masks apply to every stack, so the stacks must share ``(H, W)``.
    A mask per stack can be given as a ``{name: mask}`` mapping.
    """
    if not frames:
        raise CycleULMError("no frames given to measure the CNR on.")
    out = []
    for name, stack in frames.items():
        s = signal_mask[name] if isinstance(signal_mask, Mapping) else signal_mask
        b = background_mask[name] if isinstance(background_mask, Mapping) else background_mask
        out.append(cnr_on_mip(stack, s, b, name=name))
    return out


# --------------------------------------------------------------------------
# Profiles and FWHM
# --------------------------------------------------------------------------
@dataclass
class Profile:
    """An intensity profile along a line and its FWHM.

    Attributes
    ----------
    name : str
        What was measured (e.g. ``"raw"``).
    distance_px : numpy.ndarray, shape (N,)
        Arc length of each sample from the first vertex, pixels.
    values : numpy.ndarray, shape (N,)
        Interpolated intensities.
    fwhm_px : float
        FWHM of the highest peak, pixels; NaN when the profile does not fall
        below half maximum on both sides of the peak.
    pixel_size_um : float or None
        Pixel size in micrometres, when known.
    """

    name: str
    distance_px: np.ndarray = field(repr=False)
    values: np.ndarray = field(repr=False)
    fwhm_px: float
    pixel_size_um: float | None = None

    @property
    def fwhm_um(self) -> float | None:
        """FWHM in micrometres (``None`` without a pixel size)."""
        return None if self.pixel_size_um is None else self.fwhm_px * self.pixel_size_um

    def to_dict(self, include_profile: bool = False) -> dict:
        """JSON-ready summary; with ``include_profile`` the samples too."""
        d = {"name": self.name, "fwhm_px": self.fwhm_px, "fwhm_um": self.fwhm_um,
             "pixel_size_um": self.pixel_size_um, "length_px": float(self.distance_px[-1])}
        if include_profile:
            d["distance_px"] = self.distance_px
            d["values"] = self.values
        return jsonable(d)


def _line_vertices(vertices) -> np.ndarray:
    try:
        v = np.asarray(vertices, dtype=np.float64)
    except (TypeError, ValueError):
        raise CycleULMError("the line must be an (N, 2) array of (y, x) vertices.") from None
    if v.ndim != 2 or v.shape[1] < 2 or len(v) < 2:
        raise CycleULMError(
            f"the line must have at least 2 (y, x) vertices, got an array of shape {v.shape}; "
            "draw a line (or path) across a vessel."
        )
    if not np.isfinite(v).all():
        raise CycleULMError("the line has NaN or infinite vertices.")
    v = v[:, -2:]  # (frame, y, x) vertices from a stack: the profile is 2-D
    keep = np.r_[True, np.any(np.diff(v, axis=0) != 0, axis=1)]
    return v[keep]


def profile_along(image, vertices, samples_per_px: float = 4.0,
                  order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Intensity profile along a drawn line or polyline, several samples per pixel.

    :func:`metrics.path_profile` (``skimage.measure.profile_line``, one line
    wide, edge values outside the image) with the number of samples set by
    ``samples_per_px``, for vertices as napari Shapes give them.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Image to sample.
    vertices : array_like, shape (N, 2) or (N, 3)
        ``(y, x)`` vertices in pixels (``N >= 2``; a leading frame coordinate
        is dropped).  Two vertices make a straight line; more make a path
        sampled at equal arc length.
    samples_per_px : float
        Samples per pixel of length (default 4: finer than the pixel grid so
        the FWHM of narrow MB-only peaks is resolved); the spacing is
        ``length / ceil(length * samples_per_px)`` (at least 3 samples).
    order : int
        Spline interpolation order: 3 (default, cubic) measures the FWHM of a
        Gaussian of sigma >= 1 px within about 3 % wherever its centre falls
        between pixels; 1 (bilinear) overestimates it by up to 10 % at sigma
        1 px (see :func:`metrics.path_profile`).

    Returns
    -------
    distance_px : numpy.ndarray, shape (n,)
        Arc length of each sample from the first vertex, pixels.
    values : numpy.ndarray, shape (n,)
        Intensities (float64).

    Raises
    ------
    CycleULMError
        On a non-2-D image, fewer than 2 distinct vertices (zero length), a
        line entirely outside the image, ``samples_per_px <= 0`` or an
        order outside 0..5.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise CycleULMError(f"image must be 2-D (height, width), got shape {img.shape}.")
    if not (np.isfinite(samples_per_px) and samples_per_px > 0):
        raise CycleULMError(f"samples_per_px must be positive, got {samples_per_px}.")
    if isinstance(order, bool) or order not in range(6):
        raise CycleULMError(f"order must be an integer from 0 to 5, got {order!r}.")
    v = _line_vertices(vertices)
    length = float(np.hypot(*np.diff(v, axis=0).T).sum())
    if len(v) < 2 or length < 1e-6:
        raise CycleULMError(
            "the line has zero length; draw a line across a vessel (click, drag, release)."
        )
    h, w = img.shape
    n = max(3, int(math.ceil(length * samples_per_px)) + 1)
    cum = np.r_[0.0, np.cumsum(np.hypot(*np.diff(v, axis=0).T))]
    dist = np.linspace(0.0, length, n)
    ys, xs = np.interp(dist, cum, v[:, 0]), np.interp(dist, cum, v[:, 1])
    inside = (ys >= -0.5) & (ys <= h - 0.5) & (xs >= -0.5) & (xs <= w - 0.5)
    if not inside.any():
        raise CycleULMError(f"the line lies outside the {h}x{w} image; draw it over the image.")
    return path_profile(img, v, n, order=order)


def peak_fwhm(values, spacing: float = 1.0) -> float:
    """FWHM of the highest *interior* peak of a profile.

    A drawn line often ends on another, brighter structure; a maximum at an
    end of the line is not crossed by it, so the highest local maximum inside
    the line is measured instead (between the lowest samples on either side of
    it, with the profile minimum as baseline).  Falls back to
    :func:`metrics.fwhm` for a profile without an interior maximum.

    Parameters
    ----------
    values : array_like, shape (N,)
        Equally spaced samples.
    spacing : float
        Distance between samples.

    Returns
    -------
    float
        FWHM in the units of ``spacing``; NaN when the peak does not fall below
        half maximum on both sides.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 3:
        return fwhm(v, spacing)  # raises the usual error
    inner = np.flatnonzero((v[1:-1] >= v[:-2]) & (v[1:-1] >= v[2:])) + 1
    if inner.size == 0 or not np.isfinite(v).all():
        return fwhm(v, spacing)
    i = int(inner[np.argmax(v[inner])])
    left = int(np.argmin(v[: i + 1]))
    right = i + int(np.argmin(v[i:]))
    if right - left < 2:
        return math.nan
    return fwhm(v[left : right + 1], spacing, baseline=float(v.min()))


def fwhm_on_mip(
    frames,
    vertices,
    *,
    pixel_size_um: float | None = None,
    samples_per_px: float = 4.0,
    name: str = "",
) -> Profile:
    """Profile along a line on the MIP over time, and its FWHM.

    Parameters
    ----------
    frames : array_like or LazyStack, shape (T, H, W) or (H, W)
        CEUS or MB-only frames (a 2-D image is used as it is).
    vertices : array_like, shape (N, 2)
        ``(y, x)`` line vertices in the frames' pixels (see :func:`profile_along`).
    pixel_size_um : float, optional
        Pixel size, for :attr:`Profile.fwhm_um`.
    samples_per_px : float
        Profile samples per pixel.
    name : str
        Label stored in the result.

    Returns
    -------
    Profile
        Samples and the FWHM of the highest peak inside the line
        (:func:`peak_fwhm`; pixels; NaN when the peak is not bracketed by
        values below half maximum).

    Raises
    ------
    CycleULMError
        On bad frames or a bad line, or a non-positive pixel size.
    """
    if pixel_size_um is not None and not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise CycleULMError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}.")
    image = _as_mip(frames, name or "frames")
    dist, values = profile_along(image, vertices, samples_per_px)
    width = peak_fwhm(values, spacing=float(dist[1] - dist[0]))
    return Profile(name=name, distance_px=dist, values=values, fwhm_px=float(width),
                   pixel_size_um=None if pixel_size_um is None else float(pixel_size_um))


def compare_fwhm(frames: Mapping[str, object], vertices, *, pixel_size_um=None,
                 samples_per_px: float = 4.0) -> list[Profile]:
    """:func:`fwhm_on_mip` for several stacks (e.g. ``{"raw": ..., "MB-only": ...}``).

    ``vertices`` may be a ``{name: vertices}`` mapping when the stacks live on
    different pixel grids.
    """
    if not frames:
        raise CycleULMError("no frames given to measure the FWHM on.")
    out = []
    for name, stack in frames.items():
        v = vertices[name] if isinstance(vertices, Mapping) else vertices
        out.append(fwhm_on_mip(stack, v, pixel_size_um=pixel_size_um,
                               samples_per_px=samples_per_px, name=name))
    return out


# --------------------------------------------------------------------------
# Localisation accuracy
# --------------------------------------------------------------------------
_METHOD = re.compile(r"^\[([^\[\]]+)\] ")


def method_from_name(name: str) -> str:
    """The method in a result layer name: ``"[ncc] CEUS localisations (2)"`` -> ``"ncc"``.

    The method is the leading ``[...]`` tag of the napari plugin's result
    names; names without one are returned unchanged.
    """
    m = _METHOD.match(str(name))
    return m.group(1) if m else str(name)


def _check_gt(ground_truth) -> None:
    n = len(ground_truth) if isinstance(ground_truth, PointTable) else len(np.asarray(ground_truth))
    if n == 0:
        raise CycleULMError(
            "the ground truth is empty; choose a ground-truth Points layer / table that holds points."
        )


def _check_tolerance(tolerance) -> float:
    if not (np.isfinite(tolerance) and tolerance > 0):
        raise CycleULMError(f"tolerance must be a positive number of pixels, got {tolerance!r}.")
    return float(tolerance)


def score_localisations(
    ground_truth,
    detections: Mapping[str, PointTable],
    tolerance: float = 1.0,
    *,
    pixel_size_um: float | None = None,
    per_frame: bool = True,
) -> list[dict]:
    """Precision, recall, F1 and mean error of several detection tables.

    Parameters
    ----------
    ground_truth : Localisations or array_like, shape (N, 3)
        True ``(frame, y, x)`` positions, pixels.
    detections : mapping of str to Localisations
        Detection tables by name (e.g. napari layer names).
    tolerance : float
        Matching radius in pixels (one-to-one Hungarian matching per frame,
        :func:`metrics.match_localisations`).
    pixel_size_um : float, optional
        Pixel size, for ``mean_error_um``.
    per_frame : bool
        Match only within the same frame.

    Returns
    -------
    list of dict
        One row per table with the keys of :data:`SCORE_COLUMNS`
        (``method`` parsed from ``"[method] ..."`` names; ``mean_error_*`` NaN
        without matches, ``mean_error_um`` None without pixel size).

    Raises
    ------
    CycleULMError
        On an empty ground truth, no detection tables, or a bad tolerance.
    """
    _check_gt(ground_truth)
    tol = _check_tolerance(tolerance)
    if not detections:
        raise CycleULMError("no detections to score; choose at least one localisations layer / table.")
    n_gt = len(ground_truth) if isinstance(ground_truth, PointTable) else len(np.asarray(ground_truth))
    rows = []
    for name, det in detections.items():
        res = match_localisations(ground_truth, det, tolerance=tol, per_frame=per_frame)
        err_um = None
        if pixel_size_um is not None:
            err_um = res.mean_error_px * float(pixel_size_um)
        rows.append({
            "layer": str(name),
            "method": method_from_name(name),
            "n_detections": int(res.tp + res.fp),
            "n_ground_truth": int(n_gt),
            "tp": res.tp, "fp": res.fp, "fn": res.fn,
            "precision": res.precision, "recall": res.recall, "f1": res.f1,
            "mean_error_px": res.mean_error_px,
            "mean_error_um": err_um,
        })
    return rows


def sweep_localisations(
    ground_truth,
    detections: Mapping[str, PointTable],
    tolerance: float = 1.0,
    *,
    score_column: str = "score",
    thresholds=None,
    per_frame: bool = True,
) -> dict[str, list[dict]]:
    """Precision-recall curves over a score threshold, one per detection table.

    Parameters
    ----------
    ground_truth : Localisations or array_like, shape (N, 3)
        True positions, pixels.
    detections : mapping of str to Localisations
        Tables with a ``score_column`` (higher = more confident).
    tolerance : float
        Matching radius, pixels.
    score_column : str
        Column swept over.
    thresholds : array_like, optional
        Thresholds; by default 21 quantiles of each table's scores.
    per_frame : bool
        Match only within the same frame.

    Returns
    -------
    dict of str to list of dict
        For each table the rows of :func:`metrics.precision_recall_sweep`
        (``threshold, recall, precision, f1, mean_error_px, n_detections``).

    Raises
    ------
    CycleULMError
        On an empty ground truth, a table without ``score_column`` (the
        message names it), or a bad tolerance.
    """
    _check_gt(ground_truth)
    tol = _check_tolerance(tolerance)
    lacking = [n for n, d in detections.items() if score_column not in d]
    if lacking:
        raise CycleULMError(
            f"{', '.join(map(repr, lacking))} {'has' if len(lacking) == 1 else 'have'} no "
            f"{score_column!r} column; a precision-recall sweep needs detection scores "
            "(the Localise widget and the pipelines add them)."
        )
    return {
        str(name): precision_recall_sweep(ground_truth, det, score_column=score_column,
                                          thresholds=thresholds, tolerance=tol, per_frame=per_frame)
        for name, det in detections.items()
    }


# --------------------------------------------------------------------------
# Tables as text
# --------------------------------------------------------------------------
def format_value(v, spec: str = ".4g", *, missing: str = "", nan: str = "nan") -> str:
    """One table cell as text: floats with ``spec``, ``missing`` for None, ``nan`` for NaN."""
    if v is None:
        return missing
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return nan
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return format(v, spec)
    return str(v)


def rows_to_text(rows: Sequence[Mapping], columns: Sequence[str] | None = None, sep: str = "\t") -> str:
    """Rows of dicts as delimited text with a header line (TSV by default: pastes into a spreadsheet)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=sep, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([format_value(r.get(c)) for c in columns])
    return buf.getvalue()


def write_rows_csv(rows: Sequence[Mapping], path: str | os.PathLike,
                   columns: Sequence[str] | None = None) -> None:
    """Write rows of dicts as a CSV file, atomically."""
    write_text_atomic(path, rows_to_text(rows, columns, sep=","))


# --------------------------------------------------------------------------
# Plots (on any matplotlib Axes; no Qt)
# --------------------------------------------------------------------------
def plot_profiles(ax, profiles: Sequence[Profile], normalise: bool = True) -> None:
    """Draw intensity profiles (one line each) with their FWHM in the legend.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Target axes (cleared first).
    profiles : sequence of Profile
        Profiles to draw; the x axis is in micrometres when every profile
        knows its pixel size, else in pixels.
    normalise : bool
        Scale each profile to ``[0, 1]`` (min to max) so stacks of different
        intensity scales (raw CEUS and MB-only) compare.
    """
    ax.clear()
    in_um = bool(profiles) and all(p.pixel_size_um for p in profiles)
    for p in profiles:
        x = p.distance_px * p.pixel_size_um if in_um else p.distance_px
        y = p.values
        if normalise:
            lo, hi = float(y.min()), float(y.max())
            y = (y - lo) / (hi - lo) if hi > lo else np.zeros_like(y)
        if math.isnan(p.fwhm_px):
            label = f"{p.name}: FWHM n/a"
        elif p.fwhm_um is not None:
            label = f"{p.name}: FWHM {p.fwhm_px:.2f} px ({p.fwhm_um:.0f} um)"
        else:
            label = f"{p.name}: FWHM {p.fwhm_px:.2f} px"
        ax.plot(x, y, lw=1.4, label=label)
    if normalise:
        ax.axhline(0.5, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("distance along the line (um)" if in_um else "distance along the line (px)")
    ax.set_ylabel("normalised intensity" if normalise else "intensity")
    ax.set_title("profile on the MIP")
    if profiles:
        ax.legend(fontsize=7)


def plot_precision_recall(ax, sweeps: Mapping[str, Sequence[Mapping]],
                          points: Mapping[str, tuple[float, float]] | None = None) -> None:
    """Draw precision-recall curves (one per table) and optional operating points.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Target axes (cleared first).
    sweeps : mapping of str to rows
        Output of :func:`sweep_localisations`.
    points : mapping of str to (recall, precision), optional
        Operating points (all detections kept) drawn as markers.
    """
    ax.clear()
    for i, (name, rows) in enumerate(sweeps.items()):
        r = [row["recall"] for row in rows]
        p = [row["precision"] for row in rows]
        (line,) = ax.plot(r, p, marker="o", ms=2.5, lw=1.2, label=method_from_name(name))
        if points and name in points:
            ax.plot(*points[name], marker="*", ms=9, color=line.get_color(), ls="none")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall (score threshold sweep)")
    if sweeps:
        ax.legend(fontsize=7, loc="lower left")
