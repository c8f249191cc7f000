"""Simulated clutter-filtered CEUS sequences with microbubble ground truth.

:func:`simulate` produces envelope (magnitude) frames that look like the output
of an SVD clutter filter on contrast-enhanced ultrasound IQ data, together with
the true sub-pixel position, track id, amplitude and velocity of every
microbubble (MB) in every frame.  It uses numpy (and ``scipy.fft``) only and is
deterministic for a given ``seed``.

Model (each choice is a simplification chosen for speed, documented here)
-------------------------------------------------------------------------
Organ
    A smooth irregular blob: an ellipse centred near the image centre whose
    radius is perturbed by a few low angular harmonics (``organ_mask``).
Vessel tree
    ``n_roots`` roots start just inside the organ boundary, pointing inwards.
    Each vessel segment is a smooth curve (heading = constant curvature + a
    slow sinusoidal wiggle, sampled every 0.25 px) whose length is 8-20 times
    its diameter.  A segment ends in a bifurcation whose daughter diameters
    follow Murray's law ``d0**3 = d1**3 + d2**3`` with a random asymmetry; the
    larger daughter turns less.  Growth is breadth first and stops at the
    minimum diameter, at the organ boundary, or when a segment budget
    (proportional to the organ area) is used up.  Roots have diameters near
    the top of ``diameter_range_um``.
Flow
    Centreline speed grows with diameter (log-log interpolation from
    ``min(2 * v_lo, v_hi)`` at the smallest to ``v_hi`` at the largest
    diameter).  Each MB sits at a fixed normalised radial position ``r/R`` in
    the vessel cross-section (uniform over the disk; its in-plane component
    gives the lateral offset from the centreline) and moves downstream with the
    laminar (Poiseuille) speed ``v_c * (1 - (r/R)**2)``, floored at ``v_lo`` (a
    cell-free-layer analogue that keeps every speed inside
    ``speed_range_mm_s``).  Speeds are converted to pixels/frame with
    ``pixel_size_um`` and ``frame_rate_hz``.  ``r/R`` random-walks slightly
    (radial dispersion).  At a bifurcation the MB picks a daughter with
    probability proportional to its flow (``d**3``); at a leaf it leaves.
Arrivals and density
    MBs arrive as a Poisson process: 30 % at the roots (weighted by root flow)
    and 70 % anywhere along the tree (weighted by vessel volume ``d**2 L``,
    i.e. uniform MB concentration; this models bubbles crossing the imaging
    plane).  Each MB also has an exponential lifetime (mean
    ``mean_lifetime_frames``; out-of-plane motion, destruction).  The arrival
    rate is ``density / E[residence]`` with the mean residence time measured
    by a vectorised pilot run, and the sequence starts after a burn-in, so the
    mean number of MBs per frame is ``density`` (about 5 is sparse, 100 dense).
Point spread function
    Each MB adds, coherently, a complex IQ contribution
    ``A * g(dy) * exp(i (2 pi dy / lambda_ax + phi)) * L(dx)`` where ``g`` is a
    Gaussian pulse envelope, ``lambda_ax = 0.75 * FWHM_y`` the axial period
    of the demodulated pulse, ``phi`` a random phase per bubble and
    ``L(dx) = sinc(dx / a) * exp(-dx**2 / (2 (1.148 a)**2))`` an apodised
    aperture response whose first side lobes are at about -20 dB.  Widths are
    those requested at mid depth and grow linearly with depth: the lateral
    width by the fraction ``depth_dependence`` from top to bottom, the axial
    width by half as much.  Overlapping MBs interfere; the frame is the
    magnitude of the summed field.  Rendering scatter-adds a +-4 sigma window
    around each MB with ``np.bincount``, a block of frames at a time.
    ``metadata["psf_fwhm_*_px"]`` is the FWHM of one noiseless MB at mid depth,
    measured numerically on a fine grid.  That is ``psf_shape="gauss-sinc"``
    (the default).  Two other forward models exist so that methods can be
    tested on data whose PSF their training never saw: ``"gauss"``, a pure
    2-D Gaussian envelope (no axial modulation, no side lobes, lateral
    ``L(dx) = exp(-dx**2 / (2 a**2))``), and ``"sinc"``, the default's axial
    pulse with a nearly unapodised aperture ``L(dx) = sinc(dx / a) *
    exp(-dx**2 / (2 (3 a)**2))`` whose first side lobes are at about -14 dB
    (rendered over +-5 a).  In every case ``a`` is chosen so that the lateral
    FWHM is the requested one.
Amplitudes
    Log-normal per MB (``amplitude_spread`` = sigma of log amplitude, mean 1)
    times a small log-normal frame-to-frame jitter (``amplitude_jitter``).
Clutter and noise
    Residual tissue clutter is complex white Gaussian noise filtered by the
    mid-depth complex PSF (speckle), evolving as an AR(1) process over frames
    (``c_t = rho c_(t-1) + sqrt(1 - rho**2) e_t``, ``rho =
    clutter_correlation``; done in the Fourier domain).  Its RMS inside the
    organ is ``clutter_db`` relative to the mean MB amplitude and 10 dB lower
    outside.  ``tissue_motion_px`` is the amplitude of a slow rigid sinusoidal
    drift (2 Hz axially, 1 Hz laterally at half amplitude) applied to the
    clutter only (ground-truth MB positions are not moved).  Complex white
    noise at ``noise_db`` relative to the mean MB amplitude is added last.
    That is ``clutter_model="ar1"`` (the default).  ``clutter_model="lowrank"``
    is a second clutter model, slowly evolving residual tissue signal:
    ``clutter_rank`` fixed speckle patterns (the same PSF-filtered complex
    noise, the same organ weighting, the same motion) whose complex weights
    are each a sum of 4 complex sinusoids with random amplitudes, phases and
    frequencies below ``1 / clutter_timescale_frames`` cycles per frame, so
    they drift smoothly over hundreds of frames.  The weights are normalised
    over the sequence so that the clutter RMS inside the organ is
    ``clutter_db`` as for ``"ar1"``; ``clutter_correlation`` is not used.
    Without tissue motion this clutter is low-rank in time: an SVD of the
    envelope stack puts nearly all of it in its first few components.
Output scaling
    Frames are divided by their 99.9th percentile; ground-truth amplitudes are
    in the same normalised units (about the peak brightness of each MB).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft

from .._atomic import atomic_path, write_text_atomic
from .._json import jsonable
from ..intensity import intensity_reference
from ..errors import CycleULMError
from ..psf import FWHM_PER_SIGMA
from ..io.tables import Localisations

__all__ = ["PRESETS", "Simulation", "isolated_positions", "load_simulation", "save_simulation", "simulate"]

#: Named parameter sets for :func:`simulate`.
PRESETS: dict[str, dict] = {
    "sample": dict(n_frames=200, height=128, width=160),
    "benchmark": dict(n_frames=100, height=511, width=659),
}

#: Lateral Gaussian taper width relative to the sinc scale (side lobes ~ -20 dB).
_TAPER = 1.148
#: Centreline sampling step of the vessel tree, pixels.
_DS = 0.25
_ROOT_FRACTION = 0.3
_CLUTTER_OUTSIDE = 10 ** (-10 / 20)


@dataclass
class Simulation:
    """A simulated CEUS sequence and its ground truth.

    Attributes
    ----------
    frames : numpy.ndarray
        ``(T, H, W)`` float32 envelope magnitude, 99.9th percentile ~ 1.
    ground_truth : Localisations
        One row per MB per frame inside the image: ``frame, y, x`` (pixels),
        ``track_id``, ``amplitude`` (frame units), ``vy, vx`` (pixels/frame).
    vessel_mask : numpy.ndarray
        ``(H, W)`` bool, pixels inside vessels.
    organ_mask : numpy.ndarray
        ``(H, W)`` bool, pixels inside the organ.
    metadata : dict
        Simulation parameters and derived values (``pixel_size_um``,
        ``frame_rate_hz``, ``psf_fwhm_y_px``, ``psf_fwhm_x_px``,
        ``psf_sigma_y_px``, ``psf_sigma_x_px``, ``seed``...).
    """

    frames: np.ndarray
    ground_truth: Localisations
    vessel_mask: np.ndarray
    organ_mask: np.ndarray
    metadata: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------
def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CycleULMError(f"{name} must be a whole number, got {value!r}.")
    if value < minimum:
        raise CycleULMError(f"{name} must be at least {minimum}, got {value}.")
    return int(value)


def _check_float(name: str, value, *, positive=False, nonneg=False, lo=None, hi=None,
                 allow_neg_inf=False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise CycleULMError(f"{name} must be a number, got {value!r}.") from None
    if math.isnan(v) or (math.isinf(v) and not (allow_neg_inf and v < 0)):
        raise CycleULMError(f"{name} must be a finite number, got {value!r}.")
    if positive and not v > 0:
        raise CycleULMError(f"{name} must be positive, got {value!r}.")
    if nonneg and v < 0:
        raise CycleULMError(f"{name} must be zero or positive, got {value!r}.")
    if lo is not None and v < lo:
        raise CycleULMError(f"{name} must be >= {lo}, got {value!r}.")
    if hi is not None and v >= hi:
        raise CycleULMError(f"{name} must be < {hi}, got {value!r}.")
    return v


def _check_pair(name: str, value, unit: str, ordered: bool) -> tuple[float, float]:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise CycleULMError(f"{name} must be a pair of numbers ({unit}), got {value!r}.") from None
    a = _check_float(f"{name}[0]", a, positive=True)
    b = _check_float(f"{name}[1]", b, positive=True)
    if ordered and a > b:
        raise CycleULMError(
            f"{name} must be (low, high) with low <= high, got {value!r}; swap the two values."
        )
    return a, b


# ---------------------------------------------------------------------------
# organ and vessel tree
# ---------------------------------------------------------------------------
class _Organ:
    """Perturbed ellipse; ``level < 1`` inside."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.cy = height * (0.52 + rng.uniform(-0.03, 0.03))
        self.cx = width * (0.5 + rng.uniform(-0.03, 0.03))
        self.ay = 0.45 * height
        self.ax = 0.46 * width
        self.k = np.arange(2, 6)
        self.amp = rng.uniform(0.02, 0.07, self.k.size) / np.sqrt(self.k - 1)
        self.phase = rng.uniform(0, 2 * np.pi, self.k.size)

    def level(self, y, x) -> np.ndarray:
        dy = (np.asarray(y, dtype=np.float64) - self.cy) / self.ay
        dx = (np.asarray(x, dtype=np.float64) - self.cx) / self.ax
        r = np.hypot(dy, dx)
        th = np.arctan2(dy, dx)
        rho = 1.0 + np.sum(
            self.amp[:, None] * np.cos(self.k[:, None] * th.reshape(1, -1) + self.phase[:, None]),
            axis=0,
        ).reshape(th.shape)
        return r / rho

    def weight(self, y, x) -> np.ndarray:
        """Smooth clutter weight: 1 inside, ``_CLUTTER_OUTSIDE`` outside."""
        s = 1.0 / (1.0 + np.exp(np.clip((self.level(y, x) - 1.0) / 0.02, -50, 50)))
        return _CLUTTER_OUTSIDE + (1.0 - _CLUTTER_OUTSIDE) * s


