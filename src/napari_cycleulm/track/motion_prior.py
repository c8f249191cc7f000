"""Motion priors for the linker: velocity fields sampled at bubble positions.

The paper (section 2) proposes decoding explicit tracks from MBL-Net
detections with the motion priors MBT-Net predicts.  A *motion prior* here is
any callable

``prior(frames, y, x) -> (vy, vx)``

taking 1-D arrays of frame indices and positions (original pixels) and
returning the expected bubble velocity there, pixels/frame, NaN where the
prior knows nothing.  :class:`~napari_cycleulm.track.Linker` (argument
``motion_prior``) uses it to predict where a track goes next; see
:mod:`napari_cycleulm.track.linker` for how it is blended with the track's own
velocity.

:class:`VelocityPrior` is the prior of a velocity map pair ``(vy, vx)`` on
the native grid or an SR grid (``scale = u``; SR pixel ``(i, j)`` is centred at
original ``((i - (u - 1) / 2) / u, (j - (u - 1) / 2) / u)``, the grid of
:mod:`napari_cycleulm.render` and of MBT-Net), e.g. the mean velocity maps
of :meth:`napari_cycleulm.render.e2e.E2EAccumulator.mean_velocity`, or a stack of
per-window maps.  :func:`velocity_field_from_tracks` builds such maps from
tracks with velocities (the simulator's ground truth, for reference priors).
:func:`link_with_prior` links localisations with a map prior in one call.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..errors import CycleULMError
from ..render import sr_coordinates
from ..io.tables import Tracks

__all__ = ["VelocityPrior", "link_with_prior", "velocity_field_from_tracks"]


def _check_scale(scale) -> int:
    ok = isinstance(scale, (int, np.integer)) and not isinstance(scale, bool) and scale >= 1
    if not ok:
        raise CycleULMError(f"scale must be an integer >= 1 (SR factor of the maps), got {scale!r}.")
    return int(scale)


def _fill_nan(vy: np.ndarray, vx: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Fill NaN pixels near finite ones by normalised Gaussian convolution (finite pixels kept)."""
    has = np.isfinite(vy) & np.isfinite(vx)
    sig = [0.0] * (vy.ndim - 2) + [sigma, sigma]
    w = ndimage.gaussian_filter(has.astype(np.float64), sig, mode="constant")
    sy = ndimage.gaussian_filter(np.where(has, vy, 0.0), sig, mode="constant")
    sx = ndimage.gaussian_filter(np.where(has, vx, 0.0), sig, mode="constant")
    # Pixels further than ~3 sigma from any finite pixel stay unknown.
    reach = w > math.exp(-4.5) * (1.0 / (2 * math.pi * sigma**2)) if sigma > 0 else w > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        fy = np.where(has, vy, np.where(reach, sy / w, np.nan))
        fx = np.where(has, vx, np.where(reach, sx / w, np.nan))
    return fy, fx


