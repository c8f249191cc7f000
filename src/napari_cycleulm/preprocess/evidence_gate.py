"""Time tells bubbles from clutter: a transient-signal gate for MB-DT's output.

MB-DT sees three frames, and nothing in its adversarial training tells a
bright *persistent* structure (slowly evolving clutter, tissue speckle) from
a bubble: it redraws both as sharp bubbles.  Microbubbles, however, flow:
at any pixel a bubble is a short excess over that pixel's usual level,
whereas clutter and noise are there (or fluctuate the same way) all the time.

:func:`transient_gate` marks, frame by frame, the pixels whose CEUS
intensity stands out from their own temporal background:

``S_t(x) = J_t(x) - B_t(x) > k * sigma(x)``

with ``J = G * I`` the frames smoothed by a Gaussian of the CEUS PSF's width
(a matched filter: it averages noise and keeps PSF-shaped blobs), ``B_t``
the median of ``J`` at the pixel over a window of frames around ``t``
(robust to the bubbles that cross it in a fraction of the window), and
``sigma`` the pixel's robust temporal spread (1.4826 x median absolute
deviation of ``J - B`` over the same window).  A bubble also stands out from
its spatial neighbourhood, so the pixel must in addition pass the baselines'
Bradley-Roth test (brighter than 3x its local mean).  The mask is dilated by
one pixel, and MB-DT's output is multiplied by it: MB-DT still decides where and how sharp a bubble
is, but only where the data show a transient.  The input of MB-DT is left as
it is (subtracting the background before MB-DT was measured to hurt, see
docs/science.md).

Everything is in pixels and frames; results do not depend on how a long
acquisition is cut into blocks, as long as the caller passes ``context``
frames on both sides (:func:`gate_context`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..arrays import robust_sigma
from ..errors import CycleULMError

#: Frames on each side of a frame whose pixels form its background (101 frames in all, 0.2 s at 500 Hz):
#: long against a bubble's passage (a PSF width at 0.1-2 px/frame: a few to ~40 frames), short
#: against slowly evolving clutter.
WINDOW_HALF_FRAMES = 50

#: Every STRIDE-th frame of the window is used (21 samples): the median needs samples, not all of them.
STRIDE_FRAMES = 5

#: Bradley-Roth sensitivity of the spatial test (the baselines' default: brighter than 3x the local mean).
SPATIAL_SENSITIVITY = 2.0

#: Significance: a transient must exceed its pixel's background by this many robust standard
#: deviations (a Gaussian background passes it at about 0.1 % of its pixels).
SIGNIFICANCE = 3.0


#: The gate modes of the CycleULM pipelines: which evidence MB-DT's output must have.
GATE_MODES = ("none", "spatial", "temporal", "spatial+temporal")

#: The pipelines' default, chosen with benchmarks/gate_selection.py on selection settings
#: (never those of benchmarks/generalisation.py): the best worst-case F1 ratio against Baseline 2.
DEFAULT_GATE = "spatial"


def gate_kwargs(mode: str) -> dict | None:
    """:func:`transient_gate` arguments of a gate mode (None for ``"none"``)."""
    if mode not in GATE_MODES:
        raise CycleULMError(f"unknown gate {mode!r}; choose one of {', '.join(GATE_MODES)}.")
    return {
        "none": None,
        "spatial": {"significance": None},
        "temporal": {"spatial_sensitivity": None},
        "spatial+temporal": {},
    }[mode]


def block_gate(stack, block: np.ndarray, start: int, stop: int, *, scale: float, psf=None,
               mode: str = DEFAULT_GATE, **params) -> np.ndarray | None:
    """The gate of one block of a long stack, reading the context frames the mode needs.

    The one place where the pipelines and the Translate tool gate MB-DT's
    output, so both give the same MB-only frames.

    Parameters
    ----------
    stack : array_like or LazyStack
        The whole CEUS acquisition (T, H, W), read for context only.
    block : (stop - start, H, W) float32 array
        Frames ``start:stop`` already multiplied by ``scale``.
    scale : float
        The run's intensity factor (applied to the context frames too).
    psf : PSF, optional
        CEUS PSF (window of the spatial test, width of the temporal matched filter).
    mode : str
        One of :data:`GATE_MODES`.
    **params
        Further :func:`transient_gate` parameters.

    Returns
    -------
    (stop - start, H, W) bool array, or None for ``mode="none"``.
    """
    from .. import io as ulm_io

    kwargs = gate_kwargs(mode)
    if kwargs is None:
        return None
    kwargs = {"window_half_frames": WINDOW_HALF_FRAMES, **kwargs, **params}
    n = len(stack)
    # The temporal test reads frames around the block; the spatial one needs none.
    ctx = gate_context(kwargs["window_half_frames"]) if kwargs.get("significance", 1.0) is not None else 0
    lo, hi = max(0, start - ctx), min(n, stop + ctx)
    parts = [ulm_io.read_block(stack, lo, start) * np.float32(scale)] if lo < start else []
    parts.append(block)
    if stop < hi:
        parts.append(ulm_io.read_block(stack, stop, hi) * np.float32(scale))
    frames = np.concatenate(parts) if len(parts) > 1 else block
    return transient_gate(frames, start - lo, stop - lo, first_frame=lo, n_frames=n, psf=psf, **kwargs)


def gate_context(window_half_frames: int = WINDOW_HALF_FRAMES) -> int:
    """Frames needed on each side of a block to gate it exactly as in one piece."""
    return int(window_half_frames)


def _sample_index(t: int, n: int, half: int, stride: int) -> np.ndarray:
    """Window frames of frame ``t``: a grid of ``stride`` anchored at frame 0, clipped to the stack.

    Anchoring the grid at absolute frame numbers (not at ``t``) lets
    consecutive frames share samples, and makes the result independent of the
    block a frame belongs to.
    """
    lo = max(0, t - half)
    hi = min(n - 1, t + half)
    first = -(-lo // stride) * stride
    return np.arange(first, hi + 1, stride)


def transient_score(
    frames: np.ndarray,
    start: int,
    stop: int,
    *,
    first_frame: int = 0,
    n_frames: int | None = None,
    psf=None,
    window_half_frames: int = WINDOW_HALF_FRAMES,
    stride_frames: int = STRIDE_FRAMES,
) -> np.ndarray:
    """Significance of the transient signal, ``(J_t - B_t) / sigma``, for frames ``start:stop``.

    See the module notes for ``J``, ``B`` and ``sigma``; the parameters are
    those of :func:`transient_gate`.

    Returns
    -------
    (stop - start, H, W) float32 array
        Robust standard deviations above the pixel's temporal background.
    """
    arr = np.asarray(frames, dtype=np.float32)
    if arr.ndim != 3:
        raise CycleULMError(f"frames must be a (T, H, W) stack, got shape {arr.shape}.")
    if not 0 <= start < stop <= len(arr):
        raise CycleULMError(f"need 0 <= start < stop <= {len(arr)}, got {start}, {stop}.")
    if window_half_frames < 1 or stride_frames < 1:
        raise CycleULMError("window_half_frames and stride_frames must be >= 1.")
    n_total = first_frame + len(arr) if n_frames is None else int(n_frames)
    sigma = None if psf is None else (0.0, float(psf.sigma_y_px), float(psf.sigma_x_px))

    def smooth(x):
        return x if sigma is None else ndimage.gaussian_filter(x, sigma, mode="nearest")

    out = np.empty((stop - start,) + arr.shape[1:], np.float32)
    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for i in range(start, stop):
        t = first_frame + i
        idx = _sample_index(t, n_total, window_half_frames, stride_frames)
        local = idx - first_frame
        if local[0] < 0 or local[-1] >= len(arr):
            raise CycleULMError(
                f"frame {t} needs frames {idx[0]}-{idx[-1]} as context, but only "
                f"{first_frame}-{first_frame + len(arr) - 1} were given."
            )
        key = (int(idx[0]), int(idx[-1]))
        if key not in cache:
            samples = smooth(arr[local])
            background = np.median(samples, axis=0)
            spread = robust_sigma(samples, axis=0, center=background)
            floor = np.float32(1e-6) * max(float(np.max(background)), 1e-12)
            cache.clear()  # consecutive frames share windows; older ones are not needed again
            cache[key] = (background, np.maximum(spread, floor))
        background, spread = cache[key]
        out[i - start] = (smooth(arr[i : i + 1])[0] - background) / spread
    return out


def transient_gate(
    frames: np.ndarray,
    start: int,
    stop: int,
    *,
    first_frame: int = 0,
    n_frames: int | None = None,
    psf=None,
    significance: float | None = SIGNIFICANCE,
    window_half_frames: int = WINDOW_HALF_FRAMES,
    stride_frames: int = STRIDE_FRAMES,
    spatial_sensitivity: float | None = SPATIAL_SENSITIVITY,
) -> np.ndarray:
    """Boolean mask of transient (bubble-like) signal for frames ``start:stop`` of ``frames``.

    Parameters
    ----------
    frames : (T, H, W) float array
        CEUS envelope frames: the block to gate plus up to
        ``window_half_frames`` frames of context on each side.
    start, stop : int
        The frames to gate, as indices into ``frames``.
    first_frame : int
        Frame number of ``frames[0]`` in the acquisition.
    n_frames : int, optional
        Frames in the acquisition (default: ``first_frame + len(frames)``);
        windows are clipped to it.
    psf : PSF, optional
        CEUS PSF: the matched filter's width.  None: no smoothing.
    significance : float or None
        ``k`` of the module notes, in robust standard deviations (> 0).
        None: no temporal test (the spatial test alone).
    window_half_frames, stride_frames : int
        Background window (frames on each side) and sampling step.
    spatial_sensitivity : float or None
        Also require the pixel to pass Bradley-Roth adaptive thresholding
        (:func:`~napari_cycleulm.preprocess.adaptive_threshold`, this
        sensitivity, the PSF's window): brighter than ``1 + s`` times its
        spatial neighbourhood.  None: the temporal test alone.

    Returns
    -------
    (stop - start, H, W) bool array

    Raises
    ------
    CycleULMError
        On bad shapes or parameters, or when the context does not cover the windows.
    """
    if significance is None and spatial_sensitivity is None:
        raise CycleULMError("the gate needs a temporal (significance) or a spatial (spatial_sensitivity) test.")
    if significance is not None and not (np.isfinite(significance) and significance > 0):
        raise CycleULMError(f"significance must be a positive number of standard deviations, got {significance}.")
    if significance is None:
        mask = np.ones((stop - start,) + np.shape(frames)[1:], bool)
    else:
        mask = transient_score(frames, start, stop, first_frame=first_frame, n_frames=n_frames, psf=psf,
                               window_half_frames=window_half_frames, stride_frames=stride_frames) > significance
    if spatial_sensitivity is not None:
        from .thresholding import adaptive_threshold

        mask &= adaptive_threshold(np.asarray(frames[start:stop], np.float32), sensitivity=spatial_sensitivity,
                                   psf=psf) > 0
    # One pixel of margin: MB-DT may place a bubble's sharpened peak a pixel off the smoothed maximum.
    cross = ndimage.generate_binary_structure(2, 1)[None]
    return ndimage.binary_dilation(mask, structure=cross)


def transient_count(frames: np.ndarray, psf, *, significance: float = SIGNIFICANCE,
                    window_half_frames: int = WINDOW_HALF_FRAMES, stride_frames: int = STRIDE_FRAMES,
                    frames_measured: int = 40) -> tuple[float, np.ndarray]:
    """Bubbles per frame, counted from transients, and the amplitudes of the transient peaks.

    Counts local maxima of :func:`transient_score` above ``significance``
    (at least half a CEUS FWHM apart) in ``frames_measured`` frames spread
    over the stack, and subtracts the count of *negative* excursions that
    pass the same test (local maxima of ``-score``): noise and fluctuating
    clutter go both ways around the background, bubbles only up, so the
    difference estimates the bubbles without a bias from the threshold.
    Unlike thresholding + NCC, no shape test and no spatial threshold cap the
    count: a dim bubble counts when it stands out from its pixel's own
    background; a bright static speckle never does.

    Returns
    -------
    per_frame : float
        Estimated bubbles per frame (>= 0).
    amplitudes : (N,) float array
        CEUS intensity at the positive peaks (the bubbles' amplitudes, with
        some noise peaks among the dimmest).
    """
    arr = np.asarray(frames, dtype=np.float32)
    n = len(arr)
    if n < 3:
        raise CycleULMError(f"need at least 3 frames to tell transients from the background, got {n}.")
    idx = np.unique(np.linspace(0, n - 1, min(frames_measured, n)).round().astype(int))
    size = (2 * max(1, int(round(psf.fwhm_y_px / 2))) + 1, 2 * max(1, int(round(psf.fwhm_x_px / 2))) + 1)
    up = down = 0
    amplitudes = []
    for t in idx:
        z = transient_score(arr, int(t), int(t) + 1, psf=psf, window_half_frames=window_half_frames,
                            stride_frames=stride_frames)[0]
        peaks = (z == ndimage.maximum_filter(z, size=size)) & (z > significance)
        dips = (z == ndimage.minimum_filter(z, size=size)) & (z < -significance)
        up += int(peaks.sum())
        down += int(dips.sum())
        amplitudes.append(arr[t][peaks])
    return max(0.0, (up - down) / len(idx)), np.concatenate(amplitudes)


__all__ = [
    "DEFAULT_GATE", "GATE_MODES", "SIGNIFICANCE", "SPATIAL_SENSITIVITY", "STRIDE_FRAMES", "block_gate", "gate_kwargs", "WINDOW_HALF_FRAMES", "gate_context", "transient_gate",
    "transient_count", "transient_score",
]
