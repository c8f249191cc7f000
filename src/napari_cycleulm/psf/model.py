"""The PSF model: a 2-D Gaussian with its measured bubble patch, JSON I/O.

A :class:`PSF` holds a 2-D Gaussian model (``sigma_y_px``, ``sigma_x_px``,
``theta_rad``) fitted to isolated microbubbles, the measured mean bubble
patch, and its kernel.  The MB-only domain of CycleULM uses the same PSF
shrunk isotropically by 0.5 (:meth:`PSF.shrink`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import write_text_atomic
from ..errors import CycleULMError

__all__ = [
    "FWHM_PER_SIGMA",
    "MAX_SIGMA_PX",
    "MIN_SIGMA_PX",
    "PSF",
    "PSF_JSON_VERSION",
    "check_psf_extent",
    "gaussian_kernel",
]

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