class VelocityPrior:
    """A motion prior from velocity maps ``(vy, vx)`` in pixels/frame.

    Parameters
    ----------
    velocity_y, velocity_x : array_like
        ``(H*scale, W*scale)`` maps, or ``(K, H*scale, W*scale)`` stacks of
        per-window maps (map ``k`` covers frames ``k * frames_per_map`` to
        ``(k + 1) * frames_per_map - 1``; frames past the last map use it).
        Velocities in *original* pixels per frame (MBT-Net's unit); NaN where
        unknown.
    scale : int
        SR factor of the maps relative to the localisations' pixels (1: the
        native grid; 4: MBT-Net's grid).  Default 4.
    frames_per_map : int, optional
        Frames per map of a stack (e.g. the MBT-Net window, 8); required for
        stacks, ignored for single maps.
    fill_sigma : float
        Fill unknown map pixels within about ``3 * fill_sigma`` map pixels of
        known ones by normalised Gaussian averaging (sigma in map pixels);
        default 0, no filling.  Useful for sparse maps, e.g. drawn from a few
        tracks.

    Notes
    -----
    Calling the prior with 1-D arrays ``frames, y, x`` (original pixels,
    ``(0, 0)`` the centre of the top-left pixel) returns ``(vy, vx)`` by
    bilinear interpolation among the finite neighbouring map pixels; NaN
    where all four are unknown or the point lies outside the map.

    Examples
    --------
    >>> vy = np.full((8, 8), 0.5); vx = np.zeros((8, 8))
    >>> prior = VelocityPrior(vy, vx, scale=4)
    >>> prior(np.array([0]), np.array([1.0]), np.array([1.0]))
    (array([0.5]), array([0.]))
    """

    def __init__(self, velocity_y, velocity_x, scale: int = 4, *,
                 frames_per_map: int | None = None, fill_sigma: float = 0.0) -> None:
        vy = np.asarray(velocity_y, dtype=np.float64)
        vx = np.asarray(velocity_x, dtype=np.float64)
        if vy.shape != vx.shape or vy.ndim not in (2, 3) or min(vy.shape[-2:], default=0) < 1:
            raise CycleULMError(
                "velocity_y and velocity_x must be (H, W) maps or (K, H, W) stacks of the same "
                f"shape, got {vy.shape} and {vx.shape}."
            )
        self.scale = _check_scale(scale)
        if vy.ndim == 3:
            ok = (isinstance(frames_per_map, (int, np.integer)) and not isinstance(frames_per_map, bool)
                  and frames_per_map >= 1)
            if not ok:
                raise CycleULMError(
                    f"frames_per_map must be an integer >= 1 for a stack of maps, got {frames_per_map!r}."
                )
        if not (isinstance(fill_sigma, (int, float, np.number)) and math.isfinite(fill_sigma)
                and fill_sigma >= 0):
            raise CycleULMError(f"fill_sigma must be a number >= 0 (map pixels), got {fill_sigma!r}.")
        if fill_sigma > 0:
            vy, vx = _fill_nan(vy, vx, float(fill_sigma))
        self.frames_per_map = None if vy.ndim == 2 else int(frames_per_map)
        self._vy = vy if vy.ndim == 3 else vy[None]
        self._vx = vx if vx.ndim == 3 else vx[None]

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the maps (map pixels)."""
        return tuple(self._vy.shape[-2:])

    def __call__(self, frames, y, x) -> tuple[np.ndarray, np.ndarray]:
        """Prior velocity ``(vy, vx)`` in pixels/frame at ``(frames, y, x)``; NaN where unknown."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        k = np.zeros(y.size, np.int64)
        if self.frames_per_map is not None:
            f = np.broadcast_to(np.asarray(frames, dtype=np.int64).reshape(-1), y.shape)
            k = np.clip(f // self.frames_per_map, 0, self._vy.shape[0] - 1)
        sy, sx = sr_coordinates(y, x, self.scale)
        h, w = self.shape
        y0, x0 = np.floor(sy), np.floor(sx)
        ty, tx = sy - y0, sx - x0
        num_y, num_x, den = np.zeros(y.size), np.zeros(y.size), np.zeros(y.size)
        for dy, dx, wt in ((0, 0, (1 - ty) * (1 - tx)), (0, 1, (1 - ty) * tx),
                           (1, 0, ty * (1 - tx)), (1, 1, ty * tx)):
            iy, ix = (y0 + dy).astype(np.int64), (x0 + dx).astype(np.int64)
            inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w) & np.isfinite(sy) & np.isfinite(sx)
            iyc, ixc = np.where(inside, iy, 0), np.where(inside, ix, 0)
            vy, vx = self._vy[k, iyc, ixc], self._vx[k, iyc, ixc]
            use = inside & np.isfinite(vy) & np.isfinite(vx) & (wt > 0)
            num_y += np.where(use, wt * vy, 0.0)
            num_x += np.where(use, wt * vx, 0.0)
            den += np.where(use, wt, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            known = den > 1e-12
            return np.where(known, num_y / den, np.nan), np.where(known, num_x / den, np.nan)


def velocity_field_from_tracks(tracks, shape, upsampling: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Mean velocity maps ``(vy, vx)`` of tracks, on an SR grid.

    Parameters
    ----------
    tracks : Tracks or Localisations
        Rows with ``y, x`` (original pixels) and ``vy, vx`` (pixels/frame),
        e.g. the simulator's ground truth.
    shape : (int, int)
        ``(H, W)`` of the original frames, pixels.
    upsampling : int
        SR factor ``u`` of the maps (default 4, MBT-Net's grid).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        float64 ``(H*u, W*u)`` mean ``vy`` and ``vx`` (pixels/frame) of the
        rows falling in each SR pixel (nearest), NaN where none did.  Pass
        them to :class:`VelocityPrior` (with ``fill_sigma`` to close gaps
        between the points of fast tracks).
    """
    u = _check_scale(upsampling)
    h, w = (int(s) for s in shape)
    cols = tracks.columns if hasattr(tracks, "columns") else dict(tracks)
    missing = [c for c in ("y", "x", "vy", "vx") if c not in cols]
    if missing:
        raise CycleULMError(f"tracks lack column(s) {missing}; need y, x, vy, vx.")
    sy, sx = sr_coordinates(cols["y"], cols["x"], u)
    vy, vx = np.asarray(cols["vy"], float), np.asarray(cols["vx"], float)
    iy, ix = np.floor(sy + 0.5), np.floor(sx + 0.5)
    ok = (iy >= 0) & (iy < h * u) & (ix >= 0) & (ix < w * u) & np.isfinite(vy) & np.isfinite(vx)
    flat = (iy[ok] * (w * u) + ix[ok]).astype(np.int64)
    size = h * u * w * u
    n = np.bincount(flat, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        my = np.where(n > 0, np.bincount(flat, vy[ok], size) / n, np.nan)
        mx = np.where(n > 0, np.bincount(flat, vx[ok], size) / n, np.nan)
    return my.reshape(h * u, w * u), mx.reshape(h * u, w * u)


def link_with_prior(localisations, velocity_y, velocity_x, scale: int = 4, *,
                    frames_per_map: int | None = None, fill_sigma: float = 0.0,
                    **linker_params) -> Tracks:
    """Link localisations into tracks with a velocity-map motion prior.

    Parameters
    ----------
    localisations : Localisations
        Detections with ``frame, y, x`` (pixels) and optionally ``intensity``.
    velocity_y, velocity_x : array_like
        Velocity maps (or stacks of per-window maps), original pixels/frame,
        NaN where unknown; see :class:`VelocityPrior`.  E.g.
        ``E2EAccumulator.mean_velocity()`` of the same acquisition.
    scale : int
        SR factor of the maps (default 4, MBT-Net's grid; 1 for native maps).
    frames_per_map, fill_sigma
        See :class:`VelocityPrior`.
    **linker_params
        Parameters of :class:`~napari_cycleulm.track.Linker`
        (``max_distance``, ``max_gap``, ``min_length``, ``prior_noise``...).

    Returns
    -------
    Tracks
        As :func:`~napari_cycleulm.track.track`.

    Raises
    ------
    CycleULMError
        On malformed maps or linker parameters.
    """
    from .linker import track

    if "motion_prior" in linker_params:
        raise CycleULMError("link_with_prior builds the motion prior itself; do not pass motion_prior.")
    prior = VelocityPrior(velocity_y, velocity_x, scale, frames_per_map=frames_per_map,
                          fill_sigma=fill_sigma)
    return track(localisations, motion_prior=prior, **linker_params)