@dataclass
class _Tree:
    points: np.ndarray  # (P, 2) y, x centreline samples of all segments
    tangents: np.ndarray  # (P, 2) unit tangents
    start: np.ndarray  # (S,) first sample index of each segment
    npts: np.ndarray  # (S,) number of samples
    length: np.ndarray  # (S,) arc length, pixels
    radius: np.ndarray  # (S,) radius, pixels
    diameter_um: np.ndarray  # (S,)
    vc: np.ndarray  # (S,) centreline speed, pixels/frame
    children: np.ndarray  # (S, 2) child segment indices, -1 if none
    p_first: np.ndarray  # (S,) probability of taking children[:, 0]
    is_root: np.ndarray  # (S,) bool


def _grow_tree(rng, organ: _Organ, height: int, width: int, pixel_size_um: float,
               dmin: float, dmax: float) -> list[dict]:
    organ_area = float(np.pi * organ.ay * organ.ax)
    n_roots = max(2, int(round(2.0 * np.sqrt(organ_area / 5000.0))))
    max_segments = max(20, int(organ_area / 40.0))
    segs: list[dict] = []
    queue: list[tuple] = []  # (start_y, start_x, heading, diameter_um, parent)
    for _ in range(n_roots):
        for _attempt in range(20):
            ang = rng.uniform(-np.pi, np.pi)
            level_target = 0.9
            # Walk the boundary direction to find a start point just inside the organ.
            rr = np.linspace(0.0, 1.2, 241)
            ys = organ.cy + rr * organ.ay * np.sin(ang)
            xs = organ.cx + rr * organ.ax * np.cos(ang)
            inside = organ.level(ys, xs) < level_target
            idx = np.flatnonzero(~inside)
            j = (idx[0] - 1) if idx.size else rr.size - 1
            y0, x0 = ys[j], xs[j]
            if 1 <= y0 <= height - 2 and 1 <= x0 <= width - 2:
                break
        heading = np.arctan2(organ.cy - y0, organ.cx - x0) + rng.uniform(-0.6, 0.6)
        d = dmax * rng.uniform(0.6, 1.0)
        queue.append((y0, x0, heading, max(d, dmin), -1))

    head = 0
    while head < len(queue) and len(segs) < max_segments:
        y0, x0, heading, d, parent = queue[head]
        head += 1
        d_px = d / pixel_size_um
        length = max(4.0, rng.uniform(8.0, 20.0) * d_px)
        n = int(np.ceil(length / _DS)) + 1
        s = np.arange(n) * _DS
        kappa = rng.normal(0.0, 0.5) / length
        wig_p = rng.uniform(20.0, 60.0)
        theta = heading + kappa * s + 0.15 * np.sin(2 * np.pi * s / wig_p + rng.uniform(0, 2 * np.pi))
        theta += heading - theta[0]
        dy = np.sin(theta) * _DS
        dx = np.cos(theta) * _DS
        ys = y0 + np.concatenate([[0.0], np.cumsum(dy[:-1])])
        xs = x0 + np.concatenate([[0.0], np.cumsum(dx[:-1])])
        ok = (organ.level(ys, xs) < 0.97) & (ys >= 0.5) & (ys <= height - 1.5) & (xs >= 0.5) & (
            xs <= width - 1.5)
        bad = np.flatnonzero(~ok[1:])
        truncated = bad.size > 0
        if truncated:
            n = int(bad[0]) + 1
        if n < 3:
            continue
        seg = dict(y=ys[:n], x=xs[:n], theta=theta[:n], d=d, parent=parent, children=[])
        segs.append(seg)
        me = len(segs) - 1
        if parent >= 0:
            segs[parent]["children"].append(me)
        if truncated:
            continue
        alpha = rng.uniform(0.4, 1.0)  # d2 / d1 asymmetry
        d1 = d / (1.0 + alpha**3) ** (1.0 / 3.0)
        d2 = alpha * d1
        side = rng.choice([-1.0, 1.0])
        end_y, end_x, end_th = ys[n - 1], xs[n - 1], theta[n - 1]
        for dc, turn in ((d1, side * rng.uniform(0.15, 0.5)), (d2, -side * rng.uniform(0.5, 1.0))):
            if dc < dmin:
                if dc < 0.7 * dmin:
                    continue
                dc = dmin
            queue.append((end_y, end_x, end_th + turn, dc, me))
    return segs


