"""Hand-written algorithms pinned to reference libraries on small cases.

The NCC map, the peak finder and the linker are written for speed (batched
FFTs and pooling in torch, a streaming Kalman linker); here each gives what a
well-kept library gives on inputs where the answer is unambiguous:

* NCC score map == ``skimage.feature.match_template(pad_input=True)``;
* ``find_peaks`` == ``skimage.feature.peak_local_max`` (same window, threshold,
  border and count);
* ``track`` partitions well separated, constant-velocity bubbles into the same
  tracks as ``trackpy.link``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.feature import match_template, peak_local_max

from napari_cycleulm.localise.ncc import FLAT_FRACTION, ncc_maps
from napari_cycleulm.localise.peaks import find_peaks
from napari_cycleulm.io.tables import Localisations
from napari_cycleulm.track import track


def _blobs(rng, shape, sigma=1.5):
    """Smoothed noise: blob-like maxima, all values distinct."""
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma).astype(np.float32)


# --- NCC --------------------------------------------------------------------


@pytest.mark.parametrize("kernel_shape", [(7, 9), (5, 5), (9, 3)])
def test_ncc_map_equals_skimage_match_template(kernel_shape):
    rng = np.random.default_rng(sum(kernel_shape))
    frames = np.abs(_blobs(rng, (3, 36, 44), sigma=1.0)) + 0.1
    kh, kw = kernel_shape
    yy, xx = np.mgrid[:kh, :kw]
    # Asymmetric template (off-centre Gaussian plus noise) so that a flipped or
    # shifted correlation would not pass.
    kernel = np.exp(-((yy - kh / 2.3) ** 2) / 3.0 - ((xx - kw / 2.6) ** 2) / 5.0)
    kernel = (kernel + 0.05 * rng.random(kernel.shape)).astype(np.float32)

    ours = ncc_maps(frames, kernel, device="cpu")

    for f in range(len(frames)):
        # Both zero-pad the frame and report the score of the template centred
        # on each pixel (index kh // 2, kw // 2 of the template, odd sizes).
        ref = match_template(frames[f], kernel, pad_input=True, mode="constant")
        assert ref.shape == ours[f].shape
        # Defined where the window has structure: ours scores flat windows 0,
        # skimage divides by a near-zero variance there.
        s1 = ndimage.correlate(frames[f].astype(np.float64), np.ones(kernel_shape),
                               mode="constant")
        s2 = ndimage.correlate(frames[f].astype(np.float64) ** 2, np.ones(kernel_shape),
                               mode="constant")
        var = s2 - s1**2 / kernel.size
        defined = var > 10 * FLAT_FRACTION * var.max()
        assert defined.mean() > 0.95
        np.testing.assert_allclose(ours[f][defined], ref[defined], atol=1e-4)


# --- peaks ------------------------------------------------------------------


@pytest.mark.parametrize("min_distance", [1, 2, 4])
@pytest.mark.parametrize("exclude_border", [0, 3])
def test_find_peaks_equals_skimage_peak_local_max(min_distance, exclude_border):
    rng = np.random.default_rng(10 * min_distance + exclude_border)
    maps = _blobs(rng, (4, 48, 40))
    threshold = float(np.quantile(maps, 0.6))

    f, y, x, v = find_peaks(maps, threshold, min_distance=min_distance,
                            exclude_border=exclude_border)

    assert len(f) > 10
    for t in range(len(maps)):
        # Same conventions: a (2d+1)^2 maximum filter, value > threshold_abs
        # (strict), border of `exclude_border` pixels dropped (False for none),
        # highest first.
        ref = peak_local_max(maps[t], min_distance=min_distance, threshold_abs=threshold,
                             exclude_border=exclude_border or False)
        ours = np.stack([y[f == t], x[f == t]], axis=1)
        np.testing.assert_array_equal(ours, ref)
        np.testing.assert_array_equal(v[f == t], maps[t][ref[:, 0], ref[:, 1]])


def test_find_peaks_max_peaks_equals_skimage_num_peaks():
    rng = np.random.default_rng(3)
    image = _blobs(rng, (50, 50))
    f, y, x, _ = find_peaks(image, threshold=0.0, min_distance=2, max_peaks=5)
    ref = peak_local_max(image, min_distance=2, threshold_abs=0.0, exclude_border=False,
                         num_peaks=5)
    assert len(ref) == 5
    np.testing.assert_array_equal(np.stack([y, x], axis=1), ref)


# --- linking ----------------------------------------------------------------


def _bubbles(rng, n_frames=30, drop_every=0):
    """Well separated bubbles at constant velocity, appearing and leaving at different frames.

    Start points lie on a grid 16 px apart and every bubble moves by at most
    1.5 px/frame in the same general direction, so no two come within 10 px
    of each other in a frame: the right partition is unambiguous.  With
    ``drop_every`` each bubble misses one frame in that many (a gap of one).
    """
    rows = []
    starts = [(16.0 * i + 8, 16.0 * j + 8) for i in range(3) for j in range(3)]
    for b, (y0, x0) in enumerate(starts):
        vy, vx = 0.6 + 0.1 * rng.random(), 1.0 + 0.3 * rng.random()
        first = int(rng.integers(0, 8))
        last = int(rng.integers(first + 10, n_frames))
        for k, frame in enumerate(range(first, last)):
            if drop_every and k % drop_every == drop_every - 1:
                continue
            noise = rng.normal(0, 0.05, 2)
            rows.append((frame, y0 + vy * k + noise[0], x0 + vx * k + noise[1], b))
    rows = np.array(rows)
    order = np.lexsort((rng.random(len(rows)), rows[:, 0]))  # shuffled within frames
    return rows[order]


def _partition(labels, rows):
    groups: dict = {}
    for label, row in zip(labels, rows):
        groups.setdefault(int(label), set()).add(int(row))
    return sorted(sorted(g) for g in groups.values())


@pytest.mark.parametrize("gap", [0, 1])
def test_linker_partition_equals_trackpy(gap):
    trackpy = pytest.importorskip("trackpy")
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(7 + gap)
    data = _bubbles(rng, drop_every=4 if gap else 0)
    row = np.arange(len(data))
    truth = _partition(data[:, 3], row)
    assert len(truth) == 9

    ours = track(
        Localisations({"frame": data[:, 0].astype(int), "y": data[:, 1], "x": data[:, 2],
                       "row": row.astype(float)}),
        max_distance=3.0, max_gap=gap, min_length=1, intensity_weight=0.0,
    )
    ours_partition = _partition(ours["track_id"], ours["row"])

    df = pd.DataFrame({"frame": data[:, 0].astype(int), "y": data[:, 1], "x": data[:, 2],
                       "row": row})
    trackpy.quiet()
    linked = trackpy.link(df, search_range=4.0, memory=gap)
    ref_partition = _partition(linked["particle"], linked["row"])

    assert ref_partition == truth  # the reference finds the true tracks ...
    assert ours_partition == ref_partition  # ... and so do we


# --- noise estimate -----------------------------------------------------------


def test_robust_sigma_is_scipy_mad_with_the_house_factor():
    from scipy.stats import median_abs_deviation

    from napari_cycleulm.arrays import MAD_TO_SIGMA, robust_sigma

    rng = np.random.default_rng(0)
    stack = rng.normal(2.0, 3.0, (21, 30, 40)).astype(np.float32)
    background = np.median(stack, axis=0)
    # Exactly the formula the noise estimates used before they shared this helper ...
    np.testing.assert_array_equal(robust_sigma(stack, axis=0, center=background),
                                  1.4826 * np.median(np.abs(stack - background), axis=0))
    assert robust_sigma(stack, axis=0).dtype == np.float32
    # ... which is scipy's normal-consistent MAD to 2e-6 and estimates a Gaussian's SD.
    np.testing.assert_allclose(robust_sigma(stack, axis=(1, 2)),
                               median_abs_deviation(stack, axis=(1, 2), scale="normal"),
                               rtol=2e-6)
    assert MAD_TO_SIGMA == pytest.approx(1 / 0.6744897501960817, rel=2e-6)
    assert float(robust_sigma(stack)) == pytest.approx(3.0, rel=0.03)
