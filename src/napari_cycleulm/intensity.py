"""The package's intensity convention: what every network and absolute threshold expects.

A run's frames are multiplied by one factor (:func:`intensity_scale`: the
99.9th percentile of the first frames to 1), decided once per run so that
every block means the same.  MB-DT's input is scaled by
:func:`mbdt_input_scale`, the same factor lowered for bright backgrounds
and raised (at most :data:`MBDT_MAX_RAISE` times) for dark ones, so that
the background lies between :data:`MBDT_BACKGROUND_FLOOR` and
:data:`MBDT_BACKGROUND_LEVEL` (see docs/science.md).  The simulator and
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

#: The darkest background MB-DT's input is raised to (0.4x the level).  Under
#: the percentile convention a dark median means that the 99.9th percentile is
#: a rare, very bright bubble (dense flow with a wide intensity spread), so
#: typical bubbles reach MB-DT dimmer than any it learnt to keep.  Chosen with
#: ``benchmarks/mbdt_input_scale.py`` on selection settings (seeds 31-41,
#: never those of ``benchmarks/generalisation.py``): the best worst-case F1
#: of CycleULM-Loc against Baseline 2 among floors of 0.03-0.07, the mean
#: breaking ties.
MBDT_BACKGROUND_FLOOR = 0.04

#: The most MB-DT's input scale is ever raised above the percentile
#: convention.  A background darker than ``FLOOR / MAX_RAISE`` is not a dim
#: bubble population but an (almost) empty one, clipped by the clutter filter
#: or free of noise, which raising would only turn into bright noise.
MBDT_MAX_RAISE = 3.0


def mbdt_background_factor(
    median: float,
    *,
    level: float = MBDT_BACKGROUND_LEVEL,
    floor: float = MBDT_BACKGROUND_FLOOR,
    max_raise: float = MBDT_MAX_RAISE,
) -> float:
    """The factor :func:`mbdt_input_scale` applies to the percentile scale.

    Parameters
    ----------
    median : float
        Median of the frames after the percentile scale (normalised units).
    level, floor, max_raise : float
        The brightest and darkest backgrounds MB-DT is given, and the largest
        raise (defaults: :data:`MBDT_BACKGROUND_LEVEL`,
        :data:`MBDT_BACKGROUND_FLOOR`, :data:`MBDT_MAX_RAISE`).

    Returns
    -------
    float
        ``level / median`` above the level, ``min(floor / median, max_raise)``
        below the floor (a median of 0 excepted), else 1.
    """
    if median > level:
        return level / median
    if 0 < median < floor:
        return min(floor / median, max_raise)
    return 1.0


def mbdt_input_scale(frames, percentile: float = 99.9, max_values: float | None = 2e7) -> float:
    """The intensity factor of MB-DT's input: :func:`intensity_scale`, moved to bring the background into MB-DT's range.

    The percentile convention maps the brightest 0.1 % of the values to 1.
    With few bubbles in strong noise those values are noise peaks, so the
    noise floor reaches MB-DT several times brighter than in its training
    data, and MB-DT (trained to draw a bubble wherever the CEUS frames hold a
    bright blob) draws bubbles out of it.  This factor lowers the scale until
    the median of the scaled frames, a robust estimate of their background
    level (bubbles occupy a few percent of the pixels), is at most
    :data:`MBDT_BACKGROUND_LEVEL`.  Conversely, with dense bubbles of widely
    spread intensities the percentile is a rare, very bright bubble and the
    typical bubbles reach MB-DT dimmer than any it learnt to keep: when the
    median is below :data:`MBDT_BACKGROUND_FLOOR`, the scale is raised to bring
    it there, by at most :data:`MBDT_MAX_RAISE` times.  When the median is 0
    (a clutter filter that clips the background to 0) the percentile scale
    is kept.

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
    return scale * mbdt_background_factor(float(np.median(arr)) * scale)


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


__all__ = ["MBDT_BACKGROUND_FLOOR", "MBDT_BACKGROUND_LEVEL", "MBDT_MAX_RAISE", "intensity_reference", "mbdt_background_factor", "intensity_scale", "mbdt_input_scale"]
