"""PSF model, estimation from bubbles, automatic picking and JSON I/O."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.psf import (
    FWHM_PER_SIGMA,
    PSF,
    REJECTION_KINDS,
    Rejection,
    bubble_patches,
    estimate_psf,
    estimate_psf_auto,
    gaussian_kernel,
    pick_isolated_bubbles,
    screen_bubbles,
    snap_to_maximum,
)
from napari_cycleulm.io.tables import Localisations

from .conftest import draw_bubbles


def _rotated_stack(sigma=(1.5, 2.5), theta=0.4, n_frames=6, seed=1):
    """Bubbles with a rotated Gaussian PSF (same convention as gaussian_kernel)."""
    rng = np.random.default_rng(seed)
    h = w = 64
    frames = np.zeros((n_frames, h, w), np.float32)
    pts = []
    for f in range(n_frames):
        for cy, cx in [(16, 16), (16, 46), (46, 16), (46, 46)]:
            y, x = cy + rng.uniform(-2, 2), cx + rng.uniform(-2, 2)
            frames[f] += rng.uniform(0.6, 1.0) * gaussian_kernel(
                sigma[0], sigma[1], theta, size=(h, w), center=(y, x)
            )
            pts.append((f, y, x))
    frames += rng.normal(0, 0.01, frames.shape).astype(np.float32)
    return frames, np.array(pts)


def test_estimate_recovers_sigma_from_isolated_bubbles(isolated_bubbles):
    frames, gt, sigma = isolated_bubbles
    est = estimate_psf(frames, gt, pixel_size_um=50.0)
    psf = est.psf
    assert est.n_used == len(gt) == psf.n_bubbles
    assert est.rejected == []
    assert psf.sigma_y_px == pytest.approx(sigma[0], rel=0.05)
    assert psf.sigma_x_px == pytest.approx(sigma[1], rel=0.05)
    assert psf.fwhm_y_px == pytest.approx(FWHM_PER_SIGMA * sigma[0], rel=0.05)
    assert psf.fwhm_x_um == pytest.approx(psf.fwhm_x_px * 50.0)
    assert psf.residual < 0.02
    assert psf.measured is not None and psf.measured.max() == pytest.approx(1.0)
    # Refined centres are sub-pixel accurate.
    err = np.abs(est.used[:, 1:] - gt.positions[est.used_index, 1:])
    assert err.max() < 0.1
    assert "40 bubble" in est.summary()


def test_estimate_from_rough_points_and_plain_array(isolated_bubbles):
    frames, gt, sigma = isolated_bubbles
    # Clicked to the nearest pixel plus one pixel off: still refined.
    pts = np.round(gt.positions) + np.array([0, 1, -1])
    psf = estimate_psf(frames, pts).psf
    assert psf.sigma_y_px == pytest.approx(sigma[0], rel=0.05)
    assert psf.sigma_x_px == pytest.approx(sigma[1], rel=0.05)


def test_estimate_recovers_rotation():
    frames, pts = _rotated_stack(sigma=(1.5, 2.5), theta=0.4)
    psf = estimate_psf(frames, pts).psf
    assert psf.theta_rad == pytest.approx(0.4, abs=0.05)
    assert psf.sigma_y_px == pytest.approx(1.5, rel=0.05)
    assert psf.sigma_x_px == pytest.approx(2.5, rel=0.05)
    flat = estimate_psf(frames, pts, fit_rotation=False).psf
    assert flat.theta_rad == 0.0


def test_rejects_border_points(isolated_bubbles):
    frames, gt, _ = isolated_bubbles
    # An extra frame holding one bubble 2.3 px from the top edge.
    frames = np.concatenate([frames, draw_bubbles((1, 64, 64), [(0, 2.3, 30.0)], (1.5, 2.0))])
    pts = np.vstack([gt.positions, [[10, 2.3, 30.0]]])
    est = estimate_psf(frames, pts)
    assert est.n_used == len(gt)
    assert [i for i, _ in est.rejected] == [len(gt)]
    assert "border" in est.rejected[0][1]


def test_rejects_bubbles_with_a_neighbour():
    pts, extra = [], []
    for f in range(4):
        for cy, cx in [(16, 16), (16, 46), (46, 16), (46, 46)]:
            pts.append((f, cy + 0.3 * f, cx - 0.2 * f))
    pts = np.array(pts)
    # A second bubble 6 px to the right of the first bubble in every frame.
    extra = pts[::4] + np.array([0, 0, 6.0])
    frames = draw_bubbles((4, 64, 64), np.vstack([pts, extra]), (1.5, 2.0),
                          np.r_[np.ones(len(pts)), 0.8 * np.ones(len(extra))])
    est = estimate_psf(frames, pts)
    rejected = dict(est.rejected)
    assert sorted(rejected) == list(range(0, len(pts), 4))
    assert all("second bubble" in why for why in rejected.values())
    assert est.n_used == len(pts) - 4
    assert est.psf.sigma_x_px == pytest.approx(2.0, rel=0.05)


def test_too_few_points_is_an_error(isolated_bubbles):
    frames, gt, _ = isolated_bubbles
    with pytest.raises(CycleULMError, match="only 2 usable"):
        estimate_psf(frames, gt.positions[:2])
    with pytest.raises(CycleULMError, match="no bubble points"):
        estimate_psf(frames, np.zeros((0, 3)))
    with pytest.raises(CycleULMError, match="no bubble points"):
        estimate_psf(frames, Localisations())
    with pytest.raises(CycleULMError, match=r"\(N, 3\)"):
        estimate_psf(frames, np.zeros((4, 5)))


def test_few_points_warn(isolated_bubbles):
    frames, gt, sigma = isolated_bubbles
    with pytest.warns(UserWarning, match="only 5 bubbles"):
        psf = estimate_psf(frames, gt.positions[:5]).psf
    assert psf.sigma_x_px == pytest.approx(sigma[1], rel=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        estimate_psf(frames, gt.positions[:10])


def test_points_in_missing_frames_or_outside_are_rejected(isolated_bubbles):
    frames, gt, _ = isolated_bubbles
    pts = np.vstack([gt.positions[:12], [[20, 16, 16], [-1, 16, 16], [0, 80.0, 16]]])
    est = estimate_psf(frames, pts)
    reasons = dict(est.rejected)
    assert "frame 20 does not exist" in reasons[12]
    assert "frame -1 does not exist" in reasons[13]
    assert "outside" in reasons[14]
    assert est.n_used == 12
    bad = np.array([[20, 16, 16], [30, 16, 46], [11, 46, 46], [0, 16, 16]])
    with pytest.raises(CycleULMError, match="frame 20 does not exist"):
        estimate_psf(frames, bad)


def test_pick_isolated_bubbles_returns_distinct_true_bubbles(isolated_bubbles):
    frames, gt, _ = isolated_bubbles
    picked = pick_isolated_bubbles(frames, n=20)
    assert picked.shape == (20, 3)
    gtp = gt.positions
    matches = []
    for f, y, x in picked:
        same = gtp[gtp[:, 0] == f]
        d = np.hypot(same[:, 1] - y, same[:, 2] - x)
        assert d.min() < 1.0
        matches.append((f, int(np.argmin(d))))
    assert len(set(matches)) == len(matches)
    # Spread over frames rather than taken from one.
    assert len(np.unique(picked[:, 0])) >= 5
    assert np.array_equal(picked, pick_isolated_bubbles(frames, n=20))


def test_pick_skips_close_pairs():
    pts = np.array([[0, 20, 20], [0, 20, 27], [0, 44, 44]], float)
    frames = draw_bubbles((1, 64, 64), pts, (1.5, 2.0), [1.0, 0.9, 0.7])
    picked = pick_isolated_bubbles(frames, n=10)
    assert picked.tolist() == [[0.0, 44.0, 44.0]]


def test_auto_estimate(isolated_bubbles):
    frames, _, sigma = isolated_bubbles
    est = estimate_psf_auto(frames, n=20)
    assert est.n_used == est.psf.n_bubbles >= 15
    assert est.psf.sigma_y_px == pytest.approx(sigma[0], rel=0.1)
    assert est.psf.sigma_x_px == pytest.approx(sigma[1], rel=0.1)
    with pytest.raises(CycleULMError, match="isolated bubble"):
        estimate_psf_auto(np.zeros((3, 64, 64)))



def test_auto_estimate_cuts_smaller_patches_for_a_wide_crowded_psf():
    # A wide PSF (sigma 4 px) and every bubble with a neighbour 16 px to its
    # right: inside a 4-sigma patch (so no bubble is usable there), outside a
    # 3-sigma one.  The automatic estimate falls back to smaller patches.
    rng = np.random.default_rng(3)
    sigma = (4.0, 4.0)
    pts, amps = [], []
    for f in range(20):
        y, x = rng.uniform(40, 56), rng.uniform(34, 44)
        pts += [(f, y, x), (f, y + rng.uniform(-1, 1), x + 16)]
        amps += [1.0, 0.8]
    frames = draw_bubbles((20, 96, 96), np.array(pts), sigma, amps)
    frames += rng.normal(0, 0.005, frames.shape).astype(np.float32)
    firsts = np.array(pts[::2])
    with pytest.raises(CycleULMError, match="second bubble"):
        estimate_psf(frames, firsts)  # the default 4-sigma patch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        est = estimate_psf_auto(frames)
    assert est.n_used >= 3
    assert est.psf.sigma_y_px == pytest.approx(sigma[0], rel=0.1)
    assert est.psf.sigma_x_px == pytest.approx(sigma[1], rel=0.1)
    with pytest.raises(CycleULMError, match="radius_sigmas"):
        pick_isolated_bubbles(frames, radius_sigmas=0)

def test_shrink_halves_fwhm():
    psf = PSF(1.5, 2.0, 0.1, pixel_size_um=100.0)
    small = psf.shrink(0.5)
    assert small.fwhm_y_px == pytest.approx(psf.fwhm_y_px / 2)
    assert small.fwhm_x_um == pytest.approx(psf.fwhm_x_um / 2)
    assert small.theta_rad == psf.theta_rad
    assert psf.mbonly().sigma_x_px == pytest.approx(1.0)
    assert PSF(1.0, 1.0).fwhm_x_um is None


def test_psf_rejects_bad_sigma():
    with pytest.raises(CycleULMError, match="sigma_y_px"):
        PSF(-1.0, 2.0)
    with pytest.raises(CycleULMError, match="pixel_size_um"):
        PSF(1.0, 2.0, pixel_size_um=0.0)


def test_json_round_trip(tmp_path, isolated_bubbles):
    frames, gt, _ = isolated_bubbles
    psf = estimate_psf(frames, gt, pixel_size_um=75.0).psf
    path = tmp_path / "sub" / "psf.json"
    psf.to_json(path)
    d = json.loads(path.read_text())
    for key in ("fwhm_y_px", "fwhm_x_px", "sigma_y_px", "sigma_x_px", "theta_rad",
                "pixel_size_um", "fwhm_y_um", "fwhm_x_um", "n_bubbles", "residual",
                "kernel", "measured", "mbonly_kernel", "version"):
        assert key in d
    assert np.allclose(d["kernel"], psf.kernel, atol=1e-6)
    assert np.allclose(d["mbonly_kernel"], psf.shrink(0.5).kernel, atol=1e-6)
    back = PSF.from_json(path)
    assert back.sigma_y_px == pytest.approx(psf.sigma_y_px)
    assert back.sigma_x_px == pytest.approx(psf.sigma_x_px)
    assert back.theta_rad == pytest.approx(psf.theta_rad)
    assert back.pixel_size_um == 75.0
    assert back.n_bubbles == psf.n_bubbles
    assert back.residual == pytest.approx(psf.residual)
    assert np.allclose(back.measured, psf.measured, atol=1e-6)

    plain = PSF(1.0, 2.0)
    plain.to_json(path)
    d = json.loads(path.read_text())
    assert d["fwhm_y_um"] is None and d["measured"] is None and d["residual"] is None
    back = PSF.from_json(path)
    assert back.pixel_size_um is None and back.measured is None and np.isnan(back.residual)


def test_json_errors(tmp_path):
    path = tmp_path / "psf.json"
    with pytest.raises(CycleULMError, match="does not exist"):
        PSF.from_json(path)
    path.write_text("{not json")
    with pytest.raises(CycleULMError, match="not valid JSON"):
        PSF.from_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(CycleULMError, match="JSON object"):
        PSF.from_json(path)
    good = PSF(1.0, 2.0).to_dict()
    for change, msg in [
        ({"sigma_y_px": -1.0}, "positive"),
        ({"sigma_x_px": "wide"}, "finite number"),
        ({"n_bubbles": -3}, "n_bubbles"),
        ({"pixel_size_um": -5}, "pixel_size_um"),
        ({"version": 99}, "newer"),
        ({"measured": [1, 2, 3]}, "measured"),
    ]:
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(CycleULMError, match=msg):
            PSF.from_json(path)
    missing = {k: v for k, v in good.items() if k not in ("sigma_y_px", "fwhm_y_px")}
    path.write_text(json.dumps(missing))
    with pytest.raises(CycleULMError, match="sigma_y_px"):
        PSF.from_json(path)


# ---------------------------------------------------------------------------
# Picking by hand: snapping clicks, gallery patches, rejection reasons
# ---------------------------------------------------------------------------


def test_snap_moves_rough_clicks_onto_the_bubble_peaks(isolated_bubbles):
    frames, gt, _ = isolated_bubbles
    truth = gt.positions
    # Clicks 1-2 px off in y and x, as a user's clicks are.
    offsets = np.array([[0, 2, -1], [0, -2, 1], [0, 1, 2], [0, -1, -2]])
    clicks = np.round(truth) + offsets[np.arange(len(truth)) % 4]
    snapped = snap_to_maximum(frames, clicks, radius_px=3)
    assert snapped.shape == truth.shape
    np.testing.assert_array_equal(snapped[:, 0], truth[:, 0])
    # Integer pixel positions within one pixel of the sub-pixel truth.
    np.testing.assert_array_equal(snapped, np.round(snapped))
    assert np.hypot(*(snapped[:, 1:] - truth[:, 1:]).T).max() < 1.0
    # Each is the brightest pixel of its frame within 3 px of the click.
    yy, xx = np.mgrid[0:64, 0:64]
    for (f, cy, cx), (_, y, x) in zip(clicks.astype(int), snapped.astype(int)):
        disk = np.hypot(yy - cy, xx - cx) <= 3
        assert frames[f, y, x] == frames[f][disk].max()
    # Snapping twice stays on the bubble; the input is left alone.
    again = snap_to_maximum(frames, snapped, radius_px=3)
    assert np.abs(again - snapped).max() <= 1
    assert np.abs(clicks - (np.round(truth) + offsets[np.arange(len(truth)) % 4])).max() == 0


def test_snap_searches_only_within_the_radius():
    frames = draw_bubbles((1, 32, 32), [(0, 16, 10), (0, 16, 20)], (1.0, 1.0), [0.5, 1.0])
    # 2 px right of the dim bubble: radius 3 finds it, not the brighter one 8 px away.
    assert snap_to_maximum(frames, [[0, 16, 12]], radius_px=3).tolist() == [[0, 16, 10]]
    assert snap_to_maximum(frames, [[0, 16, 12]], radius_px=10).tolist() == [[0, 16, 20]]
    # The search region is a disk: a peak at distance 3.6 (2, 3) is outside radius 3.
    assert snap_to_maximum(frames, [[0, 18, 13]], radius_px=3)[0, 1:].tolist() != [16, 10]
    # Radius 0 only rounds to the nearest pixel.
    assert snap_to_maximum(frames, [[0.2, 14.6, 12.4]], radius_px=0).tolist() == [[0, 15, 12]]


def test_snap_respects_the_image_border_and_single_frames():
    img = draw_bubbles((1, 20, 20), [(0, 0.2, 19.0)], (1.0, 1.0))[0]
    # A click next to a bubble in the corner stays inside the image.
    out = snap_to_maximum(img, [[0, 1.4, 17.6]], radius_px=3)
    assert out.tolist() == [[0, 0, 19]]
    # (y, x) points are accepted for a single frame; no points give (0, 3).
    assert snap_to_maximum(img, [[1.4, 17.6]], radius_px=3).tolist() == [[0, 0, 19]]
    assert snap_to_maximum(img, np.zeros((0, 3))).shape == (0, 3)


def test_snap_bad_input_is_a_clear_error(isolated_bubbles):
    frames, _, _ = isolated_bubbles
    with pytest.raises(CycleULMError, match="radius_px"):
        snap_to_maximum(frames, [[0, 10, 10]], radius_px=-1)
    with pytest.raises(CycleULMError, match="radius_px"):
        snap_to_maximum(frames, [[0, 10, 10]], radius_px="3")
    with pytest.raises(CycleULMError, match="frame 12, which does not exist"):
        snap_to_maximum(frames, [[0, 10, 10], [12, 10, 10]])
    with pytest.raises(CycleULMError, match="outside the 64x64 image"):
        snap_to_maximum(frames, [[0, 10, 70]])
    with pytest.raises(CycleULMError, match=r"\(N, 3\)"):
        snap_to_maximum(frames, np.zeros((2, 4)))
    with pytest.raises(CycleULMError, match="NaN"):
        snap_to_maximum(frames, [[0, np.nan, 10]])
    with pytest.raises(CycleULMError, match="complex"):
        snap_to_maximum(frames.astype(np.complex64), [[0, 10, 10]])
    with pytest.raises(CycleULMError, match="stack"):
        snap_to_maximum(np.zeros((2, 2, 8, 8)), [[0, 1, 1]])


def test_bubble_patches_are_centred_and_padded_with_nan(isolated_bubbles):
    frames, gt, _ = isolated_bubbles
    pts = np.array([[3, 20, 30], [0, 1, 62], [20, 5, 5]])
    patches = bubble_patches(frames, pts, radius_px=4)
    assert patches.shape == (3, 9, 9) and patches.dtype == np.float32
    np.testing.assert_array_equal(patches[0], frames[3, 16:25, 26:35])
    # Near the corner: the part outside the image is NaN, the rest is the image.
    assert np.isnan(patches[1, :3]).all() and np.isnan(patches[1, :, -3:]).all()
    np.testing.assert_array_equal(patches[1, 3:, :6], frames[0, 0:6, 58:64])
    # A frame that does not exist gives an all-NaN patch, not an error.
    assert np.isnan(patches[2]).all()
    assert bubble_patches(frames, np.zeros((0, 3))).shape == (0, 17, 17)
    with pytest.raises(CycleULMError, match="radius_px"):
        bubble_patches(frames, pts, radius_px=0)


def test_screen_bubbles_gives_the_reasons_estimate_psf_uses(isolated_bubbles):
    frames, gt, _ = isolated_bubbles
    pts = np.vstack([gt.positions[:12], [[20, 16, 16], [0, 80.0, 16], [1, 2.0, 30.0], [2, 30.0, 31.0]]])
    est = estimate_psf(frames, pts)
    reasons = screen_bubbles(frames, pts)
    assert len(reasons) == len(pts)
    assert [i for i, why in enumerate(reasons) if why is None] == est.used_index.tolist()
    assert [(i, why) for i, why in enumerate(reasons) if why is not None] == est.rejected
    kinds = [why.kind for why in reasons[12:]]
    assert kinds == ["frame", "outside", "border", "dim"]
    assert all(isinstance(why, Rejection) for why in reasons[12:])
    # Too few usable bubbles for an estimate: screening still says why for each.
    few = screen_bubbles(frames, pts[12:])
    assert all(why is not None for why in few)


def test_rejection_kinds_cover_every_reason():
    # A second bubble 9 px away is a neighbour; 6 px away the two merge and the fit fails.
    for dx, kind in [(9, "neighbour"), (6, "fit")]:
        pts = np.array([[0, 20, 20], [0, 20, 20 + dx]], float)
        frames = draw_bubbles((1, 64, 64), pts, (1.5, 2.0), [1.0, 0.8])
        (why,) = screen_bubbles(frames, pts[:1])
        assert why.kind == kind, why
    assert set(REJECTION_KINDS) == {"frame", "outside", "border", "dim", "neighbour", "fit", "other"}


def test_a_rejection_is_its_message_with_a_structured_kind():
    """The kind is data set where the bubble is rejected, never guessed from the English message."""
    import copy
    import pickle

    import napari_cycleulm.psf.fit as psf_module

    why = Rejection("a second bubble in the patch", "fit")  # the text does not decide the kind
    assert why == "a second bubble in the patch" and why.kind == "fit"
    for back in (pickle.loads(pickle.dumps(why)), copy.deepcopy(why)):
        assert back == why and back.kind == "fit"
    assert json.loads(json.dumps({"why": why})) == {"why": "a second bubble in the patch"}
    with pytest.raises(ValueError, match="kind"):
        Rejection("too dim", "dark")
    assert not hasattr(psf_module, "rejection_kind")  # no substring sorting beside the kind


def test_psf_finds_local_maxima_with_the_localisers_peak_finder(isolated_bubbles, monkeypatch):
    """Bubble picking and the second-bubble check use localise.peaks.find_peaks, not their own filter."""
    from scipy import ndimage

    import napari_cycleulm.localise.peaks as peaks
    import napari_cycleulm.psf.fit as psf_module

    img = np.random.default_rng(5).normal(size=(30, 40))
    expected = (ndimage.maximum_filter(img, size=3, mode="nearest") == img) & (img > 0.5)
    np.testing.assert_array_equal(psf_module._local_maxima(img, 0.5), expected)
    calls = []
    real = peaks.find_peaks
    monkeypatch.setattr(peaks, "find_peaks", lambda *a, **k: calls.append(k) or real(*a, **k))
    frames, gt, _ = isolated_bubbles
    pick_isolated_bubbles(frames[:2], n=5)
    n_pick = len(calls)
    screen_bubbles(frames, gt.positions[:3])
    assert n_pick >= 2 and len(calls) > n_pick
    assert all(k == {"min_distance": 1} for k in calls)
