"""Input checks and image statistics shared by every stage that takes image data."""

from __future__ import annotations

import numpy as np

from .errors import CycleULMError


def as_frames(frames, name: str = "frames", min_frames: int = 1) -> np.ndarray:
    """Check and convert a CEUS stack to a float32 ``(T, H, W)`` array.

    A single 2-D image becomes a one-frame stack.  Complex input (IQ data) is
    rejected here: take its magnitude (or run the SVD clutter filter) first.

    Parameters
    ----------
    frames : array_like
        Stack of frames, shape ``(T, H, W)`` or ``(H, W)``.
    name : str
        Name used in error messages.
    min_frames : int
        Minimum number of frames the caller needs.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(T, H, W)`` (a view when no copy is needed).

    Raises
    ------
    CycleULMError
        On wrong dimensionality, empty input, complex or non-numeric values,
        NaN or infinite values, or fewer than ``min_frames`` frames.
    """
    arr = np.asarray(frames)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise CycleULMError(f"{name} must be numeric, got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise CycleULMError(
            f"{name} is complex (IQ data); take its magnitude with numpy.abs or run "
            "the SVD clutter filter (preprocess.svd_clutter_filter) first."
        )
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise CycleULMError(
            f"{name} must be a (frames, height, width) stack or a single (height, width) "
            f"image, got an array with shape {arr.shape}."
        )
    if arr.size == 0:
        raise CycleULMError(f"{name} is empty (shape {arr.shape}).")
    if arr.shape[0] < min_frames:
        raise CycleULMError(
            f"{name} has {arr.shape[0]} frame(s) but at least {min_frames} are needed."
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise CycleULMError(
            f"{name} contains {bad} NaN or infinite value(s); replace them "
            "(e.g. numpy.nan_to_num) before processing."
        )
    return arr


def as_image(image, name: str = "image") -> np.ndarray:
    """Check and convert a single 2-D image to float32 ``(H, W)``."""
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise CycleULMError(f"{name} must be a 2-D (height, width) image, got shape {arr.shape}.")
    return as_frames(arr, name=name)[0]


def _every_kth_frame(frames, max_values: float | None) -> np.ndarray:
    """``frames``, or every k-th frame of them so that about ``max_values`` values remain."""
    arr = np.asarray(frames)
    if max_values is not None and arr.ndim >= 1:
        stride = max(1, int(np.ceil(arr.size / max_values)))
        if 1 < stride < arr.shape[0]:
            arr = arr[::stride]
    return arr


def intensity_scale(frames, percentile: float = 99.9, max_values: float | None = None) -> float:
    """Factor that maps the ``percentile`` of ``frames`` to 1.

    Every network and absolute threshold in the package expects CEUS data
    scaled this way (the 99.9th percentile of the run is 1).

    Parameters
    ----------
    frames : array_like
        Intensities, any shape.
    percentile : float
        Percentile mapped to 1.
    max_values : float, optional
        For huge stacks: estimate the percentile from every k-th frame so that
        about this many values are used (None: use all values).

    Returns
    -------
    float
        The factor; the maximum absolute value is used when the percentile is
        not positive, and 1 for an all-zero input.
    """
    arr = _every_kth_frame(frames, max_values)
    ref = intensity_reference(arr, percentile)
    return 1.0 / ref if ref > 0 else 1.0


#: MB-DT's input convention: after the run's intensity scale, the median of the
#: (clutter-filtered) frames is at most this level.  It is the geometric mean of
#: that median over the 11 of the 13 training acquisitions of the shipped MB-DT
#: whose median is not 0 (0.03-0.23; ``scripts/train_default_weights.py``'s
#: ``MBDT_SETTINGS``, measured after ``svd:auto``): the background MB-DT learnt
#: to leave dark.  See :func:`mbdt_input_scale`.
MBDT_BACKGROUND_LEVEL = 0.10


def mbdt_input_scale(frames, percentile: float = 99.9, max_values: float | None = 2e7) -> float:
    """The intensity factor of MB-DT's input: :func:`intensity_scale`, lowered for bright backgrounds.

    The percentile convention maps the brightest 0.1 % of the values to 1.
    With few bubbles in strong noise those values are noise peaks, so the
    noise floor reaches MB-DT several times brighter than in its training
    data, and MB-DT (trained to draw a bubble wherever the CEUS frames hold a
    bright blob) draws bubbles out of it.  This factor lowers the scale until
    the median of the scaled frames, a robust estimate of their background
    level (bubbles occupy a few percent of the pixels), is at most
    :data:`MBDT_BACKGROUND_LEVEL`; it never raises it (a dark background is
    what MB-DT was trained on).  When the median is 0 (a clutter filter that
    clips the background to 0) the percentile scale is kept.

    Parameters
    ----------
    frames : array_like
        Clutter-filtered CEUS frames (the run's calibration frames), any shape.
    percentile, max_values : float
        As for :func:`intensity_scale`.

    Returns
    -------
    float
        The factor (> 0) that MB-DT's input frames are multiplied by.
    """
    arr = _every_kth_frame(frames, max_values)
    scale = intensity_scale(arr, percentile)
    median = float(np.median(arr)) * scale
    if median > MBDT_BACKGROUND_LEVEL:
        scale *= MBDT_BACKGROUND_LEVEL / median
    return scale


def intensity_reference(values, percentile: float = 99.9) -> float:
    """The intensity that the package's convention maps to 1.

    The ``percentile`` of ``values``, or their largest absolute value when
    that percentile is not positive (sparse bubbles on a zero background);
    0 only for an all-zero input.  :func:`intensity_scale`,
    :func:`~napari_cycleulm.preprocess.normalise_intensity` and the
    simulator all use this rule.
    """
    arr = np.asarray(values)
    ref = float(np.percentile(arr, percentile))
    if ref <= 0:
        ref = float(np.abs(arr).max())
    return ref


#: Median absolute deviation -> standard deviation of a Gaussian, the factor every
#: noise estimate of the package has used.  scipy's ``scale="normal"`` is
#: 1 / Phi^-1(3/4) = 1.482602...: it differs in the 7th digit, which would move
#: every threshold set in robust standard deviations and so change results.
MAD_TO_SIGMA = 1.4826


def _zero_center(values, axis):
    # The deviations are already taken about the centre; keep their dtype
    # (a float64 zero would promote float32 data and change the median's rounding).
    return values.dtype.type(0)


def robust_sigma(values, axis=None, *, center=None):
    """Robust standard deviation: ``MAD_TO_SIGMA`` x the median absolute deviation.

    Parameters
    ----------
    values : numpy.ndarray
        Data, any shape; float32 stays float32.
    axis : int, tuple of int or None
        Axes to reduce (default: all values).
    center : array_like or float, optional
        The median of ``values`` along ``axis`` (the shape of the result) when
        the caller already has it; computed otherwise.

    Returns
    -------
    numpy.ndarray or numpy scalar
        The spread along ``axis``, in the units of ``values``.

    Examples
    --------
    >>> float(robust_sigma(np.array([1.0, 2.0, 3.0, 4.0, 100.0])))
    1.4826
    """
    # scipy.stats takes ~0.5 s to import: only when a noise estimate is needed.
    from scipy.stats import median_abs_deviation

    values = np.asarray(values)
    if center is None:
        mad = median_abs_deviation(values, axis=axis)
    else:
        ref = center if axis is None else np.expand_dims(center, axis)
        mad = median_abs_deviation(values - ref, axis=axis, center=_zero_center)
    return MAD_TO_SIGMA * mad
