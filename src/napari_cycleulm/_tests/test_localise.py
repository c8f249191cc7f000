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
from napari_cycleulm.localise.decon import deconvolve, fine_to_pixel
from napari_cycleulm.psf import PSF, gaussian_kernel
from napari_cycleulm.io.tables import Localisations

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


def _scattered_bubbles(seed=3, shape=(2, 70, 90), n=12, sigma=(1.5, 2.0)):
    """Bubbles everywhere, including on the frame borders and tile seams."""
    rng = np.random.default_rng(seed)
    t, h, w = shape
    pts = np.column_stack(
        [rng.integers(0, t, n), rng.uniform(0.5, h - 1.5, n), rng.uniform(0.5, w - 1.5, n)]
    )
    # on the borders (off the pixel centres: a bubble midway between two fine
    # cells has no unique sparse solution, so round-off picks a side)
    pts[:2, 1:] = [[0.3, 40.3], [h - 1.2, w - 0.8]]
    amps = rng.uniform(0.4, 1.0, n)
    return draw_bubbles(shape, pts, sigma, amps), pts, PSF(*sigma)


def test_decon_tiles_match_a_whole_frame_solve():
    # Tiles overlap by the kernel reach and mask the frame borders, so solving
    # small tiles gives the whole-frame maps (one tile covers 70 x 90 at 512; 16 gives 3 x 5 tiles).
    frames, _, psf = _scattered_bubbles()
    whole = deconvolve(frames, psf, n_iter=60, tile_size=512)
    tiled = deconvolve(frames, psf, n_iter=60, tile_size=16)
    assert np.abs(tiled - whole).max() < 0.05 * whole.max()
    assert np.abs(tiled - whole).sum() < 0.01 * np.abs(whole).sum()
    a = localise_decon(frames, psf, n_iter=60, tile_size=512)
    b = localise_decon(frames, psf, n_iter=60, tile_size=16)
    assert len(a) == len(b) and np.abs(a.positions - b.positions).max() < 0.05


@pytest.mark.parametrize("tile_size", [8, 512])
def test_decon_bubbles_on_the_frame_border_are_not_pulled_inwards(tile_size):
    # The model has no scatterers and no data term outside the frame, so a
    # bubble cut by the border keeps its position (a zero-padded frame would
    # pull it ~1 px inwards).
    pts = np.array([(0, 0.4, 50.0), (0, 45.0, 0.3), (0, 88.6, 50.0), (0, 45.0, 98.7)])
    frames = draw_bubbles((1, 90, 100), pts, (1.5, 2.0))  # tile_size 8: 4 x 4 tiles
    gt = Localisations({"frame": pts[:, 0], "y": pts[:, 1], "x": pts[:, 2]})
    err, fp, fn = match(gt, localise_decon(frames, PSF(1.5, 2.0), n_iter=100, tile_size=tile_size))
    assert fp == 0 and fn == 0 and err.max() < 0.15


def test_decon_skips_empty_and_weak_tiles_without_losing_detections():
    frames, pts, psf = _scattered_bubbles()
    frames[:, :, :30] *= 0.02  # a weak region: its tiles are skipped
    frames[:, 50:, 60:] = 0.0  # an empty region
    maps = deconvolve(frames, psf, n_iter=60, tile_size=16, skip_below=0.1)
    assert np.all(maps[:, :, : 2 * 10] == 0)  # skipped tile cores stay exactly 0
    # no data within the kernel reach: exactly 0 (and those tiles are never solved)
    assert np.all(deconvolve(frames, psf, n_iter=60, tile_size=16)[:, 112:, 140:] == 0)
    kw = dict(n_iter=60, tile_size=16, threshold=0.1, absolute_threshold=True)
    ref = localise_decon(frames, psf, skip_below=0.0, **kw)
    fast = localise_decon(frames, psf, **kw)  # skip_below defaults to threshold / 2
    assert len(ref) > 5 and len(fast) == len(ref)
    assert np.abs(fast.positions - ref.positions).max() < 0.05


def test_decon_tolerance_stops_converged_tiles_early(monkeypatch):
    from napari_cycleulm.localise import decon as decon_module

    steps = []
    fwd = decon_module._TileOp.forward  # one call per FISTA iteration on a border tile
    monkeypatch.setattr(decon_module._TileOp, "forward", lambda op, x: steps.append(1) or fwd(op, x))
    frames = draw_bubbles((1, 40, 48), [(0, 20.3, 23.6)], (1.5, 2.0), [0.8])
    psf = PSF(1.5, 2.0)
    full = localise_decon(frames, psf, n_iter=300, tol=0.0)
    assert len(steps) == 300  # tol=0: always n_iter iterations
    steps.clear()
    early = localise_decon(frames, psf, n_iter=300, tol=1e-2)
    assert 10 <= len(steps) < 150  # stops once the map changes < 1% per 5 iterations
    assert len(full) == len(early) == 1
    assert np.abs(full.positions - early.positions).max() < 0.05
    assert abs(full["intensity"][0] - early["intensity"][0]) < 0.02


def test_decon_rejects_bad_solver_parameters():
    good = np.zeros((1, 32, 32), np.float32)
    psf = PSF(1.5, 2.0)
    for kw, msg in (({"tol": -1.0}, "tol"), ({"tile_size": 4}, "tile_size"),
                    ({"skip_below": -0.1}, "skip_below"), ({"n_iter": 0}, "n_iter"),
                    ({"lam": -1.0}, "lam")):
        with pytest.raises(CycleULMError, match=msg):
            localise_decon(good, psf, **kw)
        with pytest.raises(CycleULMError, match=msg):
            deconvolve(good, psf, **kw)


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
