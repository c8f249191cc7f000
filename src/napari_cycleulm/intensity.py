"""The package's intensity convention: what every network and absolute threshold expects.

A run's frames are multiplied by one factor (:func:`intensity_scale`: the
99.9th percentile of the first frames to 1), decided once per run so that
every block means the same.  MB-DT's input is scaled by
:func:`mbdt_input_scale`, the same factor lowered for bright backgrounds
(:data:`MBDT_BACKGROUND_LEVEL`, see docs/science.md).  The simulator and
:func:`~napari_cycleulm.preprocess.normalise_intensity` use
:func:`intensity_reference`, the value the convention maps to 1.
"""

from __future__ import annotations

import numpy as np


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


__all__ = ["MBDT_BACKGROUND_LEVEL", "intensity_reference", "intensity_scale", "mbdt_input_scale"]
