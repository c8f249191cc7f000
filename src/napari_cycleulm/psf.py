"""Point spread function (PSF): model, estimation from bubbles, JSON I/O.

A :class:`PSF` holds a 2-D Gaussian model (``sigma_y_px``, ``sigma_x_px``,
``theta_rad``) fitted to isolated microbubbles, the measured mean bubble
patch, and its kernel.  The MB-only domain of CycleULM uses the same PSF
shrunk isotropically by 0.5 (:meth:`PSF.shrink`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: FWHM = FWHM_PER_SIGMA * sigma for a Gaussian.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


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
    """

    sigma_y_px: float
    sigma_x_px: float
    theta_rad: float = 0.0
    pixel_size_um: float | None = None
    measured: np.ndarray | None = field(default=None, repr=False)
    n_bubbles: int = 0
    residual: float = float("nan")

    @property
    def fwhm_y_px(self) -> float:
        """Axial FWHM in pixels."""
        return float(FWHM_PER_SIGMA * self.sigma_y_px)

    @property
    def fwhm_x_px(self) -> float:
        """Lateral FWHM in pixels."""
        return float(FWHM_PER_SIGMA * self.sigma_x_px)

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
        )
