"""Synthetic MB-only training data (CycleULM paper, section 3.3).

MBL-Net and MBT-Net are trained only on synthetic *MB-only* patches: a random
number of microbubbles (MBs) at uniformly random sub-pixel positions with
uniformly random intensities, each rendered with the MB-only PSF (the
measured CEUS PSF shrunk by 0.5, :meth:`napari_cycleulm.psf.PSF.mbonly`).
Sequences add motion: each MB gets a random initial speed and direction, moves
by ``x_{t+1} = x_t + v_t`` and its speed and direction are perturbed by
Gaussian noise every frame.

Bubbles are rendered analytically: the Gaussian is evaluated at the pixel
centres for every bubble (``(0, 0)`` is the centre of the top-left pixel), so
the image is exactly the sum of the bubbles' Gaussians, with no kernel
interpolation error.

The paper's numeric ranges were lost from the text we have; the defaults of
:class:`SyntheticConfig` are chosen as documented there and are meant to be
adapted to a dataset (the paper notes the networks are robust to moderate
changes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CycleULMError
from ..psf import PSF
from ..io.tables import Localisations

#: Gaussian tails beyond this many sigmas are not rendered in sequences (< 3.4e-4 of the peak).
_TAIL_SIGMAS = 4.0


@dataclass
class SyntheticConfig:
    """Random ranges for synthetic MB-only data.

    Every range is sampled uniformly unless stated otherwise.

    Attributes
    ----------
    n_min : int
        Fewest MBs per patch (default 0: empty patches teach the network to
        output nothing on empty background).
    n_max : int or None
        Most MBs per patch.  Default (None) scales with the patch area as
        ``round(size**2 / 80)``: 20 for 40x40 patches, 80 for 80x80.  At the
        maximum the mean MB spacing is about 9 px, 2-3 CEUS FWHM, so patches go
        from single isolated MBs to the overlapping high-concentration regime
        ULM struggles with, while the MB-only PSF (half width) keeps most of
        them separable.
    intensity_range : (float, float)
        MB intensity (peak amplitude).  (0.1, 1.0): data are normalised to a
        maximum of 1 and the paper excludes practically invisible MBs.
    speed_range : (float, float)
        Initial speed magnitude, pixels/frame.  (0, 2): typical blood-flow
        displacements of ULM acquisitions at 100-500 Hz with ~0.1 mm pixels
        and slow capillary to small-vessel flow; raise it for fast data
        (e.g. ULTRA-SR at 50 Hz), with a larger patch.
    direction_range : (float, float)
        Initial direction (radians, counter-clockwise from +x).  (0, 2 pi).
    speed_noise_std : float
        Standard deviation of the per-frame Gaussian change of speed,
        pixels/frame.  0.1: 5% of the top speed, smooth but visibly varying.
    direction_noise_std : float
        Standard deviation of the per-frame change of direction, radians.
        0.1 (~6 degrees): gently curved paths, as in vessels.
    noise_std : float
        Standard deviation of additive Gaussian noise.  0: the MB-only domain
        produced by MB-DT is clean.
    sigma_range_px : (float, float) or ((float, float), (float, float)) or None
        When given, each patch / sequence gets its own PSF: ``sigma_y`` and
        ``sigma_x`` are drawn from this range (one range for both, or one per
        axis) and the rotation from ``theta_range_rad``, so a network trained
        on it generalises over PSF widths.  None: use the given PSF.
    theta_range_rad : (float, float)
        Rotation range used with ``sigma_range_px``.  (-0.2, 0.2) rad (~11
        degrees): ultrasound PSFs are nearly axis-aligned, steering and
        aberration tilt them slightly.
    margin_px : float or None
        Sequences are simulated on a canvas larger by this on every side so
        MBs flow in and out of the patch.  Default: the distance the fastest
        MB can travel in the sequence plus the PSF tail.
    """

    n_min: int = 0
    n_max: int | None = None
    intensity_range: tuple[float, float] = (0.1, 1.0)
    speed_range: tuple[float, float] = (0.0, 2.0)
    direction_range: tuple[float, float] = (0.0, 2.0 * np.pi)
    speed_noise_std: float = 0.1
    direction_noise_std: float = 0.1
    noise_std: float = 0.0
    sigma_range_px: tuple | None = None
    theta_range_rad: tuple[float, float] = (-0.2, 0.2)
    margin_px: float | None = None

    def n_range(self, size: int) -> tuple[int, int]:
        """``(n_min, n_max)`` for a ``size`` x ``size`` patch."""
        n_max = int(round(size * size / 80.0)) if self.n_max is None else int(self.n_max)
        return int(self.n_min), n_max

    def validate(self) -> None:
        """Raise CycleULMError on an inconsistent configuration."""

        def rng_ok(name, r, lo=-np.inf):
            try:
                a, b = float(r[0]), float(r[1])
            except (TypeError, ValueError, IndexError):
                raise CycleULMError(f"{name} must be a (min, max) pair, got {r!r}.") from None
            if not (np.isfinite(a) and np.isfinite(b)) or a > b or a < lo:
                raise CycleULMError(f"{name} must be a finite (min, max) with min <= max, got {r!r}.")

        if self.n_min < 0 or (self.n_max is not None and self.n_max < self.n_min):
            raise CycleULMError(
                f"need 0 <= n_min <= n_max, got n_min={self.n_min}, n_max={self.n_max}."
            )
        rng_ok("intensity_range", self.intensity_range, 0.0)
        rng_ok("speed_range", self.speed_range, 0.0)
        rng_ok("direction_range", self.direction_range)
        rng_ok("theta_range_rad", self.theta_range_rad)
        for name in ("speed_noise_std", "direction_noise_std", "noise_std"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise CycleULMError(f"{name} must be >= 0, got {v!r}.")
        if self.sigma_range_px is not None:
            for r in self._sigma_ranges():
                rng_ok("sigma_range_px", r, 0.0)
                if r[0] <= 0:
                    raise CycleULMError(f"sigma_range_px must be positive, got {self.sigma_range_px!r}.")
        if self.margin_px is not None and not (np.isfinite(self.margin_px) and self.margin_px >= 0):
            raise CycleULMError(f"margin_px must be >= 0, got {self.margin_px!r}.")

    def _sigma_ranges(self):
        r = self.sigma_range_px
        if np.ndim(r) == 2:
            return (tuple(r[0]), tuple(r[1]))
        return (tuple(r), tuple(r))


@dataclass
class SyntheticPatches:
    """A batch of synthetic MB-only patches with MBL-Net targets.

    Attributes
    ----------
    images : numpy.ndarray
        ``(n, size, size)`` float32.
    positions : Localisations
        One row per MB: ``frame`` = patch index, ``y, x`` (pixels), ``intensity``.
    presence : numpy.ndarray
        ``(n, size, size)`` float32, 1 on the pixel containing each MB centre.
    targets : numpy.ndarray
        ``(n, K, 3)`` float32 ``(intensity, y, x)`` per MB, zero-padded to the
        largest count ``K`` in the batch (DECODE-style GMM loss input).
    mask : numpy.ndarray
        ``(n, K)`` bool, True for real MBs in ``targets``.
    psf_params : numpy.ndarray
        ``(n, 3)`` float32 ``(sigma_y, sigma_x, theta)`` used for each patch.
    """

    images: np.ndarray
    positions: Localisations
    presence: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    psf_params: np.ndarray


@dataclass
class SyntheticSequences:
    """A batch of synthetic MB-only sequences with MBT-Net targets.

    Attributes
    ----------
    frames : numpy.ndarray
        ``(n, T, size, size)`` float32.
    positions : Localisations
        MBs inside the patch: ``frame`` (t), ``y, x``, ``intensity``,
        ``sequence``, ``track_id`` (unique in the batch), ``vy, vx``
        (pixels/frame; the displacement to the next frame).
    trajectory : numpy.ndarray
        ``(n, size*up, size*up)`` float32, 1 on upsampled pixels crossed by the
        straight segments between consecutive MB positions.
    velocity : numpy.ndarray
        ``(n, 2, size*up, size*up)`` float32 ``(vy, vx)`` in original
        pixels/frame on trajectory pixels (mean of the segments crossing a
        pixel), 0 elsewhere.
    psf_params : numpy.ndarray
        ``(n, 3)`` float32 ``(sigma_y, sigma_x, theta)`` per sequence.
    upsampling : int
        Upsampling factor of ``trajectory`` and ``velocity``.  Original
        coordinate ``y`` maps to upsampled ``(y + 0.5) * up - 0.5``.
    """

    frames: np.ndarray
    positions: Localisations
    trajectory: np.ndarray
    velocity: np.ndarray
    psf_params: np.ndarray
    upsampling: int = 4


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _check(n, size, psf, config, rng):
    if int(n) != n or n < 1:
        raise CycleULMError(f"n must be a positive integer, got {n!r}.")
    if int(size) != size or size < 4:
        raise CycleULMError(f"size must be an integer >= 4, got {size!r}.")
    config = SyntheticConfig() if config is None else config
    config.validate()
    if psf is None and config.sigma_range_px is None:
        raise CycleULMError(
            "give a PSF (the MB-only PSF, e.g. PSF.mbonly()) or config.sigma_range_px."
        )
    if psf is not None and not isinstance(psf, PSF):
        raise CycleULMError(f"psf must be a napari_cycleulm.psf.PSF, got {type(psf).__name__}.")
    return int(n), int(size), config, np.random.default_rng(rng)


def _draw_psf_params(n, psf, config, rng) -> np.ndarray:
    out = np.empty((n, 3), np.float64)
    if config.sigma_range_px is None:
        out[:] = (psf.sigma_y_px, psf.sigma_x_px, psf.theta_rad)
    else:
        (ya, yb), (xa, xb) = config._sigma_ranges()
        out[:, 0] = rng.uniform(ya, yb, n)
        out[:, 1] = rng.uniform(xa, xb, n)
        out[:, 2] = rng.uniform(*config.theta_range_rad, n)
    return out


def render_gaussians(
    yx: np.ndarray, intensity: np.ndarray, psf_params: np.ndarray, size: int
) -> np.ndarray:
    """Sum of Gaussians evaluated at pixel centres.

    Parameters
    ----------
    yx : numpy.ndarray
        ``(B, K, 2)`` bubble centres ``(y, x)`` in pixels.
    intensity : numpy.ndarray
        ``(B, K)`` peak amplitudes (0 for padding).
    psf_params : numpy.ndarray
        ``(B, 3)`` ``(sigma_y, sigma_x, theta)`` per image.
    size : int
        Image side.

    Returns
    -------
    numpy.ndarray
        ``(B, size, size)`` float32.
    """
    b, k = intensity.shape
    if k == 0:
        return np.zeros((b, size, size), np.float32)
    grid = np.arange(size, dtype=np.float32)
    yx = yx.astype(np.float32)
    sy = psf_params[:, 0, None, None].astype(np.float32)
    sx = psf_params[:, 1, None, None].astype(np.float32)
    theta = psf_params[:, 2]
    dy = grid[None, None, :] - yx[..., 0, None]  # (B, K, size)
    dx = grid[None, None, :] - yx[..., 1, None]
    if np.all(theta == 0):
        # Axis-aligned: separable, an outer product per bubble.
        gy = np.exp(-0.5 * (dy / sy) ** 2) * intensity[..., None].astype(np.float32)
        gx = np.exp(-0.5 * (dx / sx) ** 2)
        return np.einsum("bky,bkx->byx", gy, gx, optimize=True).astype(np.float32)
    c = np.cos(theta).astype(np.float32)[:, None, None, None]
    s = np.sin(theta).astype(np.float32)[:, None, None, None]
    DY, DX = dy[..., :, None], dx[..., None, :]  # (B, K, size, 1), (B, K, 1, size)
    u = (c * DX + s * DY) / sx[..., None]
    v = (c * DY - s * DX) / sy[..., None]
    g = np.exp(-0.5 * (u * u + v * v)) * intensity[..., None, None].astype(np.float32)
    return g.sum(axis=1).astype(np.float32)


def to_targets(positions: Localisations, n: int, max_bubbles: int | None = None):
    """Padded per-patch ``(intensity, y, x)`` targets for a GMM (DECODE) loss.

    Parameters
    ----------
    positions : Localisations
        With ``frame`` = patch index and an ``intensity`` column.
    n : int
        Number of patches.
    max_bubbles : int, optional
        Padding length ``K``; default the largest count in a patch (at least 1).

    Returns
    -------
    targets : numpy.ndarray
        ``(n, K, 3)`` float32, zero where padded.
    mask : numpy.ndarray
        ``(n, K)`` bool.
    """
    f = positions["frame"]
    if len(f) and (f.min() < 0 or f.max() >= n):
        raise CycleULMError(f"positions refer to patches outside 0..{n - 1}.")
    counts = np.bincount(f, minlength=n) if len(f) else np.zeros(n, np.int64)
    k = max(int(counts.max(initial=0)), 1) if max_bubbles is None else int(max_bubbles)
    if counts.max(initial=0) > k:
        raise CycleULMError(f"a patch holds {counts.max()} MBs, more than max_bubbles={k}.")
    order = np.argsort(f, kind="stable")
    fs = f[order]
    slot = np.arange(len(fs)) - np.concatenate([[0], np.cumsum(counts)])[fs]
    targets = np.zeros((n, k, 3), np.float32)
    mask = np.zeros((n, k), bool)
    inten = positions["intensity"] if "intensity" in positions else np.ones(len(f))
    targets[fs, slot, 0] = inten[order]
    targets[fs, slot, 1] = positions["y"][order]
    targets[fs, slot, 2] = positions["x"][order]
    mask[fs, slot] = True
    return targets, mask


def presence_map(positions: Localisations, n: int, size: int) -> np.ndarray:
    """``(n, size, size)`` float32 map, 1 on the pixel holding each MB centre."""
    pres = np.zeros((n, size, size), np.float32)
    iy = np.clip(np.floor(positions["y"] + 0.5).astype(np.int64), 0, size - 1)
    ix = np.clip(np.floor(positions["x"] + 0.5).astype(np.int64), 0, size - 1)
    pres[positions["frame"], iy, ix] = 1.0
    return pres


# ---------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------


def synthetic_patches(
    n: int,
    size: int = 40,
    psf: PSF | None = None,
    config: SyntheticConfig | None = None,
    rng: np.random.Generator | int | None = None,
) -> SyntheticPatches:
    """Random MB-only patches with MBL-Net targets (paper 3.3, "MB generation").

    Parameters
    ----------
    n : int
        Number of patches.
    size : int
        Patch side in pixels (paper: 40).
    psf : PSF, optional
        The PSF to render with: the MB-only PSF (``estimate.psf.mbonly()``).
        Not needed when ``config.sigma_range_px`` is set.
    config : SyntheticConfig, optional
        Random ranges; default ``SyntheticConfig()``.
    rng : numpy.random.Generator or int, optional
        Random generator or seed; equal seeds give equal batches.

    Returns
    -------
    SyntheticPatches

    Raises
    ------
    CycleULMError
        On bad arguments, or without a PSF and ``sigma_range_px``.
    """
    n, size, config, rng = _check(n, size, psf, config, rng)
    n_lo, n_hi = config.n_range(size)
    counts = rng.integers(n_lo, n_hi + 1, size=n)
    k = int(counts.max(initial=0))
    valid = np.arange(k)[None, :] < counts[:, None]
    # Centres uniform over the patch area: pixel centres 0..size-1, edges at -0.5, size-0.5.
    yx = rng.uniform(-0.5, size - 0.5, size=(n, k, 2))
    inten = rng.uniform(*config.intensity_range, size=(n, k)) * valid
    params = _draw_psf_params(n, psf, config, rng)
    images = render_gaussians(yx, inten, params, size)
    if config.noise_std > 0:
        images += rng.normal(0.0, config.noise_std, images.shape).astype(np.float32)
    bi, ki = np.nonzero(valid)
    positions = Localisations(
        {"frame": bi, "y": yx[bi, ki, 0], "x": yx[bi, ki, 1], "intensity": inten[bi, ki]}
    )
    targets, mask = to_targets(positions, n, max(k, 1))
    return SyntheticPatches(
        images=images,
        positions=positions,
        presence=presence_map(positions, n, size),
        targets=targets,
        mask=mask,
        psf_params=params.astype(np.float32),
    )


# ---------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------


def _rasterise(seg_a, seg_b, seg_v, seg_seq, n, size, up):
    """Trajectory and mean-velocity maps from segments (original pixel coords)."""
    hi = size * up
    traj = np.zeros((n, hi, hi), np.float32)
    vel = np.zeros((n, 2, hi, hi), np.float32)
    if len(seg_a) == 0:
        return traj, vel
    a = (seg_a + 0.5) * up - 0.5
    b = (seg_b + 0.5) * up - 0.5
    length = np.hypot(*(b - a).T)
    # Four samples per upsampled pixel along every segment hit each pixel it crosses.
    m = int(np.ceil(length.max() * 4)) + 1
    s = np.linspace(0.0, 1.0, m)
    pts = a[:, None, :] + (b - a)[:, None, :] * s[None, :, None]  # (S, m, 2)
    iy = np.floor(pts[..., 0] + 0.5).astype(np.int64)
    ix = np.floor(pts[..., 1] + 0.5).astype(np.int64)
    inside = (iy >= 0) & (iy < hi) & (ix >= 0) & (ix < hi)
    seg_id = np.broadcast_to(np.arange(len(a))[:, None], iy.shape)
    pix = (seg_seq[:, None] * hi + iy) * hi + ix
    key = seg_id[inside] * (n * hi * hi) + pix[inside]
    key = np.unique(key)  # one vote per segment and pixel
    sid, p = np.divmod(key, n * hi * hi)
    count = np.bincount(p, minlength=n * hi * hi)
    vy = np.bincount(p, weights=seg_v[sid, 0], minlength=n * hi * hi)
    vx = np.bincount(p, weights=seg_v[sid, 1], minlength=n * hi * hi)
    hit = count > 0
    tr = traj.reshape(-1)
    tr[hit] = 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        vel[:, 0] = np.where(hit, vy / np.maximum(count, 1), 0).reshape(n, hi, hi)
        vel[:, 1] = np.where(hit, vx / np.maximum(count, 1), 0).reshape(n, hi, hi)
    return traj, vel


def synthetic_sequences(
    n: int,
    n_frames: int = 8,
    size: int = 40,
    psf: PSF | None = None,
    config: SyntheticConfig | None = None,
    rng: np.random.Generator | int | None = None,
    upsampling: int = 4,
) -> SyntheticSequences:
    """Random MB-only sequences with MBT-Net targets (paper 3.3, "MB motion generation").

    Each MB starts at a uniform position on a canvas ``margin`` px larger
    than the patch on every side (so MBs flow in and out), with speed from
    ``speed_range`` and direction from ``direction_range``; then, per frame,
    ``p_{t+1} = p_t + v_t`` and ``speed += N(0, speed_noise_std)`` (kept
    non-negative), ``direction += N(0, direction_noise_std)``.  The MB count
    on the canvas is the patch count (uniform in ``n_range``) scaled by the
    canvas-to-patch area ratio, so the patch density matches
    :func:`synthetic_patches`.  Intensities are constant along a track.

    Parameters
    ----------
    n : int
        Number of sequences.
    n_frames : int
        Frames per sequence ``T``.
    size : int
        Patch side (pixels).
    psf, config, rng
        As in :func:`synthetic_patches`.
    upsampling : int
        Resolution factor of the trajectory and velocity maps (paper: 4).

    Returns
    -------
    SyntheticSequences
    """
    n, size, config, rng = _check(n, size, psf, config, rng)
    if int(n_frames) != n_frames or n_frames < 1:
        raise CycleULMError(f"n_frames must be a positive integer, got {n_frames!r}.")
    if int(upsampling) != upsampling or upsampling < 1:
        raise CycleULMError(f"upsampling must be a positive integer, got {upsampling!r}.")
    t_n, up = int(n_frames), int(upsampling)
    params = _draw_psf_params(n, psf, config, rng)
    smax = float(params[:, :2].max())
    if config.margin_px is None:
        drift = (config.speed_range[1] + 3 * config.speed_noise_std * np.sqrt(t_n)) * (t_n - 1)
        margin = float(np.ceil(drift + _TAIL_SIGMAS * smax + 1))
    else:
        margin = float(config.margin_px)
    lo, hi_ = -0.5 - margin, size - 0.5 + margin
    area_ratio = ((hi_ - lo) / size) ** 2
    n_lo, n_hi = config.n_range(size)
    counts = np.round(rng.integers(n_lo, n_hi + 1, size=n) * area_ratio).astype(np.int64)
    k = int(counts.max(initial=0))
    valid = np.arange(k)[None, :] < counts[:, None]

    p = np.empty((n, k, t_n, 2))
    v = np.empty((n, k, t_n, 2))
    p[:, :, 0] = rng.uniform(lo, hi_, size=(n, k, 2))
    speed = rng.uniform(*config.speed_range, size=(n, k))
    angle = rng.uniform(*config.direction_range, size=(n, k))
    inten = rng.uniform(*config.intensity_range, size=(n, k)) * valid
    for t in range(t_n):
        v[:, :, t, 0] = speed * np.sin(angle)
        v[:, :, t, 1] = speed * np.cos(angle)
        if t + 1 < t_n:
            p[:, :, t + 1] = p[:, :, t] + v[:, :, t]
        speed = np.abs(speed + rng.normal(0.0, config.speed_noise_std, size=(n, k)))
        angle = angle + rng.normal(0.0, config.direction_noise_std, size=(n, k))

    # Render only MBs whose PSF reaches the patch, compacted per image.
    reach = _TAIL_SIGMAS * params[:, :2].max(axis=1)[:, None, None]  # (n,1,1)
    near = (
        valid[:, :, None]
        & (p[..., 0] > -0.5 - reach)
        & (p[..., 0] < size - 0.5 + reach)
        & (p[..., 1] > -0.5 - reach)
        & (p[..., 1] < size - 0.5 + reach)
    )  # (n, k, T)
    near_bt = near.transpose(0, 2, 1).reshape(n * t_n, k)
    kk = int(near_bt.sum(axis=1).max(initial=0))
    yx_c = np.zeros((n * t_n, max(kk, 1), 2))
    in_c = np.zeros((n * t_n, max(kk, 1)))
    if kk:
        order = np.argsort(~near_bt, axis=1, kind="stable")[:, :kk]
        rows = np.arange(n * t_n)[:, None]
        p_bt = p.transpose(0, 2, 1, 3).reshape(n * t_n, k, 2)
        i_bt = np.repeat(inten[:, None, :], t_n, axis=1).reshape(n * t_n, k)
        yx_c = p_bt[rows, order]
        in_c = np.where(near_bt[rows, order], i_bt[rows, order], 0.0)
    frames = render_gaussians(yx_c, in_c, np.repeat(params, t_n, axis=0), size)
    frames = frames.reshape(n, t_n, size, size)
    if config.noise_std > 0:
        frames += rng.normal(0.0, config.noise_std, frames.shape).astype(np.float32)

    inside = (
        valid[:, :, None]
        & (p[..., 0] >= -0.5)
        & (p[..., 0] < size - 0.5)
        & (p[..., 1] >= -0.5)
        & (p[..., 1] < size - 0.5)
    )
    si, ki, ti = np.nonzero(inside)
    positions = Localisations(
        {
            "frame": ti,
            "y": p[si, ki, ti, 0],
            "x": p[si, ki, ti, 1],
            "intensity": inten[si, ki],
            "sequence": si,
            "track_id": si * max(k, 1) + ki,
            "vy": v[si, ki, ti, 0],
            "vx": v[si, ki, ti, 1],
        }
    ).sort("sequence", "frame", "track_id")

    # Segments t -> t+1 (or the points themselves for one frame) of MBs near the patch.
    if t_n > 1:
        seg_ok = valid[:, :, None] & (near[..., :-1] | near[..., 1:])
        si, ki, ti = np.nonzero(seg_ok)
        seg_a, seg_b = p[si, ki, ti], p[si, ki, ti + 1]
    else:
        si, ki, ti = np.nonzero(inside)
        seg_a = seg_b = p[si, ki, ti]
    traj, vel = _rasterise(seg_a, seg_b, v[si, ki, ti], si, n, size, up)
    return SyntheticSequences(
        frames=frames,
        positions=positions,
        trajectory=traj,
        velocity=vel,
        psf_params=params.astype(np.float32),
        upsampling=up,
    )
