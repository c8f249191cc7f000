"""Input checks and robust statistics shared by every stage that takes image data.

The intensity convention (what a run's frames are scaled to) is in
:mod:`napari_cycleulm.intensity`.
"""

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
