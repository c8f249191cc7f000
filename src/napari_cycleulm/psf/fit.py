"""Point spread function (PSF): model, estimation from bubbles, JSON I/O.

A :class:`PSF` holds a 2-D Gaussian model (``sigma_y_px``, ``sigma_x_px``,
``theta_rad``) fitted to isolated microbubbles, the measured mean bubble
patch, and its kernel.  The MB-only domain of CycleULM uses the same PSF
shrunk isotropically by 0.5 (:meth:`PSF.shrink`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize

from .._atomic import write_text_atomic
from ..arrays import as_frames, robust_sigma
from ..errors import CycleULMError
from ..io.tables import PointTable

#: FWHM = FWHM_PER_SIGMA * sigma for a Gaussian (2 sqrt(2 ln 2) = 2.3548...); the
#: one definition, imported by the simulator and the localisers.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def gaussian_kernel(
    sigma_y_px: float,
    sigma_x_px: float,
    theta_rad: float = 0.0,
    size: tuple[int, int] | None = None,
    center: tuple[float, float] | None = None,
) -> np.ndarray:
    """Peak-normalised 2-D Gaussian kernel.

    Parameters
    ----------
    sigma_y_px, sigma_x_px : float
        Standard deviations along y (axial) and x (lateral), pixels, before rotation.
    theta_rad : float
        Rotation of the ellipse (radians, counter-clockwise from the x axis).
    size : (int, int), optional
        Kernel shape; default is odd and covers +-4 sigma.
    center : (float, float), optional
        Centre ``(y, x)`` in pixels; default is the central pixel.

    Returns
    -------
    numpy.ndarray
        float32 kernel with maximum 1 at ``center``.
    """
    if size is None:
        r = int(np.ceil(4.0 * max(sigma_y_px, sigma_x_px, 0.5)))
        size = (2 * r + 1, 2 * r + 1)
    h, w = size
    if center is None:
        center = ((h - 1) / 2.0, (w - 1) / 2.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - center[0], xx - center[1]
    c, s = np.cos(theta_rad), np.sin(theta_rad)
    u = c * dx + s * dy  # along the rotated x axis
    v = -s * dx + c * dy  # along the rotated y axis
    g = np.exp(-0.5 * ((u / sigma_x_px) ** 2 + (v / sigma_y_px) ** 2))
    return g.astype(np.float32)


#: Version of the PSF JSON layout written by :meth:`PSF.to_json`.
PSF_JSON_VERSION = 1

#: Narrowest PSF (sigma, pixels) a CEUS stack can be localised with: below it a
#: bubble covers less than a pixel and the matched filters find nothing.
MIN_SIGMA_PX = 0.3

#: Widest PSF sigma (pixels) a PSF file may hold; anything above is a unit error.
MAX_SIGMA_PX = 1000.0


def check_psf_extent(psf: PSF, frame_shape=None, what: str = "the PSF") -> None:
    """Refuse a PSF that cannot be used on frames of ``frame_shape``.

    Parameters
    ----------
    psf : PSF
        The CEUS PSF.
    frame_shape : (int, int), optional
        ``(H, W)`` of the frames (the last two entries of a stack shape are used).
    what : str
        How to name the PSF in the message (e.g. the file).

    Raises
    ------
    CycleULMError
        If a sigma is below :data:`MIN_SIGMA_PX` (nothing would be found) or
        the PSF's FWHM is larger than the frames.
    """
    small = min(psf.sigma_y_px, psf.sigma_x_px)
    if small < MIN_SIGMA_PX:
        raise CycleULMError(
            f"{what} has sigma {small:.3g} px (FWHM {small * FWHM_PER_SIGMA:.3g} px), narrower "
            f"than a pixel (minimum sigma {MIN_SIGMA_PX} px): localisation would find nothing; "
            "check the PSF file (sizes in pixels) or re-estimate it with `cycleulm psf`."
        )
    if frame_shape is not None:
        h, w = (int(v) for v in tuple(frame_shape)[-2:])
        if psf.fwhm_y_px > h or psf.fwhm_x_px > w:
            raise CycleULMError(
                f"{what} (FWHM {psf.fwhm_y_px:.3g} x {psf.fwhm_x_px:.3g} px) is larger than the "
                f"frames ({h}x{w} px); check the PSF file (sizes in pixels) or re-estimate it "
                "with `cycleulm psf`."
            )

#: Fewest bubbles an estimate needs, and fewest before it is trusted without a warning.
MIN_BUBBLES = 3
RELIABLE_BUBBLES = 10


def _canonical_axes(sy: float, sx: float, theta: float) -> tuple[float, float, float]:
    """Express an ellipse with ``|theta| <= pi/4`` so ``sigma_y`` is the axis nearest y.

    ``(sy, sx, theta)`` and ``(sx, sy, theta - pi/2)`` describe the same
    Gaussian; choosing the representation with the smallest rotation keeps
    ``sigma_y`` axial and ``sigma_x`` lateral, as the rest of the library assumes.
    """
    theta = (theta + np.pi / 2) % np.pi - np.pi / 2  # period pi
    if theta > np.pi / 4:
        sy, sx, theta = sx, sy, theta - np.pi / 2
    elif theta <= -np.pi / 4:
        sy, sx, theta = sx, sy, theta + np.pi / 2
    return float(sy), float(sx), float(theta)


@dataclass
class PSF:
    """A fitted point spread function.

    Attributes
    ----------
    sigma_y_px, sigma_x_px : float
        Gaussian standard deviations (pixels) along y (axial) and x (lateral).
    theta_rad : float
        Rotation of the Gaussian ellipse (radians).
    pixel_size_um : float or None
        Pixel size in micrometres (square pixels), when known.
    measured : numpy.ndarray or None
        Mean of the re-centred bubble patches, peak-normalised.
    n_bubbles : int
        Number of bubbles averaged (0 for a synthetic PSF).
    residual : float
        RMS residual of the Gaussian fit relative to the peak (0-1).
    mbonly_factor : float
        Scale of the MB-only domain PSF relative to this one (CycleULM: 0.5);
        see :meth:`mbonly`.

    Raises
    ------
    CycleULMError
        If a sigma is not a positive finite number or the pixel size is not positive.
    """

    sigma_y_px: float
    sigma_x_px: float
    theta_rad: float = 0.0
    pixel_size_um: float | None = None
    measured: np.ndarray | None = field(default=None, repr=False)
    n_bubbles: int = 0
    residual: float = float("nan")
    mbonly_factor: float = 0.5

    def __post_init__(self) -> None:
        for name in ("sigma_y_px", "sigma_x_px"):
            v = getattr(self, name)
            if not isinstance(v, (int, float, np.number)) or not np.isfinite(v) or v <= 0:
                raise CycleULMError(f"PSF {name} must be a positive number of pixels, got {v!r}.")
            setattr(self, name, float(v))
        if not np.isfinite(self.theta_rad):
            raise CycleULMError(f"PSF theta_rad must be finite, got {self.theta_rad!r}.")
        self.theta_rad = float(self.theta_rad)
        if self.pixel_size_um is not None:
            if not np.isfinite(self.pixel_size_um) or self.pixel_size_um <= 0:
                raise CycleULMError(
                    f"PSF pixel_size_um must be a positive number (micrometres) or None, "
                    f"got {self.pixel_size_um!r}."
                )
            self.pixel_size_um = float(self.pixel_size_um)
        if not np.isfinite(self.mbonly_factor) or self.mbonly_factor <= 0:
            raise CycleULMError(f"PSF mbonly_factor must be positive, got {self.mbonly_factor!r}.")
        if self.measured is not None:
            self.measured = np.asarray(self.measured, dtype=np.float32)
            if self.measured.ndim != 2:
                raise CycleULMError(
                    f"PSF measured patch must be 2-D, got shape {self.measured.shape}."
                )

    @property
    def fwhm_y_px(self) -> float:
        """Axial FWHM in pixels."""
        return float(FWHM_PER_SIGMA * self.sigma_y_px)

    @property
    def fwhm_x_px(self) -> float:
        """Lateral FWHM in pixels."""
        return float(FWHM_PER_SIGMA * self.sigma_x_px)

    @property
    def fwhm_y_um(self) -> float | None:
        """Axial FWHM in micrometres, or None when the pixel size is unknown."""
        return None if self.pixel_size_um is None else self.fwhm_y_px * self.pixel_size_um

    @property
    def fwhm_x_um(self) -> float | None:
        """Lateral FWHM in micrometres, or None when the pixel size is unknown."""
        return None if self.pixel_size_um is None else self.fwhm_x_px * self.pixel_size_um

    @property
    def kernel(self) -> np.ndarray:
        """Peak-normalised Gaussian model kernel (odd size, +-4 sigma)."""
        return gaussian_kernel(self.sigma_y_px, self.sigma_x_px, self.theta_rad)

    def shrink(self, factor: float = 0.5) -> PSF:
        """The MB-only domain PSF: this Gaussian scaled by ``factor`` in y and x."""
        return PSF(
            sigma_y_px=self.sigma_y_px * factor,
            sigma_x_px=self.sigma_x_px * factor,
            theta_rad=self.theta_rad,
            pixel_size_um=self.pixel_size_um,
            measured=None,
            n_bubbles=self.n_bubbles,
            residual=self.residual,
            mbonly_factor=self.mbonly_factor,
        )

    def mbonly(self) -> PSF:
        """The MB-only domain PSF, ``shrink(mbonly_factor)``."""
        return self.shrink(self.mbonly_factor)

    def with_pixel_size(self, pixel_size_um: float | None) -> PSF:
        """A copy with the pixel size (micrometres) set."""
        d = dict(self.__dict__)
        d["pixel_size_um"] = pixel_size_um
        return PSF(**d)

    # -- JSON ---------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dictionary (see :meth:`to_json` for the keys)."""

        def num(v):
            return None if v is None or not np.isfinite(v) else float(v)

        return {
            "version": PSF_JSON_VERSION,
            "sigma_y_px": self.sigma_y_px,
            "sigma_x_px": self.sigma_x_px,
            "theta_rad": self.theta_rad,
            "fwhm_y_px": self.fwhm_y_px,
            "fwhm_x_px": self.fwhm_x_px,
            "pixel_size_um": num(self.pixel_size_um),
            "fwhm_y_um": num(self.fwhm_y_um),
            "fwhm_x_um": num(self.fwhm_x_um),
            "n_bubbles": int(self.n_bubbles),
            "residual": num(self.residual),
            "mbonly_factor": float(self.mbonly_factor),
            "kernel": np.round(self.kernel.astype(np.float64), 6).tolist(),
            "measured": None
            if self.measured is None
            else np.round(self.measured.astype(np.float64), 6).tolist(),
            "mbonly_kernel": np.round(self.mbonly().kernel.astype(np.float64), 6).tolist(),
        }

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the PSF as JSON, atomically.

        Keys: ``version``, ``sigma_y_px``, ``sigma_x_px``, ``theta_rad``,
        ``fwhm_y_px``, ``fwhm_x_px``, ``pixel_size_um``, ``fwhm_y_um``,
        ``fwhm_x_um`` (null when the pixel size is unknown), ``n_bubbles``,
        ``residual`` (null when unknown), ``mbonly_factor``, ``kernel`` (the
        Gaussian model, nested lists), ``measured`` (mean bubble patch or null)
        and ``mbonly_kernel`` (the kernel shrunk by ``mbonly_factor``).
        """
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, d: dict, source: str = "PSF data") -> PSF:
        """Build a PSF from :meth:`to_dict` output; derived keys are ignored.

        ``sigma_*_px`` may be replaced by ``fwhm_*_px``.

        Raises
        ------
        CycleULMError
            On missing or invalid keys.
        """
        if not isinstance(d, dict):
            raise CycleULMError(f"{source} must be a JSON object, got {type(d).__name__}.")
        version = d.get("version", PSF_JSON_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CycleULMError(f"{source}: 'version' must be a positive integer, got {version!r}.")
        if version > PSF_JSON_VERSION:
            raise CycleULMError(
                f"{source} has PSF format version {version}, newer than this napari-cycleulm "
                f"understands ({PSF_JSON_VERSION}); update the package."
            )

        def number(key, *, required=False, allow_none=True, default=None):
            if key not in d:
                if required:
                    raise CycleULMError(f"{source} lacks the key {key!r}.")
                return default
            v = d[key]
            if v is None and allow_none:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise CycleULMError(f"{source}: {key!r} must be a finite number, got {v!r}.")
            return float(v)

        sig = {}
        for ax in ("y", "x"):
            s = number(f"sigma_{ax}_px", allow_none=False)
            key = f"sigma_{ax}_px"
            if s is None:
                f = number(f"fwhm_{ax}_px", allow_none=False)
                if f is None:
                    raise CycleULMError(
                        f"{source} lacks the key 'sigma_{ax}_px' (or 'fwhm_{ax}_px')."
                    )
                if f <= 0:
                    raise CycleULMError(f"{source}: 'fwhm_{ax}_px' must be positive (pixels), got {f!r}.")
                key = f"fwhm_{ax}_px"
                s = f / FWHM_PER_SIGMA
            if s <= 0:
                raise CycleULMError(f"{source}: 'sigma_{ax}_px' must be positive, got {s!r}.")
            if s > MAX_SIGMA_PX:
                raise CycleULMError(
                    f"{source}: {key!r} is {d[key]!r}, which is absurd for a PSF (sigma over "
                    f"{MAX_SIGMA_PX:g} px); PSF sizes are in pixels: re-estimate it with `cycleulm psf`."
                )
            sig[ax] = s
        pixel = number("pixel_size_um")
        if pixel is not None and pixel <= 0:
            raise CycleULMError(f"{source}: 'pixel_size_um' must be positive or null, got {pixel!r}.")
        n_b = d.get("n_bubbles", 0)
        if isinstance(n_b, bool) or not isinstance(n_b, int) or n_b < 0:
            raise CycleULMError(f"{source}: 'n_bubbles' must be a non-negative integer, got {n_b!r}.")
        residual = number("residual")
        factor = number("mbonly_factor", allow_none=False, default=0.5)
        if factor <= 0:
            raise CycleULMError(f"{source}: 'mbonly_factor' must be positive, got {factor!r}.")
        measured = d.get("measured")
        if measured is not None:
            try:
                measured = np.asarray(measured, dtype=np.float64)
            except (TypeError, ValueError):
                raise CycleULMError(f"{source}: 'measured' must be a 2-D list of numbers or null.") from None
            if measured.ndim != 2 or measured.size == 0 or not np.isfinite(measured).all():
                raise CycleULMError(
                    f"{source}: 'measured' must be a non-empty 2-D list of finite numbers or null."
                )
        return cls(
            sigma_y_px=sig["y"],
            sigma_x_px=sig["x"],
            theta_rad=number("theta_rad", allow_none=False, default=0.0),
            pixel_size_um=pixel,
            measured=measured,
            n_bubbles=n_b,
            residual=float("nan") if residual is None else residual,
            mbonly_factor=factor,
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> PSF:
        """Read a PSF written by :meth:`to_json`.

        Raises
        ------
        CycleULMError
            If the file is missing, is not valid JSON, or has missing or invalid keys.
        """
        path = Path(path)
        if path.is_dir():
            raise CycleULMError(f"PSF file {str(path)!r} is a directory; give the PSF JSON inside it.")
        if not path.is_file():
            raise CycleULMError(f"PSF file {str(path)!r} does not exist.")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise CycleULMError(f"PSF file {str(path)!r} is not valid JSON ({exc}).") from None
        except OSError as exc:
            raise CycleULMError(f"PSF file {str(path)!r} cannot be read ({exc.strerror or exc}).") from None
        return cls.from_dict(d, source=f"PSF file {str(path)!r}")


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


def _screening_radii(frames: np.ndarray, pts: np.ndarray, patch_radius, exclusion_radius):
    """Patch radius, central-lobe radius and peak search radius for :func:`estimate_psf`."""
    sigma_rough = _rough_sigma(frames, pts)
    r = int(patch_radius) if patch_radius is not None else int(np.clip(np.ceil(4 * sigma_rough), 4, 30))
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


def pick_isolated_bubbles(
    frames,
    n: int = 20,
    *,
    min_separation: float | None = None,
    separation_factor: float = 1.0,
    frames_to_search: int | None = None,
    seed: int = 0,
    neighbour_fraction: float = 0.2,
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
    radius = int(np.clip(np.ceil(4 * sigma), 4, 30))
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
    # bubbles: relax it step by step, keeping the first estimate with enough bubbles.
    factors = (1.0,) if "min_separation" in pick_kw else AUTO_SEPARATION_FACTORS
    best, found, last_error = None, 0, None
    for factor in factors:
        pts = pick_isolated_bubbles(frames, n, separation_factor=factor, **pick_kw)
        found = max(found, len(pts))
        if len(pts) < MIN_BUBBLES:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                est = estimate_psf(frames, pts, **kw)
        except CycleULMError as exc:
            last_error = exc
            continue
        if best is None or est.n_used > best.n_used:
            best = est
        if best.n_used >= RELIABLE_BUBBLES:
            break
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