def _build_tree(segs: list[dict], pixel_size_um: float, dmin: float, dmax: float,
                v_lo_px: float, v_hi_px: float) -> _Tree:
    n = len(segs)
    npts = np.array([len(s["y"]) for s in segs], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(npts)[:-1]]).astype(np.int64)
    points = np.concatenate([np.stack([s["y"], s["x"]], 1) for s in segs], 0)
    theta = np.concatenate([s["theta"] for s in segs])
    tangents = np.stack([np.sin(theta), np.cos(theta)], 1)
    d = np.array([s["d"] for s in segs])
    vc_min = min(2.0 * v_lo_px, v_hi_px)
    if dmax > dmin:
        frac = np.clip((np.log(d) - np.log(dmin)) / (np.log(dmax) - np.log(dmin)), 0, 1)
    else:
        frac = np.ones(n)
    vc = vc_min * (v_hi_px / vc_min) ** frac
    children = np.full((n, 2), -1, dtype=np.int64)
    p_first = np.ones(n)
    for i, s in enumerate(segs):
        ch = s["children"][:2]
        children[i, : len(ch)] = ch
        if len(ch) == 2:
            w = d[ch] ** 3
            p_first[i] = w[0] / w.sum()
    return _Tree(
        points=points, tangents=tangents, start=start, npts=npts,
        length=(npts - 1) * _DS, radius=d / pixel_size_um / 2.0, diameter_um=d, vc=vc,
        children=children, p_first=p_first,
        is_root=np.array([s["parent"] < 0 for s in segs]),
    )


