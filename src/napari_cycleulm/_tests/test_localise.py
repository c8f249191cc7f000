"""Specification of the conventional localisers (NCC, sparse deconvolution) and peak tools."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.localise import (
    find_peaks,
    localise,
    localise_decon,
    localise_ncc,
    ncc_maps,
    refine_subpixel,
)
from napari_cycleulm.localise.decon import fine_to_pixel
from napari_cycleulm.psf import PSF, gaussian_kernel
from napari_cycleulm.tables import Localisations

from .conftest import draw_bubbles


def match(gt: Localisations, found: Localisations, max_dist: float = 2.0):
    """Hungarian matching per frame -> (errors of matched pairs, false positives, misses)."""
    errors, fp, fn = [], 0, 0
    for f in np.union1d(gt["frame"], found["frame"]):
        g = gt.positions[gt["frame"] == f][:, 1:]
        p = found.positions[found["frame"] == f][:, 1:]
        if len(g) == 0 or len(p) == 0:
            fp += len(p)
            fn += len(g)
            continue
        d = np.hypot(g[:, None, 0] - p[None, :, 0], g[:, None, 1] - p[None, :, 1])
        r, c = linear_sum_assignment(d)
        ok = d[r, c] <= max_dist
        errors += list(d[r, c][ok])
        fp += len(p) - int(ok.sum())
        fn += len(g) - int(ok.sum())
    return np.array(errors), fp, fn


# ---------------------------------------------------------------------------
# Peaks
# ---------------------------------------------------------------------------
def test_find_peaks_nms_threshold_border_and_max_peaks():
    m = np.zeros((2, 20, 20), np.float32)
    m[0, 5, 5], m[0, 5, 7], m[0, 15, 15] = 1.0, 0.8, 0.6  # (5,7) within 2 px of (5,5)
    m[0, 0, 10] = 0.9  # on the border
    m[1, 10, 10] = 0.4  # below threshold
    f, y, x, v = find_peaks(m, 0.5, min_distance=2)
    assert list(zip(f, y, x)) == [(0, 5, 5), (0, 0, 10), (0, 15, 15)]  # by decreasing value
    assert np.allclose(v, [1.0, 0.9, 0.6])
    f, y, x, v = find_peaks(m, 0.5, min_distance=1)
    assert (0, 5, 7) in list(zip(f, y, x))
    f, y, x, _ = find_peaks(m, 0.5, min_distance=2, exclude_border=2)
    assert (0, 0, 10) not in list(zip(f, y, x))
    f, *_ = find_peaks(m, 0.5, min_distance=2, max_peaks=1)
    assert f.tolist() == [0]


def test_find_peaks_breaks_plateau_ties_deterministically():
    m = np.zeros((1, 10, 10), np.float32)
    m[0, 4:6, 4:6] = 1.0  # a 2x2 plateau is one peak, at its first pixel in raster order
    f, y, x, _ = find_peaks(m, 0.5, min_distance=1)
    assert list(zip(y, x)) == [(4, 4)]


@pytest.mark.parametrize("method", ["parabolic", "gaussian", "centroid"])
def test_refine_subpixel_on_a_sampled_gaussian(method):
    true = (10.3, 12.6)
    img = gaussian_kernel(2.0, 2.0, size=(24, 24), center=true)[None]
    yr, xr = refine_subpixel(img, [0], [10], [13], method=method)
    tol = {"gaussian": 1e-3, "parabolic": 0.05, "centroid": 0.25}[method]
    assert abs(yr[0] - true[0]) < tol and abs(xr[0] - true[1]) < tol


# ---------------------------------------------------------------------------
# NCC
# ---------------------------------------------------------------------------
def test_ncc_recovers_isolated_bubbles(isolated_bubbles):
    frames, gt, sigma = isolated_bubbles
    locs = localise_ncc(frames, PSF(*sigma))
    err, fp, fn = match(gt, locs)
    assert fp == 0 and fn == 0
    assert err.mean() < 0.2 and err.max() < 0.5
    assert set(locs.names) >= {"frame", "y", "x", "intensity", "score"}
    assert np.all((locs["score"] > 0.5) & (locs["score"] <= 1.0))
    # intensity is the fitted template amplitude: close to the true amplitude
    assert np.median(locs["intensity"]) == pytest.approx(np.median(gt["amplitude"]), rel=0.15)


def test_ncc_accepts_a_kernel_array_even_sized(isolated_bubbles):
    frames, gt, sigma = isolated_bubbles
    # An even-sized kernel centred on its geometric centre (a half-pixel).
    kern = gaussian_kernel(*sigma, size=(12, 16))
    err, fp, fn = match(gt, localise_ncc(frames, kern))
    assert fp == 0 and fn == 0 and err.mean() < 0.2


def test_ncc_scores_are_bounded_and_flat_background_scores_zero():
    frames = np.zeros((1, 40, 40), np.float32)
    frames[0] += draw_bubbles((1, 40, 40), [(0, 20.0, 20.0)], (1.5, 2.0))[0]
    scores = ncc_maps(frames, PSF(1.5, 2.0))
    assert scores.shape == frames.shape
    assert scores.max() == pytest.approx(1.0, abs=1e-3)
    assert np.all(np.abs(scores) <= 1.0)
    # A constant (noise-free) frame has no structure and gives no detection.
    assert len(localise_ncc(np.full((2, 40, 40), 3.0, np.float32), PSF(1.5, 2.0))) == 0


def test_ncc_max_per_frame_keeps_the_best():
    pts = [(0, 10.0, 10.0), (0, 30.0, 30.0), (0, 10.0, 30.0)]
    frames = draw_bubbles((1, 40, 40), pts, (1.5, 2.0), amplitudes=[1, 1, 1])
    assert len(localise_ncc(frames, PSF(1.5, 2.0))) == 3
    assert len(localise_ncc(frames, PSF(1.5, 2.0), max_per_frame=2)) == 2


# ---------------------------------------------------------------------------
# Deconvolution
# ---------------------------------------------------------------------------
def test_fine_grid_cells_are_centred_on_pixels():
    assert np.allclose(fine_to_pixel([0, 1, 2, 3], 2), [-0.25, 0.25, 0.75, 1.25])
    assert np.allclose(fine_to_pixel([0, 1, 2, 3], 3), [-1 / 3, 0, 1 / 3, 2 / 3])
    assert np.allclose(fine_to_pixel([5], 1), [5])


def test_decon_recovers_isolated_bubbles(isolated_bubbles):
    frames, gt, sigma = isolated_bubbles
    locs = localise_decon(frames[:5], PSF(*sigma), n_iter=60)  # 20 bubbles keep it fast
    gt = gt.in_frames(0, 5)
    err, fp, fn = match(gt, locs)
    assert fp == 0 and fn == 0
    assert err.mean() < 0.2 and err.max() < 0.5
    # intensity is the recovered amplitude of the bubble
    gt_amp = np.sort(gt["amplitude"])
    assert np.abs(np.sort(locs["intensity"]) - gt_amp).mean() < 0.1


def test_decon_separates_two_close_bubbles():
    sigma = (1.5, 2.0)
    psf = PSF(*sigma)
    sep = 1.5 * psf.fwhm_x_px  # ~7 px along x
    pts = np.array([(0, 20.2, 18.3), (0, 20.2, 18.3 + sep)])
    frames = draw_bubbles((1, 40, 44), pts, sigma, amplitudes=[1.0, 0.8])
    frames += np.random.default_rng(1).normal(0, 0.01, frames.shape).astype(np.float32)
    gt = Localisations({"frame": pts[:, 0], "y": pts[:, 1], "x": pts[:, 2]})
    err, fp, fn = match(gt, localise_decon(frames, psf, n_iter=60))
    assert fp == 0 and fn == 0 and err.max() < 0.3


def test_decon_with_kernel_array_and_upsampling_one(isolated_bubbles):
    frames, gt, sigma = isolated_bubbles
    kern = gaussian_kernel(*sigma)
    locs = localise_decon(frames[:3], kern, upsampling=1, n_iter=60)
    err, fp, fn = match(gt.in_frames(0, 3), locs)
    assert fp == 0 and fn == 0 and err.mean() < 0.2


def test_decon_absolute_threshold_and_empty_result():
    frames = np.zeros((2, 32, 32), np.float32)
    frames[0] = draw_bubbles((1, 32, 32), [(0, 16.0, 16.0)], (1.5, 2.0), [0.5])[0]
    psf = PSF(1.5, 2.0)
    locs = localise_decon(frames, psf, n_iter=40, threshold=0.3, absolute_threshold=True)
    assert len(locs) == 1 and locs["frame"][0] == 0
    assert len(localise_decon(frames, psf, n_iter=40, threshold=0.6, absolute_threshold=True)) == 0
    assert len(localise_decon(np.zeros((2, 32, 32), np.float32), psf, n_iter=10)) == 0


def test_dispatcher(isolated_bubbles):
    frames, gt, sigma = isolated_bubbles
    a = localise(frames[:2], PSF(*sigma), method="ncc")
    b = localise_ncc(frames[:2], PSF(*sigma))
    assert np.allclose(a.positions, b.positions)
    assert len(localise(frames[:2], PSF(*sigma), method="decon", n_iter=30)) == 8
    with pytest.raises(CycleULMError, match="unknown localisation method"):
        localise(frames, PSF(*sigma), method="magic")


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [localise_ncc, localise_decon])
def test_bad_input_is_rejected(fn):
    good = np.zeros((2, 32, 32), np.float32)
    psf = PSF(1.5, 2.0)
    nan = good.copy()
    nan[0, 3, 3] = np.nan
    with pytest.raises(CycleULMError, match="NaN"):
        fn(nan, psf)
    with pytest.raises(CycleULMError, match="shape"):
        fn(np.zeros((2, 2, 32, 32), np.float32), psf)
    with pytest.raises(CycleULMError, match="empty"):
        fn(np.zeros((0, 32, 32), np.float32), psf)
    with pytest.raises(CycleULMError, match="psf is missing"):
        fn(good, None)
    with pytest.raises(CycleULMError, match="larger than the frames"):
        fn(np.zeros((2, 8, 8), np.float32), psf)
    with pytest.raises(CycleULMError, match="2-D"):
        fn(good, np.ones(5))
