"""Super-resolution (SR) maps from tracks and localisations.

Grid convention
---------------
The SR grid upsamples the original ``(H, W)`` frame grid by an integer factor
``u`` (default 4) to ``(H*u, W*u)``.  Pixel centres sit at integer
coordinates on both grids, so a position ``(y, x)`` in original pixels has the
SR coordinate ``(y*u + (u-1)/2, x*u + (u-1)/2)``; original pixel ``(0, 0)``
(which spans -0.5..0.5) is covered by SR pixels ``0..u-1``.  A point falls in
the SR pixel ``floor(Y + 0.5)`` (nearest centre; with even ``u`` a point at
an original pixel centre lies on an SR pixel border and goes to the higher
index).  To overlay an SR map on the CEUS frames in napari, give its layer
``scale = (1/u, 1/u)`` and ``translate = (-(u-1)/(2u), -(u-1)/(2u))``.

Track rendering
---------------
Each track is drawn as the polyline through its consecutive points (gap
frames are bridged by the straight segment).  Segments are sampled every
``step`` SR pixels (default 0.5) and the SR pixels touched are counted *once
per track*: the density map is the number of track passages per SR pixel, so
a slow bubble that lingers over a pixel for many frames counts once, like a
fast one (this is stricter than once per segment, which would still count a
pixel at every joint of a slow track).  Velocity maps average, over the
passages, the track velocity (``vy, vx`` columns, linearly interpolated along
segments; finite differences when the columns are missing) at the pixel.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .._atomic import atomic_path
from ..errors import CycleULMError
from ..io.tables import PointTable

__all__ = [
    "SRMaps",
    "SRRenderer",
    "render_density",
    "render_localisations",
    "render_velocity",
    "power_doppler",
    "PowerDopplerAccumulator",
    "to_png",
    "px_per_frame_to_mm_s",
    "sr_coordinates",
]

#: Samples per chunk when drawing many tracks (bounds memory).
_CHUNK_SAMPLES = 2_000_000


def px_per_frame_to_mm_s(v, pixel_size_um: float, frame_rate_hz: float):
    """Convert a velocity from pixels/frame to mm/s.

    Parameters
    ----------
    v : float or array_like
        Velocity in (original) pixels per frame.
    pixel_size_um : float
        Original pixel size, micrometres.
    frame_rate_hz : float
        Frame rate, Hz.

    Returns
    -------
    float or numpy.ndarray
        ``v * pixel_size_um * frame_rate_hz / 1000``.

    Raises
    ------
    CycleULMError
        If the pixel size or frame rate is not a positive number.
    """
    _positive("pixel_size_um", pixel_size_um)
    _positive("frame_rate_hz", frame_rate_hz)
    factor = float(pixel_size_um) * float(frame_rate_hz) / 1000.0
    if np.ndim(v) == 0:
        return float(v) * factor
    return np.asarray(v, dtype=np.float64) * factor


def sr_coordinates(y, x, upsampling: int = 4):
    """SR-grid coordinates ``(y*u + (u-1)/2, x*u + (u-1)/2)`` of original positions."""
    off = (upsampling - 1) / 2.0
    ys = np.asarray(y, np.float64) * upsampling + off
    return ys, np.asarray(x, np.float64) * upsampling + off


def _positive(name, val) -> None:
    ok = isinstance(val, (int, float, np.number)) and not isinstance(val, bool)
    if not (ok and math.isfinite(val) and val > 0):
        raise CycleULMError(f"{name} must be a positive number, got {val!r}.")


def _check_shape(shape) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise CycleULMError(
            f"shape must be the (height, width) of the original frames, got {shape!r}."
        ) from None
    if h <= 0 or w <= 0 or (h, w) != tuple(shape):
        raise CycleULMError(f"shape must hold two positive integers, got {shape!r}.")
    return h, w


def _table_columns(table, required, what):
    if isinstance(table, PointTable):
        cols = table.columns
    elif isinstance(table, dict):
        cols = table
    else:
        raise CycleULMError(f"expected a {what} table, got {type(table).__name__}.")
    missing = [c for c in required if c not in cols]
    if missing:
        raise CycleULMError(f"{what} lack column(s) {missing}; needed: {list(required)}.")
    return {n: np.asarray(c) for n, c in cols.items()}


@dataclass
class SRMaps:
    """Super-resolution maps on the upsampled grid (all shaped ``(H*u, W*u)``).

    Attributes
    ----------
    density : numpy.ndarray
        float32 number of track passages per SR pixel.
    count : numpy.ndarray
        float32 number of localisations per SR pixel.
    velocity : numpy.ndarray
        float32 mean speed per SR pixel in ``velocity_unit``; NaN where no track passed.
    axial_velocity : numpy.ndarray
        float32 mean speed signed by the axial direction: positive for flow
        towards larger y (deeper), negative towards the probe; NaN where empty.
    direction : numpy.ndarray
        float32 mean flow direction, radians, ``atan2(vy, vx)`` of the summed
        unit velocity vectors: 0 = +x (right), pi/2 = +y (down).  NaN where empty.
    velocity_unit : str
        ``"mm/s"`` or ``"px/frame"`` (original pixels per frame).
    upsampling : int
        Upsampling factor ``u``.
    pixel_size_um : float or None
        Size of an SR pixel in micrometres (original pixel size / u), when known.
    """

    density: np.ndarray
    count: np.ndarray
    velocity: np.ndarray
    axial_velocity: np.ndarray
    direction: np.ndarray
    velocity_unit: str
    upsampling: int
    pixel_size_um: float | None = None


#: Bytes per SR pixel while rendering: seven float64 accumulators, the four
#: float32 maps of the result and their float64 temporaries, the RGB preview.
SR_BYTES_PER_PIXEL = 7 * 8 + 4 * 4 + 2 * 8 + 4


def sr_memory_bytes(shape, upsampling: int) -> int:
    """Estimated peak memory (bytes) of rendering SR maps of a ``(H, W)`` frame at ``upsampling``."""
    h, w = (int(s) for s in tuple(shape)[-2:])
    return h * w * int(upsampling) ** 2 * SR_BYTES_PER_PIXEL


def check_sr_memory(shape, upsampling: int) -> None:
    """Refuse an SR grid that cannot fit in memory, with the estimate.

    Raises
    ------
    CycleULMError
        If :func:`sr_memory_bytes` exceeds the memory available.
    """
    from .._resources import check_memory

    h, w = (int(s) for s in tuple(shape)[-2:])
    u = int(upsampling)
    check_memory(
        sr_memory_bytes(shape, u),
        f"SR maps of {h * u}x{w * u} px ({h}x{w} px frames at upsampling {u})",
        "choose a smaller upsampling (4 is the usual) or crop the frames",
    )


class SRRenderer:
    """Accumulate SR density, localisation-count and velocity maps incrementally.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the original frames, pixels.
    upsampling : int
        Integer upsampling factor ``u`` (default 4); maps are ``(H*u, W*u)``.
    step : float
        Sampling step along track segments, SR pixels (default 0.5).

    Notes
    -----
    Adding tracks in several calls gives the same maps as adding them in one
    call, provided each call holds whole tracks (the same ``track_id`` in two
    calls counts as two tracks) — which is what :class:`track.Linker` returns.
    Points outside the grid are ignored.
    """

    def __init__(self, shape, upsampling: int = 4, step: float = 0.5) -> None:
        self.shape = _check_shape(shape)
        integer = isinstance(upsampling, (int, np.integer)) and not isinstance(upsampling, bool)
        if not integer or upsampling < 1:
            raise CycleULMError(f"upsampling must be an integer >= 1, got {upsampling!r}.")
        _positive("step", step)
        self.upsampling = int(upsampling)
        self.step = float(step)
        self.sr_shape = (self.shape[0] * self.upsampling, self.shape[1] * self.upsampling)
        check_sr_memory(self.shape, self.upsampling)
        size = self.sr_shape[0] * self.sr_shape[1]
        self._density = np.zeros(size)
        self._count = np.zeros(size)
        self._nvel = np.zeros(size)  # passages with a finite velocity
        self._speed = np.zeros(size)
        self._axial = np.zeros(size)
        self._uy = np.zeros(size)
        self._ux = np.zeros(size)
        self.n_tracks = 0
        self.n_localisations = 0

    # -- accumulation ---------------------------------------------------------
    def merge(self, other: "SRRenderer") -> "SRRenderer":
        """Add another renderer's accumulated maps to this one (in place); returns self.

        ``a.merge(b)`` equals one renderer given the inputs of both, so
        blocks rendered anywhere (another process, a dask worker) combine.

        Raises
        ------
        CycleULMError
            If the two renderers have different grids.
        """
        if not isinstance(other, SRRenderer):
            raise CycleULMError(f"can only merge another SRRenderer, got {type(other).__name__}.")
        if (other.shape, other.upsampling, other.step) != (self.shape, self.upsampling, self.step):
            raise CycleULMError(
                f"cannot merge SR renderers of different grids: {self.shape} x{self.upsampling} "
                f"(step {self.step}) and {other.shape} x{other.upsampling} (step {other.step})."
            )
        for name in ("_density", "_count", "_nvel", "_speed", "_axial", "_uy", "_ux"):
            getattr(self, name)[...] += getattr(other, name)
        self.n_tracks += other.n_tracks
        self.n_localisations += other.n_localisations
        return self

    def _pixel_index(self, ys, xs):
        """Flat SR pixel index (or -1 outside) of SR coordinates."""
        iy = np.floor(ys + 0.5)
        ix = np.floor(xs + 0.5)
        h, w = self.sr_shape
        inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        flat = np.where(inside, iy * w + ix, -1)
        return flat.astype(np.int64)

    def add_localisations(self, localisations) -> None:
        """Add localisations (``frame, y, x`` pixels) to the count map (nearest SR pixel)."""
        cols = _table_columns(localisations, ("y", "x"), "localisations")
        sy, sx = sr_coordinates(cols["y"], cols["x"], self.upsampling)
        ok = np.isfinite(sy) & np.isfinite(sx)
        flat = self._pixel_index(sy[ok], sx[ok])
        flat = flat[flat >= 0]
        self._count += np.bincount(flat, minlength=self._count.size)
        self.n_localisations += int(ok.sum())

    def add_tracks(self, tracks) -> None:
        """Draw whole tracks (``track_id, frame, y, x`` and optionally ``vy, vx``).

        Raises
        ------
        CycleULMError
            If required columns are missing or positions are not finite.
        """
        cols = _table_columns(tracks, ("track_id", "frame", "y", "x"), "tracks")
        tid = cols["track_id"].astype(np.int64)
        if tid.size == 0:
            return
        frame = cols["frame"].astype(np.float64)
        order = np.lexsort([frame, tid])
        tid, frame = tid[order], frame[order]
        y = cols["y"].astype(np.float64)[order]
        x = cols["x"].astype(np.float64)[order]
        if not (np.isfinite(y).all() and np.isfinite(x).all()):
            raise CycleULMError("tracks contain NaN or infinite y/x positions.")
        new = np.concatenate([[True], tid[1:] != tid[:-1]])
        if "vy" in cols and "vx" in cols:
            vy = cols["vy"].astype(np.float64)[order]
            vx = cols["vx"].astype(np.float64)[order]
        else:
            vy, vx = _finite_difference(new, frame, y, x)
        track_no = np.cumsum(new) - 1  # 0..n_tracks-1 in this call
        sy, sx = sr_coordinates(y, x, self.upsampling)

        # Segment i joins rows i and i+1 of the same track; single-point tracks
        # are drawn as a zero-length segment from the point to itself.
        last = np.append(~new[1:], False)  # row has a successor in its track
        alone = new & np.append(new[1:], True)
        a = np.concatenate([np.flatnonzero(last), np.flatnonzero(alone)])
        b = np.concatenate([np.flatnonzero(last) + 1, np.flatnonzero(alone)])
        length = np.hypot(sy[b] - sy[a], sx[b] - sx[a])
        nsamp = np.ceil(length / self.step).astype(np.int64) + 1
        # Chunks of whole tracks keep the sample arrays bounded.
        seg_track = track_no[a]
        order = np.argsort(seg_track, kind="stable")
        a, b, nsamp, seg_track = a[order], b[order], nsamp[order], seg_track[order]
        cum = np.cumsum(nsamp)
        bounds = [0]
        while bounds[-1] < a.size:
            target = (cum[bounds[-1] - 1] if bounds[-1] else 0) + _CHUNK_SAMPLES
            k = int(np.searchsorted(cum, target, side="right"))
            k = max(k, bounds[-1] + 1)
            # never split a track between chunks
            while k < a.size and seg_track[k] == seg_track[k - 1]:
                k += 1
            bounds.append(k)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            self._draw(a[lo:hi], b[lo:hi], nsamp[lo:hi], seg_track[lo:hi], sy, sx, vy, vx)
        self.n_tracks += int(new.sum())

    def _draw(self, a, b, nsamp, seg_track, sy, sx, vy, vx) -> None:
        total = int(nsamp.sum())
        seg = np.repeat(np.arange(a.size), nsamp)
        k = np.arange(total) - np.repeat(np.cumsum(nsamp) - nsamp, nsamp)
        denom = np.maximum(nsamp - 1, 1)[seg]
        t = k / denom
        ia, ib = a[seg], b[seg]
        ys = sy[ia] + t * (sy[ib] - sy[ia])
        xs = sx[ia] + t * (sx[ib] - sx[ia])
        flat = self._pixel_index(ys, xs)
        inside = flat >= 0
        if not inside.any():
            return
        trk = seg_track[seg][inside]
        flat = flat[inside]
        svy = (vy[ia] + t * (vy[ib] - vy[ia]))[inside]
        svx = (vx[ia] + t * (vx[ib] - vx[ia]))[inside]
        # One passage per (track, SR pixel); its velocity is the mean of its samples.
        key = trk * self._density.size + flat
        ukey, inv = np.unique(key, return_inverse=True)
        pix = ukey % self._density.size
        finite = np.isfinite(svy) & np.isfinite(svx)
        nf = np.bincount(inv, weights=finite.astype(np.float64), minlength=ukey.size)
        pvy = np.bincount(inv, weights=np.where(finite, svy, 0.0), minlength=ukey.size)
        pvx = np.bincount(inv, weights=np.where(finite, svx, 0.0), minlength=ukey.size)
        has_v = nf > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            pvy, pvx = pvy / nf, pvx / nf
        speed = np.hypot(pvy, pvx)
        size = self._density.size
        self._density += np.bincount(pix, minlength=size)
        pv, sp = pix[has_v], speed[has_v]
        self._nvel += np.bincount(pv, minlength=size)
        self._speed += np.bincount(pv, weights=sp, minlength=size)
        self._axial += np.bincount(pv, weights=np.sign(pvy[has_v]) * sp, minlength=size)
        moving = sp > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            uy = np.where(moving, pvy[has_v] / sp, 0.0)
            ux = np.where(moving, pvx[has_v] / sp, 0.0)
        self._uy += np.bincount(pv, weights=uy, minlength=size)
        self._ux += np.bincount(pv, weights=ux, minlength=size)

    # -- results ----------------------------------------------------------------
    def _img(self, flat) -> np.ndarray:
        return flat.reshape(self.sr_shape).astype(np.float32)

    def density(self) -> np.ndarray:
        """float32 ``(H*u, W*u)`` number of track passages per SR pixel."""
        return self._img(self._density)

    def count(self) -> np.ndarray:
        """float32 ``(H*u, W*u)`` number of localisations per SR pixel."""
        return self._img(self._count)

    def _scale(self, pixel_size_um, frame_rate_hz) -> tuple[float, str]:
        if (pixel_size_um is None) != (frame_rate_hz is None):
            raise CycleULMError(
                "give both pixel_size_um and frame_rate_hz for mm/s, or neither for px/frame."
            )
        if pixel_size_um is None:
            return 1.0, "px/frame"
        return float(px_per_frame_to_mm_s(1.0, pixel_size_um, frame_rate_hz)), "mm/s"

    def velocity_magnitude(self, pixel_size_um=None, frame_rate_hz=None) -> np.ndarray:
        """Mean speed per SR pixel (NaN where no track passed).

        Parameters
        ----------
        pixel_size_um, frame_rate_hz : float, optional
            Original pixel size (um) and frame rate (Hz).  With both, the map is
            in mm/s; with neither, in original pixels per frame.
        """
        scale, _ = self._scale(pixel_size_um, frame_rate_hz)
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.where(self._nvel > 0, self._speed / self._nvel, np.nan) * scale
        return self._img(v)

    def axial_velocity(self, pixel_size_um=None, frame_rate_hz=None) -> np.ndarray:
        """Mean speed signed by the axial direction (+ towards larger y); NaN where empty."""
        scale, _ = self._scale(pixel_size_um, frame_rate_hz)
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.where(self._nvel > 0, self._axial / self._nvel, np.nan) * scale
        return self._img(v)

    def velocity_direction(self) -> np.ndarray:
        """Mean direction ``atan2(sum uy, sum ux)`` of unit velocities, radians; NaN where empty."""
        d = np.where(self._nvel > 0, np.arctan2(self._uy, self._ux), np.nan)
        return self._img(d)

    def result(self, pixel_size_um=None, frame_rate_hz=None) -> SRMaps:
        """All maps; velocities in mm/s when both physical sizes are given."""
        _, unit = self._scale(pixel_size_um, frame_rate_hz)
        return SRMaps(
            density=self.density(),
            count=self.count(),
            velocity=self.velocity_magnitude(pixel_size_um, frame_rate_hz),
            axial_velocity=self.axial_velocity(pixel_size_um, frame_rate_hz),
            direction=self.velocity_direction(),
            velocity_unit=unit,
            upsampling=self.upsampling,
            pixel_size_um=None if pixel_size_um is None else float(pixel_size_um) / self.upsampling,
        )


def _finite_difference(new, frame, y, x):
    """Per-row velocity from neighbouring points of the same track (NaN if alone)."""
    n = y.size
    nxt = np.append(~new[1:], False)
    prv = ~new
    ia = np.where(prv, np.arange(n) - 1, np.arange(n))
    ib = np.where(nxt, np.arange(n) + 1, np.arange(n))
    dt = frame[ib] - frame[ia]
    with np.errstate(invalid="ignore", divide="ignore"):
        vy = np.where(dt > 0, (y[ib] - y[ia]) / dt, np.nan)
        vx = np.where(dt > 0, (x[ib] - x[ia]) / dt, np.nan)
    return vy, vx


def render_density(tracks, shape, upsampling: int = 4) -> np.ndarray:
    """Track-passage density map ``(H*u, W*u)`` (see :class:`SRRenderer`)."""
    r = SRRenderer(shape, upsampling)
    r.add_tracks(tracks)
    return r.density()


def render_localisations(localisations, shape, upsampling: int = 4) -> np.ndarray:
    """Localisation count map ``(H*u, W*u)`` (nearest SR pixel)."""
    r = SRRenderer(shape, upsampling)
    r.add_localisations(localisations)
    return r.count()


def render_velocity(
    tracks, shape, upsampling: int = 4, pixel_size_um=None, frame_rate_hz=None
) -> np.ndarray:
    """Mean-speed map ``(H*u, W*u)``: px/frame, or mm/s with pixel size and frame rate."""
    r = SRRenderer(shape, upsampling)
    r.add_tracks(tracks)
    return r.velocity_magnitude(pixel_size_um, frame_rate_hz)


class PowerDopplerAccumulator:
    """Running power Doppler image: mean of ``|frames|**2`` over time.

    ``add`` blocks of frames ``(T, H, W)`` (real or complex IQ); ``result()``
    gives the float32 ``(H, W)`` mean over all frames added.
    """

    def __init__(self) -> None:
        self._sum: np.ndarray | None = None
        self.n_frames = 0

    def add(self, frames) -> None:
        arr = np.asarray(frames)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise CycleULMError(f"frames must be numeric, got dtype {arr.dtype}.")
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.size == 0:
            raise CycleULMError(
                f"frames must be a non-empty (frames, height, width) stack, got shape {arr.shape}."
            )
        power = (arr.real.astype(np.float64) ** 2).sum(0)
        if np.iscomplexobj(arr):
            power += (arr.imag.astype(np.float64) ** 2).sum(0)
        if not np.isfinite(power).all():
            raise CycleULMError("frames contain NaN or infinite values.")
        if self._sum is None:
            self._sum = power
        elif self._sum.shape != power.shape:
            raise CycleULMError(
                f"frame size changed from {self._sum.shape} to {power.shape} between blocks."
            )
        else:
            self._sum += power
        self.n_frames += arr.shape[0]

    def merge(self, other: "PowerDopplerAccumulator") -> "PowerDopplerAccumulator":
        """Add another accumulator's frames to this one (in place); returns self.

        ``a.merge(b)`` equals one accumulator given the frames of both.
        """
        if not isinstance(other, PowerDopplerAccumulator):
            raise CycleULMError(
                f"can only merge another PowerDopplerAccumulator, got {type(other).__name__}."
            )
        if other._sum is None:
            return self
        if self._sum is None:
            self._sum = other._sum.copy()
        elif self._sum.shape != other._sum.shape:
            raise CycleULMError(
                f"cannot merge power Doppler images of {self._sum.shape} and {other._sum.shape} pixels."
            )
        else:
            self._sum += other._sum
        self.n_frames += other.n_frames
        return self

    def result(self) -> np.ndarray:
        """Mean of ``|frames|**2`` over every frame added, float32 ``(H, W)``."""
        if self._sum is None:
            raise CycleULMError("no frames were added to the power Doppler accumulator.")
        return (self._sum / self.n_frames).astype(np.float32)


def power_doppler(frames) -> np.ndarray:
    """Power Doppler image: float32 ``(H, W)`` mean over time of ``|frames|**2``.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` or ``(H, W)`` stack, real or complex (IQ).
    """
    acc = PowerDopplerAccumulator()
    acc.add(frames)
    return acc.result()


def colormap_from(cmap):
    """A matplotlib Colormap from a name, a Colormap, or an (N, 3|4) array of RGB(A) in [0, 1].

    The one place names and colour lists become colormaps (PNG previews and exports).
    """
    import matplotlib
    from matplotlib.colors import Colormap, ListedColormap

    if isinstance(cmap, Colormap):
        return cmap.copy()
    if isinstance(cmap, str):
        try:
            return matplotlib.colormaps[cmap].copy()
        except KeyError:
            raise CycleULMError(
                f"unknown colormap {cmap!r}; use a matplotlib name such as 'hot' or 'turbo'."
            ) from None
    colors = np.asarray(cmap, dtype=float)
    if colors.ndim != 2 or colors.shape[1] not in (3, 4) or len(colors) < 2:
        raise CycleULMError("a colormap given as colours must be an (N, 3) or (N, 4) array, N >= 2.")
    return ListedColormap(np.clip(colors, 0, 1))


def to_png(
    image,
    path: str | os.PathLike,
    cmap="hot",
    gamma: float = 0.5,
    vmax_percentile: float = 99.5,
    scale_bar_mm: float | None = None,
    pixel_size_um: float | None = None,
) -> None:
    """Write a colour-mapped PNG preview of a 2-D map (one image pixel per array pixel).

    Parameters
    ----------
    image : array_like
        2-D map; NaN pixels are drawn black (the colormap's "bad" colour).
    path : str or PathLike
        Destination ``.png``; written atomically.
    cmap : str, matplotlib Colormap or (N, 3|4) array
        A matplotlib colormap name (default ``"hot"``), a Colormap, or colours from low to high.
    gamma : float
        Display exponent applied after normalisation (default 0.5, which
        compresses the range of density maps; use 1 for velocity maps).
    vmax_percentile : float
        Percentile of the finite non-zero values mapped to the top of the
        colormap (default 99.5).  Maps with negative values are shown
        symmetrically around 0 using the percentile of ``|image|``.
    scale_bar_mm : float, optional
        Length of a white scale bar in mm, drawn bottom right.
    pixel_size_um : float, optional
        Size of one pixel of ``image`` in micrometres (for an SR map,
        ``SRMaps.pixel_size_um``); required with ``scale_bar_mm``.

    Raises
    ------
    CycleULMError
        On a non-2-D image, an unknown colormap, bad numbers, or a scale bar
        without pixel size.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.size == 0:
        raise CycleULMError(f"to_png needs a non-empty 2-D image, got shape {img.shape}.")
    _positive("gamma", gamma)
    if not (0 < vmax_percentile <= 100):
        raise CycleULMError(f"vmax_percentile must be in (0, 100], got {vmax_percentile!r}.")
    colormap = colormap_from(cmap)
    if scale_bar_mm is not None:
        _positive("scale_bar_mm", scale_bar_mm)
        if pixel_size_um is None:
            raise CycleULMError("scale_bar_mm needs pixel_size_um (size of one image pixel).")
        _positive("pixel_size_um", pixel_size_um)

    finite = np.isfinite(img)
    signed = bool(finite.any() and img[finite].min() < 0)
    vals = np.abs(img[finite])
    vals = vals[vals > 0]
    vmax = float(np.percentile(vals, vmax_percentile)) if vals.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    with np.errstate(invalid="ignore"):
        if signed:
            norm = np.clip(img / vmax, -1, 1)
            shown = 0.5 + 0.5 * np.sign(norm) * np.abs(norm) ** gamma
        else:
            shown = np.clip(img / vmax, 0, 1) ** gamma
    write_normalised_png(shown, path, colormap, scale_bar_mm, pixel_size_um)


#: Longest scale bar, as a fraction of the image width (the rest is its margins).
SCALE_BAR_MAX_FRACTION = 0.9


def write_normalised_png(shown, path: str | os.PathLike, colormap, scale_bar_mm: float | None = None,
                         pixel_size_um: float | None = None) -> None:
    """Draw an image already mapped to [0, 1] as a PNG, one PNG pixel per image pixel.

    The one drawing routine behind :func:`to_png` and
    :func:`napari_cycleulm.export.write_png`, so every PNG the package writes
    has the same layout.

    Parameters
    ----------
    shown : (H, W) array
        Display values in [0, 1]; NaN pixels are drawn black.
    path : str or PathLike
        Destination ``.png``; written atomically.
    colormap : matplotlib.colors.Colormap
    scale_bar_mm : float, optional
        Length of a white scale bar in mm, drawn bottom right (needs ``pixel_size_um``);
        left out when it would not fit in the image.
    pixel_size_um : float, optional
        Size of one image pixel, micrometres.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    shown = np.ma.masked_invalid(np.asarray(shown, dtype=np.float64))
    colormap = colormap.with_extremes(bad="black")
    h, w = shown.shape
    dpi = 100
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(shown, cmap=colormap, vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    length = None if scale_bar_mm is None else scale_bar_mm * 1000.0 / pixel_size_um
    if length is not None and not (0 < length <= SCALE_BAR_MAX_FRACTION * w):
        length = None  # a bar that does not fit the image is left out (export refuses it earlier)
    if length is not None:
        thick = max(1.0, 0.015 * h)
        margin = 0.04 * w
        x0 = w - margin - length - 0.5
        y0 = h - margin - thick - 0.5
        ax.add_patch(Rectangle((x0, y0), length, thick, color="white", lw=0))
        ax.text(
            x0 + length / 2, y0 - thick, f"{scale_bar_mm:g} mm", color="white",
            ha="center", va="bottom", fontsize=max(6, min(14, 0.04 * h)),
        )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