def _vessel_mask(tree: _Tree, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    seg_of = np.repeat(np.arange(len(tree.npts)), tree.npts)
    pts = tree.points[::2]
    rad = np.maximum(tree.radius[seg_of[::2]], 0.5)
    rmax = int(np.ceil(rad.max()))
    off = np.arange(-rmax, rmax + 1)
    iy = np.round(pts[:, 0])[:, None, None].astype(np.int64) + off[None, :, None]
    ix = np.round(pts[:, 1])[:, None, None].astype(np.int64) + off[None, None, :]
    dist2 = (iy - pts[:, 0, None, None]) ** 2 + (ix - pts[:, 1, None, None]) ** 2
    hit = (dist2 <= rad[:, None, None] ** 2) & (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
    iy, ix = np.broadcast_arrays(iy, ix)
    mask[iy[hit], ix[hit]] = True
    return mask


# ---------------------------------------------------------------------------
# bubble dynamics
# ---------------------------------------------------------------------------
class _Bubbles:
    """Vectorised state of the MBs currently in the vessels."""

    def __init__(self, tree: _Tree, v_lo_px: float, lifetime: float) -> None:
        self.tree = tree
        self.v_lo = v_lo_px
        self.lifetime = lifetime
        vol = tree.radius**2 * tree.length
        self.p_vol = vol / vol.sum()
        flux = np.where(tree.is_root, tree.radius**2 * tree.vc, 0.0)
        self.p_root = flux / flux.sum()
        self.next_id = 0
        names = ("seg", "s", "rr", "ang", "age", "life", "tid", "amp", "phase")
        self.state = {k: np.zeros(0, dtype=np.int64 if k in ("seg", "age", "tid") else np.float64)
                      for k in names}

    def spawn(self, rng, n: int, amplitude_spread: float) -> None:
        if n == 0:
            return
        tree = self.tree
        at_root = rng.random(n) < _ROOT_FRACTION
        seg = np.where(at_root, rng.choice(len(self.p_root), n, p=self.p_root),
                       rng.choice(len(self.p_vol), n, p=self.p_vol))
        s = np.where(at_root, 0.0, rng.random(n) * tree.length[seg])
        # Uniform over the cross-section disk, excluding the near-wall layer slower than v_lo.
        rmax2 = np.clip(1.0 - self.v_lo / tree.vc[seg], 0.0, 1.0)
        rr = np.sqrt(rng.random(n) * rmax2)
        new = dict(
            seg=seg, s=s, rr=rr, ang=rng.uniform(0, 2 * np.pi, n),
            age=np.zeros(n, dtype=np.int64),
            life=rng.exponential(self.lifetime, n),
            tid=np.arange(self.next_id, self.next_id + n, dtype=np.int64),
            amp=np.exp(amplitude_spread * rng.standard_normal(n) - 0.5 * amplitude_spread**2),
            phase=rng.uniform(0, 2 * np.pi, n),
        )
        self.next_id += n
        for k, v in new.items():
            self.state[k] = np.concatenate([self.state[k], v])

    def _keep(self, keep: np.ndarray) -> None:
        for k in self.state:
            self.state[k] = self.state[k][keep]

    def geometry(self):
        """Positions ``(y, x)`` and velocities ``(vy, vx)`` in pixels(/frame)."""
        st, tree = self.state, self.tree
        seg = st["seg"]
        f = st["s"] / _DS
        i0 = np.clip(np.floor(f).astype(np.int64), 0, tree.npts[seg] - 2)
        w = np.clip(f - i0, 0.0, 1.0)[:, None]
        j = tree.start[seg] + i0
        p = tree.points[j] * (1 - w) + tree.points[j + 1] * w
        t = tree.tangents[j] * (1 - w) + tree.tangents[j + 1] * w
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        normal = np.stack([t[:, 1], -t[:, 0]], 1)
        offset = (st["rr"] * np.cos(st["ang"]) * tree.radius[seg])[:, None]
        pos = p + offset * normal
        vel = t * self.speed()[:, None]
        return pos, vel

    def speed(self) -> np.ndarray:
        st = self.state
        return np.maximum(self.tree.vc[st["seg"]] * (1.0 - st["rr"] ** 2), self.v_lo)

    def step(self, rng) -> int:
        """Advance one frame; return the number of MBs that left."""
        st, tree = self.state, self.tree
        n0 = st["seg"].size
        if n0 == 0:
            return 0
        st["s"] = st["s"] + self.speed()
        st["rr"] = np.clip(st["rr"] + rng.normal(0.0, 0.005, n0), 0.0, 1.0)
        st["age"] = st["age"] + 1
        alive = st["age"] < st["life"]
        for _ in range(64):
            over = np.flatnonzero(alive & (st["s"] > tree.length[st["seg"]]))
            if over.size == 0:
                break
            old = st["seg"][over]
            first = rng.random(over.size) < tree.p_first[old]
            child = np.where(first, tree.children[old, 0], tree.children[old, 1])
            child = np.where(child < 0, tree.children[old, 0], child)
            gone = child < 0
            alive[over[gone]] = False
            moving = over[~gone]
            st["s"][moving] -= tree.length[old[~gone]]
            st["seg"][moving] = child[~gone]
            rmax2 = np.clip(1.0 - self.v_lo / tree.vc[child[~gone]], 0.0, 1.0)
            st["rr"][moving] = np.minimum(st["rr"][moving], np.sqrt(rmax2))
        self._keep(alive)
        return int(n0 - alive.sum())


def _mean_residence(tree, v_lo_px, lifetime, seed_rng) -> float:
    pilot = _Bubbles(tree, v_lo_px, lifetime)
    n = 3000
    pilot.spawn(seed_rng, n, 0.0)
    total = 0
    for _ in range(int(20 * lifetime) + 10):
        alive = pilot.state["seg"].size
        if alive == 0:
            break
        total += alive
        pilot.step(seed_rng)
    return max(total / n, 1.0)


# ---------------------------------------------------------------------------
# PSF
# ---------------------------------------------------------------------------
def _lateral(dx: np.ndarray, a: np.ndarray) -> np.ndarray:
    u = dx / a
    return np.sinc(u) * np.exp(-0.5 * (u / _TAPER) ** 2)


def _fwhm_1d(profile: np.ndarray, step: float) -> float:
    profile = np.abs(profile)
    peak = int(np.argmax(profile))
    half = profile[peak] / 2.0
    right = peak + int(np.flatnonzero(profile[peak:] < half)[0])
    left = peak - int(np.flatnonzero(profile[: peak + 1][::-1] < half)[0])

    def cross(i_out, i_in):
        a, b = profile[i_out], profile[i_in]
        return i_out + (half - a) / (b - a) * (i_in - i_out)

    return float((cross(right, right - 1) - cross(left, left + 1)) * step)


#: Gaussian taper of the ``"sinc"`` PSF shape, in units of ``a`` (first side lobe ~ -14 dB).
_SINC_TAPER = 3.0


def _lateral_gauss(dx: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * (dx / a) ** 2)


def _lateral_sinc(dx: np.ndarray, a: np.ndarray) -> np.ndarray:
    u = dx / a
    return np.sinc(u) * np.exp(-0.5 * (u / _SINC_TAPER) ** 2)


#: PSF shapes of :func:`simulate`: lateral profile ``L(dx, a)``, half-width of
#: the rendering window in units of ``a``, and whether the axial pulse is
#: modulated (``exp(2i pi dy / lambda_ax)``).
_PSF_SHAPES = {
    "gauss-sinc": (_lateral, 3.2 * _TAPER, True),
    "gauss": (_lateral_gauss, 4.0, False),
    "sinc": (_lateral_sinc, 5.0, True),
}
PSF_SHAPES = tuple(_PSF_SHAPES)
#: Clutter models of :func:`simulate` (see the module docstring).
CLUTTER_MODELS = ("ar1", "lowrank")
#: Complex sinusoids summed in each weight of the ``"lowrank"`` clutter.
_LOWRANK_TERMS = 4

#: FWHM of the lateral profile in units of its sinc scale ``a``.
_U = np.arange(-3.0, 3.0, 1e-4)
_LATERAL_FWHM_PER_A = _fwhm_1d(_lateral(_U, np.ones_like(_U)), 1e-4)
_FWHM_PER_A = {name: (_LATERAL_FWHM_PER_A if name == "gauss-sinc"
                      else _fwhm_1d(f(_U, np.ones_like(_U)), 1e-4))
               for name, (f, _, _) in _PSF_SHAPES.items()}


# ---------------------------------------------------------------------------
# main entry point
# ---------------------------------------------------------------------------
def simulation_memory_bytes(n_frames: int, height: int, width: int) -> int:
    """Estimated peak memory (bytes) of :func:`simulate`: the float32 frames, a
    float32 working copy while they are written, and per-pixel float64 maps."""
    return int(n_frames) * int(height) * int(width) * 8 + int(height) * int(width) * 64


def simulate(
    n_frames: int = 200,
    height: int = 128,
    width: int = 160,
    density: float = 20.0,
    seed: int = 0,
    *,
    pixel_size_um: float = 50.0,
    frame_rate_hz: float = 500.0,
    psf_fwhm_um: tuple[float, float] = (200.0, 300.0),
    depth_dependence: float = 0.3,
    speed_range_mm_s: tuple[float, float] = (1.0, 25.0),
    diameter_range_um: tuple[float, float] = (20.0, 200.0),
    clutter_db: float = -12.0,
    clutter_correlation: float = 0.98,
    noise_db: float = -25.0,
    tissue_motion_px: float = 0.0,
    amplitude_spread: float = 0.5,
    amplitude_jitter: float = 0.1,
    mean_lifetime_frames: float = 40.0,
    psf_shape: str = "gauss-sinc",
    clutter_model: str = "ar1",
    clutter_rank: int = 3,
    clutter_timescale_frames: float = 200.0,
    progress: Callable[[int, int], None] | None = None,
) -> Simulation:
    """Simulate a clutter-filtered CEUS sequence with MB ground truth.

    See the module docstring for the physical model.

    Parameters
    ----------
    n_frames, height, width : int
        Output shape ``(T, H, W)``; ``height``/``width`` at least 16 pixels.
    density : float
        Mean number of MBs visible per frame (about 5 is sparse, 100 dense;
        0 gives clutter and noise only).
    seed : int
        Seed of the random generator; equal seeds give identical output.
    pixel_size_um : float
        Square pixel size, micrometres.
    frame_rate_hz : float
        Frame rate, Hz.
    psf_fwhm_um : (float, float)
        Envelope PSF FWHM ``(axial, lateral)`` at mid depth, micrometres.
    depth_dependence : float
        Fractional lateral PSF widening from the top to the bottom row (the
        axial width widens half as much); 0 for a shift-invariant PSF.
    speed_range_mm_s : (float, float)
        ``(low, high)`` MB speeds, mm/s.
    diameter_range_um : (float, float)
        ``(smallest, largest)`` vessel diameters, micrometres.
    clutter_db : float
        RMS of residual clutter inside the organ relative to the mean MB
        amplitude, dB (``-inf`` for none).  The default -12 dB leaves the
        brighter bubbles clearly visible and the dimmer ones (the log-normal
        amplitude tail) near the speckle level, as in clutter-filtered
        in vivo data; -6 dB is a hard setting, -20 dB an easy one.
    clutter_correlation : float
        Frame-to-frame correlation of the ``"ar1"`` clutter, in ``[0, 1)``.
    noise_db : float
        RMS of complex white noise relative to the mean MB amplitude, dB.
    tissue_motion_px : float
        Amplitude of the rigid axial drift of the clutter, pixels.
    amplitude_spread : float
        Standard deviation of the log MB amplitude between bubbles.
    amplitude_jitter : float
        Standard deviation of the log MB amplitude between frames.
    mean_lifetime_frames : float
        Mean time an MB stays in the imaging plane before leaving it, frames.
    psf_shape : {"gauss-sinc", "gauss", "sinc"}
        Forward model of one MB (module docstring): ``"gauss-sinc"`` (default)
        a modulated Gaussian pulse axially and a tapered sinc laterally (side
        lobes near -20 dB); ``"gauss"`` a plain 2-D Gaussian envelope;
        ``"sinc"`` stronger lateral side lobes (near -14 dB).  The FWHMs are
        ``psf_fwhm_um`` whatever the shape.
    clutter_model : {"ar1", "lowrank"}
        ``"ar1"`` (default): speckle that decorrelates frame to frame with
        ``clutter_correlation``.  ``"lowrank"``: ``clutter_rank`` fixed speckle
        patterns whose weights drift smoothly over about
        ``clutter_timescale_frames`` (slowly evolving residual clutter).
    clutter_rank : int
        Number of speckle patterns of the ``"lowrank"`` clutter.
    clutter_timescale_frames : float
        Shortest period of the ``"lowrank"`` clutter weights, frames.
    progress : callable, optional
        Called as ``progress(done, total)`` while rendering.

    Returns
    -------
    Simulation

    Raises
    ------
    CycleULMError
        For non-positive sizes, unordered ranges, out-of-range parameters, or
        frames that cannot fit in memory (:func:`simulation_memory_bytes`).
    """
    n_frames = _check_int("n_frames", n_frames, 1)
    height = _check_int("height", height, 16)
    width = _check_int("width", width, 16)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CycleULMError(f"seed must be a non-negative whole number, got {seed!r}.")
    density = _check_float("density", density, nonneg=True)
    pixel_size_um = _check_float("pixel_size_um", pixel_size_um, positive=True)
    frame_rate_hz = _check_float("frame_rate_hz", frame_rate_hz, positive=True)
    fwhm_y_um, fwhm_x_um = _check_pair("psf_fwhm_um", psf_fwhm_um, "axial, lateral in um", False)
    depth_dependence = _check_float("depth_dependence", depth_dependence, nonneg=True, hi=5.0)
    v_lo, v_hi = _check_pair("speed_range_mm_s", speed_range_mm_s, "mm/s", True)
    dmin, dmax = _check_pair("diameter_range_um", diameter_range_um, "um", True)
    clutter_db = _check_float("clutter_db", clutter_db, allow_neg_inf=True)
    clutter_correlation = _check_float("clutter_correlation", clutter_correlation, lo=0.0, hi=1.0)
    noise_db = _check_float("noise_db", noise_db, allow_neg_inf=True)
    tissue_motion_px = _check_float("tissue_motion_px", tissue_motion_px, nonneg=True)
    amplitude_spread = _check_float("amplitude_spread", amplitude_spread, nonneg=True)
    amplitude_jitter = _check_float("amplitude_jitter", amplitude_jitter, nonneg=True)
    mean_lifetime_frames = _check_float("mean_lifetime_frames", mean_lifetime_frames, positive=True)
    if psf_shape not in _PSF_SHAPES:
        raise CycleULMError(f"psf_shape must be one of {list(PSF_SHAPES)}, got {psf_shape!r}.")
    if clutter_model not in CLUTTER_MODELS:
        raise CycleULMError(f"clutter_model must be one of {list(CLUTTER_MODELS)}, got {clutter_model!r}.")
    clutter_rank = _check_int("clutter_rank", clutter_rank, 1)
    clutter_timescale_frames = _check_float("clutter_timescale_frames", clutter_timescale_frames,
                                            positive=True)
    lateral, window_a, modulated = _PSF_SHAPES[psf_shape]
    if progress is not None and not callable(progress):
        raise CycleULMError("progress must be a callable progress(done, total) or None.")
    if density > 20.0 * height * width / 100.0:
        raise CycleULMError(
            f"density {density} is too high for a {height}x{width} image; use at most "
            f"{20.0 * height * width / 100.0:g} bubbles per frame."
        )
    from .._resources import check_memory

    check_memory(simulation_memory_bytes(n_frames, height, width),
                 f"{n_frames} simulated frames of {height}x{width} px",
                 "simulate fewer or smaller frames")

    rng = np.random.default_rng(seed)
    mm_s_to_px = 1000.0 / pixel_size_um / frame_rate_hz
    v_lo_px, v_hi_px = v_lo * mm_s_to_px, v_hi * mm_s_to_px

    # -- geometry -------------------------------------------------------------
    organ = _Organ(rng, height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    organ_mask = organ.level(yy, xx) < 1.0
    segs = _grow_tree(rng, organ, height, width, pixel_size_um, dmin, dmax)
    if not segs:
        raise CycleULMError(
            f"could not place any vessel in a {height}x{width} image; make it larger or "
            "use smaller diameter_range_um."
        )
    tree = _build_tree(segs, pixel_size_um, dmin, dmax, v_lo_px, v_hi_px)
    vessel_mask = _vessel_mask(tree, height, width)

    # -- bubble trajectories ------------------------------------------------
    residence = _mean_residence(tree, v_lo_px, mean_lifetime_frames,
                                np.random.default_rng([seed, 1]))
    rate = density / residence
    bubbles = _Bubbles(tree, v_lo_px, mean_lifetime_frames)
    burn_in = int(min(10 * mean_lifetime_frames, 5 * residence)) + 5
    rows: list[tuple] = []
    for t in range(-burn_in, n_frames):
        bubbles.spawn(rng, int(rng.poisson(rate)), amplitude_spread)
        if t >= 0 and bubbles.state["seg"].size:
            pos, vel = bubbles.geometry()
            st = bubbles.state
            jit = np.exp(amplitude_jitter * rng.standard_normal(pos.shape[0])
                         - 0.5 * amplitude_jitter**2)
            rows.append((np.full(pos.shape[0], t), pos[:, 0], pos[:, 1], st["tid"].copy(),
                         st["amp"] * jit, vel[:, 0], vel[:, 1], st["phase"].copy()))
        bubbles.step(rng)
    if rows:
        cols = [np.concatenate(c) for c in zip(*rows)]
    else:
        cols = [np.zeros(0, dtype=np.int64 if i in (0, 3) else np.float64) for i in range(8)]
    f_, y_, x_, tid_, amp_, vy_, vx_, ph_ = cols
    inside = (y_ >= 0) & (y_ <= height - 1) & (x_ >= 0) & (x_ <= width - 1)
    f_, y_, x_, tid_, amp_, vy_, vx_, ph_ = (c[inside] for c in cols)

    # -- PSF ----------------------------------------------------------------
    sig_y0 = fwhm_y_um / pixel_size_um / FWHM_PER_SIGMA
    a0 = fwhm_x_um / pixel_size_um / _FWHM_PER_A[psf_shape]
    period = 0.75 * fwhm_y_um / pixel_size_um

    def axial(dy, sy):
        """Complex axial pulse (without the bubble's phase)."""
        if modulated:
            return np.exp(-0.5 * (dy / sy) ** 2 + 2j * np.pi * dy / period)
        return np.exp(-0.5 * (dy / sy) ** 2).astype(np.complex128)

    def widths(y):
        fx = (1.0 + depth_dependence * np.asarray(y) / (height - 1)) / (1.0 + depth_dependence / 2)
        return sig_y0 * (1.0 + 0.5 * (fx - 1.0)), a0 * fx

    fine = np.arange(-6 * max(sig_y0, a0 * _TAPER) - 1, 6 * max(sig_y0, a0 * _TAPER) + 1, 0.01)
    sy_mid, a_mid = widths((height - 1) / 2.0)
    fwhm_y_px = _fwhm_1d(np.exp(-0.5 * (fine / sy_mid) ** 2), 0.01)
    fwhm_x_px = _fwhm_1d(lateral(fine, a_mid), 0.01)

    sy_max, a_max = widths(height - 1)
    ry = int(np.ceil(4.0 * sy_max))
    rx = int(np.ceil(window_a * a_max))
    offy = np.arange(-ry, ry + 1)
    offx = np.arange(-rx, rx + 1)

    # -- clutter kernel in the Fourier domain ------------------------------------
    ky = np.arange(-ry, ry + 1)
    kx = np.arange(-rx, rx + 1)
    kern = (axial(ky, sy_mid)[:, None]
            * lateral(kx.astype(float), np.array(a_mid))[None, :])
    kern /= np.sqrt(np.sum(np.abs(kern) ** 2))
    kpad = np.zeros((height, width), dtype=np.complex128)
    kpad[np.ix_(ky % height, kx % width)] = kern
    k_hat = scipy.fft.fft2(kpad).astype(np.complex64)
    clutter_rms = 10 ** (clutter_db / 20.0)
    noise_rms = 10 ** (noise_db / 20.0)
    rho = clutter_correlation
    innov = np.sqrt(1.0 - rho**2)
    fy = scipy.fft.fftfreq(height)[:, None]
    fx_ = scipy.fft.fftfreq(width)[None, :]
    npix = height * width
    period_y = frame_rate_hz / 2.0
    period_x = frame_rate_hz / 1.0
    drift = np.zeros((n_frames, 2))
    if tissue_motion_px > 0:
        t_ax = np.arange(n_frames)
        ph0 = rng.uniform(0, 2 * np.pi, 2)
        drift[:, 0] = tissue_motion_px * np.sin(2 * np.pi * t_ax / period_y + ph0[0])
        drift[:, 1] = 0.5 * tissue_motion_px * np.sin(2 * np.pi * t_ax / period_x + ph0[1])
    static_weight = organ.weight(yy, xx).astype(np.float32)

    def white(shape):
        return (rng.standard_normal(shape, dtype=np.float32)
                + 1j * rng.standard_normal(shape, dtype=np.float32)) * np.float32(np.sqrt(0.5))

    c_hat = lowrank_hat = lowrank_w = None
    if clutter_rms > 0 and clutter_model == "ar1":
        c_hat = white((height, width)) * np.float32(np.sqrt(npix))
    elif clutter_rms > 0:
        # Fixed speckle patterns (unit RMS each) with smooth complex weights.
        lowrank_hat = np.stack([white((height, width)) * np.float32(np.sqrt(npix)) * k_hat
                                for _ in range(clutter_rank)])
        coef = (rng.standard_normal((clutter_rank, _LOWRANK_TERMS))
                + 1j * rng.standard_normal((clutter_rank, _LOWRANK_TERMS)))
        freq = rng.uniform(0.0, 1.0 / clutter_timescale_frames, (clutter_rank, _LOWRANK_TERMS))
        t_ax = np.arange(n_frames)
        lowrank_w = np.einsum("kj,tkj->tk", coef,
                              np.exp(2j * np.pi * freq[None, :, :] * t_ax[:, None, None]))
        lowrank_w /= np.sqrt(np.mean(np.sum(np.abs(lowrank_w) ** 2, axis=1)))
        lowrank_w = lowrank_w.astype(np.complex64)

    # -- render, a block of frames at a time ---------------------------------
    frames = np.empty((n_frames, height, width), dtype=np.float32)
    # Frames per block: bounded by the frame memory and by the number of PSF
    # samples scattered at once (dense bubbles with wide PSFs); blocks end on
    # frame boundaries, so the output does not depend on the block size.
    per_frame = max(1.0, len(f_) / n_frames) * offy.size * offx.size
    block = max(1, min(n_frames, (1 << 22) // npix, int(4_000_000 // per_frame)))
    order = np.argsort(f_, kind="stable")
    f_s, y_s, x_s, amp_s, ph_s = f_[order], y_[order], x_[order], amp_[order], ph_[order]
    bounds = np.searchsorted(f_s, np.arange(0, n_frames + block, block))
    n_blocks = -(-n_frames // block)
    for b in range(n_blocks):
        t0, t1 = b * block, min(n_frames, (b + 1) * block)
        nb = t1 - t0
        lo_i, hi_i = bounds[b], bounds[b + 1]
        field_ = np.zeros(nb * npix, dtype=np.complex64)
        if hi_i > lo_i:
            by, bx = y_s[lo_i:hi_i], x_s[lo_i:hi_i]
            sy, aa = widths(by)
            cy = np.round(by).astype(np.int64)
            cx = np.round(bx).astype(np.int64)
            iy = cy[:, None] + offy[None, :]
            ix = cx[:, None] + offx[None, :]
            dy = iy - by[:, None]
            dx = ix - bx[:, None]
            if modulated:
                ey = (amp_s[lo_i:hi_i, None] * np.exp(-0.5 * (dy / sy[:, None]) ** 2)
                      * np.exp(1j * (2 * np.pi * dy / period + ph_s[lo_i:hi_i, None])))
            else:
                ey = (amp_s[lo_i:hi_i, None] * np.exp(-0.5 * (dy / sy[:, None]) ** 2)
                      * np.exp(1j * ph_s[lo_i:hi_i, None]))
            lx = lateral(dx, aa[:, None])
            val = ey[:, :, None] * lx[:, None, :]
            flat = ((f_s[lo_i:hi_i] - t0)[:, None, None] * npix + iy[:, :, None] * width
                    + ix[:, None, :])
            ok = ((iy >= 0) & (iy < height))[:, :, None] & ((ix >= 0) & (ix < width))[:, None, :]
            flat, val = flat[ok], val[ok]
            field_ = (np.bincount(flat, val.real, minlength=nb * npix)
                      + 1j * np.bincount(flat, val.imag, minlength=nb * npix)).astype(np.complex64)
        field_ = field_.reshape(nb, height, width)
        for k in range(nb):
            t = t0 + k
            if c_hat is not None or lowrank_hat is not None:
                if lowrank_hat is not None:
                    spec = np.tensordot(lowrank_w[t], lowrank_hat, axes=1)
                else:
                    if t > 0:
                        c_hat = rho * c_hat + innov * np.float32(np.sqrt(npix)) * white((height, width))
                    spec = c_hat * k_hat
                if tissue_motion_px > 0:
                    dyt, dxt = drift[t]
                    spec = spec * np.exp(-2j * np.pi * (fy * dyt + fx_ * dxt)).astype(np.complex64)
                    weight = organ.weight(yy - dyt, xx - dxt).astype(np.float32)
                else:
                    weight = static_weight
                field_[k] += np.float32(clutter_rms) * weight * scipy.fft.ifft2(spec)
            if noise_rms > 0:
                field_[k] += np.float32(noise_rms) * white((height, width))
        frames[t0:t1] = np.abs(field_)
        if progress is not None:
            progress(t1, n_frames)

    sub = frames.reshape(-1)[:: max(1, frames.size // 2_000_000)]
    scale = intensity_reference(sub)  # the package's convention: the 99.9th percentile maps to 1
    if not scale > 0:
        scale = 1.0
    frames /= np.float32(scale)

    gt = Localisations(dict(
        frame=f_, y=y_, x=x_, track_id=tid_, amplitude=amp_ / scale, vy=vy_, vx=vx_,
    )).sort("frame", "track_id")

    metadata = dict(
        n_frames=n_frames, height=height, width=width, density=density, seed=int(seed),
        pixel_size_um=pixel_size_um, frame_rate_hz=frame_rate_hz,
        psf_fwhm_um=[fwhm_y_um, fwhm_x_um], depth_dependence=depth_dependence,
        speed_range_mm_s=[v_lo, v_hi], diameter_range_um=[dmin, dmax],
        clutter_db=clutter_db, clutter_correlation=clutter_correlation, noise_db=noise_db,
        clutter_model=clutter_model, psf_shape=psf_shape,
        tissue_motion_px=tissue_motion_px, amplitude_spread=amplitude_spread,
        amplitude_jitter=amplitude_jitter, mean_lifetime_frames=mean_lifetime_frames,
        psf_fwhm_y_px=fwhm_y_px, psf_fwhm_x_px=fwhm_x_px,
        psf_sigma_y_px=fwhm_y_px / FWHM_PER_SIGMA, psf_sigma_x_px=fwhm_x_px / FWHM_PER_SIGMA,
        axial_period_px=period if modulated else None,
        speed_range_px_per_frame=[v_lo_px, v_hi_px],
        n_vessel_segments=int(len(tree.npts)), mean_residence_frames=residence,
        arrival_rate_per_frame=rate, intensity_scale=scale,
        mean_bubbles_per_frame=float(len(gt) / n_frames),
    )
    if clutter_model == "lowrank":
        metadata.update(clutter_rank=clutter_rank, clutter_timescale_frames=clutter_timescale_frames)
    if tissue_motion_px > 0:
        metadata["tissue_drift_px"] = drift.round(4).tolist()
    return Simulation(frames=frames, ground_truth=gt, vessel_mask=vessel_mask,
                      organ_mask=organ_mask, metadata=metadata)


# ---------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------
_FILES = {
    "frames": "frames.tif",
    "ground_truth": "ground_truth.csv",
    "vessel_mask": "vessel_mask.tif",
    "organ_mask": "organ_mask.tif",
    "metadata": "metadata.json",
}


def isolated_positions(
    positions,
    shape: tuple[int, int],
    *,
    min_distance_px: float = 16.0,
    border_px: float = 14.0,
    amplitude=None,
    min_amplitude: float = 0.0,
    n: int | None = None,
) -> np.ndarray:
    """Rows of ground-truth bubbles a user would click to measure the PSF.

    A bubble qualifies when no other bubble of its frame lies within
    ``min_distance_px``, it is more than ``border_px`` from every image edge
    and (with ``amplitude``) its amplitude exceeds ``min_amplitude``.

    Parameters
    ----------
    positions : (N, 3) array
        ``(frame, y, x)`` in pixels (e.g. ``Simulation.ground_truth.positions``).
    shape : (int, int)
        Frame ``(H, W)`` in pixels.
    min_distance_px, border_px : float
        Isolation radius and border margin, pixels.
    amplitude : (N,) array, optional
        Per-row amplitudes (the ``amplitude`` column of the ground truth).
    min_amplitude : float
        Threshold on ``amplitude``.
    n : int, optional
        Keep about ``n`` rows spread evenly over the qualifying ones (every
        k-th, in table order), default all.

    Returns
    -------
    np.ndarray
        Integer row indices into ``positions``.
    """
    pos = np.asarray(positions, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise CycleULMError(f"positions must be (N, 3) (frame, y, x), got shape {pos.shape}.")
    h, w = shape
    ok = ((pos[:, 1] > border_px) & (pos[:, 1] < h - border_px)
          & (pos[:, 2] > border_px) & (pos[:, 2] < w - border_px))
    if amplitude is not None:
        ok &= np.asarray(amplitude, dtype=float) > min_amplitude
    frames = pos[:, 0]
    for f in np.unique(frames[ok]):
        rows = np.flatnonzero(frames == f)
        d = np.hypot(pos[rows, 1, None] - pos[None, rows, 1], pos[rows, 2, None] - pos[None, rows, 2])
        np.fill_diagonal(d, np.inf)
        ok[rows[d.min(axis=1) < min_distance_px]] = False
    keep = np.flatnonzero(ok)
    if n is not None:
        keep = keep[:: max(1, len(keep) // n)][:n]
    return keep


def save_simulation(sim: Simulation, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write a simulation to a folder (each file atomically).

    Parameters
    ----------
    sim : Simulation
    out_dir : str or PathLike
        Folder, created if missing.

    Returns
    -------
    dict of str to Path
        ``frames`` (float32 TIFF), ``ground_truth`` (CSV), ``vessel_mask`` and
        ``organ_mask`` (uint8 TIFF), ``metadata`` (JSON).
    """
    import tifffile

    from ..io import write_stack

    out = Path(out_dir)
    paths = {k: out / v for k, v in _FILES.items()}
    write_stack(paths["frames"], sim.frames)
    sim.ground_truth.to_csv(paths["ground_truth"])
    for key in ("vessel_mask", "organ_mask"):
        with atomic_path(paths[key]) as tmp:
            tifffile.imwrite(tmp, np.asarray(getattr(sim, key)).astype(np.uint8), photometric="minisblack")
    write_text_atomic(paths["metadata"], json.dumps(jsonable(sim.metadata, nonfinite="string"), indent=2))
    return paths


def load_simulation(out_dir: str | os.PathLike) -> Simulation:
    """Read a folder written by :func:`save_simulation`.

    Raises
    ------
    CycleULMError
        If the folder or one of its files is missing.
    """
    import tifffile

    out = Path(out_dir)
    missing = [v for v in _FILES.values() if not (out / v).is_file()]
    if missing:
        raise CycleULMError(
            f"{str(out)!r} is not a saved simulation: missing {missing}. "
            "Write one with save_simulation()."
        )
    meta = json.loads((out / _FILES["metadata"]).read_text(encoding="utf-8"))
    for k in ("clutter_db", "noise_db"):
        if isinstance(meta.get(k), str):
            meta[k] = float(meta[k])
    gt = Localisations.from_csv(out / _FILES["ground_truth"])
    return Simulation(
        frames=np.asarray(tifffile.imread(out / _FILES["frames"]), dtype=np.float32).reshape(
            -1, int(meta["height"]), int(meta["width"])),
        ground_truth=gt,
        vessel_mask=tifffile.imread(out / _FILES["vessel_mask"]).astype(bool),
        organ_mask=tifffile.imread(out / _FILES["organ_mask"]).astype(bool),
        metadata=meta,
    )
