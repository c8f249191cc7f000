"""Specification of napari_cycleulm.evaluate.metrics."""

import json
import math
import time

import numpy as np
import pytest

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.evaluate.metrics import (
    MatchResult,
    cnr_db,
    evaluate_to_json,
    fwhm,
    line_profile,
    map_correlation,
    match_localisations,
    path_profile,
    precision_recall_sweep,
    px_to_um,
    rmse,
    ssim,
)
from napari_cycleulm.io.tables import Localisations


# -- CNR -------------------------------------------------------------------
def _cnr_image():
    img = np.zeros((10, 10))
    sig = np.zeros_like(img, bool)
    sig[2:4, 2:4] = True
    img[sig] = 10.0
    bg = np.zeros_like(sig)
    bg[6:8, 6:8] = True
    img[6:8, 6:8] = [[1.0, 3.0], [1.0, 3.0]]  # mean 2, std 1
    return img, sig, bg


def test_cnr_contrast_definition_hand_computed():
    img, sig, bg = _cnr_image()
    assert cnr_db(img, sig, bg) == pytest.approx(20 * math.log10(8.0 / 1.0))


def test_cnr_ratio_definition_hand_computed():
    img, sig, bg = _cnr_image()
    assert cnr_db(img, sig, bg, definition="ratio") == pytest.approx(20 * math.log10(5.0))


def test_cnr_constant_background_is_infinite():
    img, sig, bg = _cnr_image()
    img[bg] = 2.0
    assert cnr_db(img, sig, bg) == math.inf


def test_cnr_bad_input():
    img, sig, bg = _cnr_image()
    with pytest.raises(CycleULMError, match="empty"):
        cnr_db(img, np.zeros_like(sig), bg)
    with pytest.raises(CycleULMError, match="shape"):
        cnr_db(img, sig[:5], bg)
    with pytest.raises(CycleULMError, match="definition"):
        cnr_db(img, sig, bg, definition="snr")
    with pytest.raises(CycleULMError, match="positive"):
        cnr_db(-img, sig, bg, definition="ratio")


# -- FWHM / profiles -------------------------------------------------------
def test_fwhm_of_gaussian_profile():
    sigma = 3.0
    x = np.arange(101) - 50.3
    profile = 5.0 + 2.0 * np.exp(-0.5 * (x / sigma) ** 2)
    assert fwhm(profile) == pytest.approx(2.3548 * sigma, rel=0.01)
    assert fwhm(profile, spacing=0.1) == pytest.approx(0.23548 * sigma, rel=0.01)
    assert fwhm(profile, baseline=5.0) == pytest.approx(2.3548 * sigma, rel=0.01)


def test_fwhm_without_crossing_is_nan():
    assert math.isnan(fwhm(np.linspace(0, 1, 20)))  # peak at the end
    assert math.isnan(fwhm(np.ones(10)))  # flat
    with pytest.raises(CycleULMError):
        fwhm(np.ones((3, 3)))
    with pytest.raises(CycleULMError):
        fwhm(np.ones(5), spacing=0)


def test_line_profile_bilinear_and_fwhm_of_drawn_line():
    yy, xx = np.mgrid[0:41, 0:41]
    img = xx * 2.0 + yy  # linear: bilinear interpolation is exact
    d, v = line_profile(img, (5, 5), (5, 25))
    assert d[0] == 0 and d[-1] == pytest.approx(20)
    assert len(d) == 21
    np.testing.assert_allclose(v, 2 * np.linspace(5, 25, 21) + 5)
    d, v = line_profile(img, (1.5, 2.0), (1.5, 3.0), n=3, order=1)
    np.testing.assert_allclose(v, [5.5, 6.5, 7.5])  # bilinear on request
    # A vertical vessel of sigma 2 px across a diagonal line keeps its width along x.
    vessel = np.exp(-0.5 * ((xx - 20.0) / 2.0) ** 2)
    d, v = line_profile(vessel, (20, 0), (20, 40), n=401)
    assert fwhm(v, spacing=d[1] - d[0]) == pytest.approx(2.3548 * 2.0, rel=0.01)
    with pytest.raises(CycleULMError):
        line_profile(np.ones(5), (0, 0), (0, 1))


@pytest.mark.parametrize("order", [1, 3])
def test_path_profile_is_skimage_profile_line(order):
    """At profile_line's own sampling (ceil(L) + 1 points) the values are profile_line's (one line wide, nearest)."""
    from skimage.measure import profile_line

    img = np.random.default_rng(3).normal(size=(40, 50))
    for a, b in [((3.2, 4.7), (30.1, 41.9)), ((-4.0, 10.0), (20.0, 55.0)), ((12.0, 3.0), (12.0, 33.0))]:
        ref = profile_line(img, a, b, linewidth=1, order=order, mode="nearest")
        d, v = path_profile(img, [a, b], len(ref), order=order)
        np.testing.assert_allclose(v, ref, atol=1e-9)
        assert d[-1] == pytest.approx(math.hypot(b[0] - a[0], b[1] - a[1]))
        np.testing.assert_allclose(line_profile(img, a, b, len(ref), order=order)[1], v)


@pytest.mark.parametrize("n", [2, 7, 61, 241, 997])
def test_path_profile_takes_any_number_of_samples_along_a_polyline(n):
    """Samples finer or coarser than profile_line's ~1 px are at equal arc length along the path."""
    yy, xx = np.mgrid[0:80, 0:90]
    img = 0.5 * yy + 2.0 * xx + 3.0  # linear: splines reproduce it away from the edges
    verts = np.array([[20.0, 20.0], [20.0, 40.0], [50.0, 40.0], [50.0, 40.0], [55.0, 52.0]])
    d, v = path_profile(img, verts, n)
    length = 20 + 30 + 13
    np.testing.assert_allclose(d, np.linspace(0, length, n))
    cum = [0, 20, 50, 63]
    y = np.interp(d, cum, [20, 20, 50, 55])
    x = np.interp(d, cum, [20, 40, 40, 52])
    np.testing.assert_allclose(v, 0.5 * y + 2.0 * x + 3.0, atol=1e-6)
    with pytest.raises(CycleULMError, match="n must be"):
        path_profile(img, verts, 1)
    with pytest.raises(CycleULMError, match="order"):
        path_profile(img, verts, order=7)
    with pytest.raises(CycleULMError, match="vertices"):
        path_profile(img, [[1.0, 2.0]])


def test_cubic_profile_keeps_the_fwhm_of_a_gaussian_where_bilinear_widens_it():
    """A Gaussian ridge of sigma 1 px (FWHM 2.355 px), centre anywhere between pixels."""
    from napari_cycleulm.evaluate import peak_fwhm

    true = 2.0 * math.sqrt(2.0 * math.log(2.0))
    widths = {1: [], 3: []}
    yy = np.arange(60.0)[:, None] + np.zeros((1, 60))
    for y0 in np.linspace(30.0, 31.0, 11):
        img = np.exp(-0.5 * (yy - y0) ** 2)
        for order in widths:
            d, v = path_profile(img, [(18.0, 30.0), (42.0, 30.0)], 97, order=order)  # 4 per px
            widths[order].append(peak_fwhm(v, d[1] - d[0]))
    assert np.allclose(widths[3], true, rtol=0.03)
    assert max(widths[1]) > 1.05 * true  # the bilinear interpolant is wider between pixels


# -- Matching --------------------------------------------------------------
def test_match_shifted_detections_within_and_outside_tolerance():
    gt = Localisations({"frame": [0, 0, 1, 1], "y": [10, 20, 10, 30], "x": [10, 20, 10, 30]})
    shifts = np.array([[0.3, 0.4], [0.6, 0.8], [1.2, 1.6], [0.0, 0.0]])  # 0.5, 1.0, 2.0, 0
    det = gt.positions.copy()
    det[:, 1:] += shifts
    res = match_localisations(gt, det, tolerance=1.0)
    assert (res.tp, res.fp, res.fn) == (3, 1, 1)
    assert res.recall == pytest.approx(0.75) and res.precision == pytest.approx(0.75)
    assert res.f1 == pytest.approx(0.75)
    assert res.jaccard == pytest.approx(3 / 5)
    assert res.mean_error_px == pytest.approx(0.5)
    assert res.rmse_px == pytest.approx(math.sqrt((0.25 + 1.0 + 0.0) / 3))
    np.testing.assert_array_equal(res.gt_index, [0, 1, 3])
    np.testing.assert_array_equal(res.det_index, [0, 1, 3])
    np.testing.assert_allclose(res.errors, [0.5, 1.0, 0.0])
    np.testing.assert_allclose(res.errors_um(10.0), [5.0, 10.0, 0.0])
    np.testing.assert_allclose(res.errors_um((10.0, 0.0 + 20.0)), [np.hypot(3, 8), np.hypot(6, 16), 0])
    assert px_to_um(0.5, 12.0) == pytest.approx(6.0)


def test_match_respects_frames():
    gt = np.array([[0, 5.0, 5.0]])
    det = np.array([[1, 5.0, 5.0]])
    assert match_localisations(gt, det).tp == 0
    assert match_localisations(gt, det, per_frame=False).tp == 1


def test_hungarian_beats_greedy():
    # Greedy nearest-pair matching takes B-P (0.7) and leaves A-Q (2.4) out of
    # tolerance; the optimal assignment matches A-P (0.8) and B-Q (0.9).
    gt = np.array([[0, 0.0, 0.0], [0, 0.0, 1.5]])
    det = np.array([[0, 0.0, 0.8], [0, 0.0, 2.4]])
    res = match_localisations(gt, det, tolerance=1.0)
    assert res.tp == 2
    np.testing.assert_array_equal(res.det_index, [0, 1])
    assert res.mean_error_px == pytest.approx(0.85)


def test_match_empty_inputs_do_not_crash():
    empty = Localisations()
    gt = np.array([[0, 1.0, 1.0]])
    r = match_localisations(empty, gt)
    assert (r.tp, r.fp, r.fn, r.recall, r.precision, r.f1) == (0, 1, 0, 0.0, 0.0, 0.0)
    assert math.isnan(r.mean_error_px)
    r = match_localisations(gt, np.empty((0, 3)))
    assert (r.tp, r.fn, r.recall, r.precision) == (0, 1, 0.0, 0.0)
    r = match_localisations(empty, empty)
    assert r.tp == r.fp == r.fn == 0
    with pytest.raises(CycleULMError):
        match_localisations(np.ones((3, 2)), gt)
    with pytest.raises(CycleULMError):
        match_localisations(gt, gt, tolerance=-1)


def test_match_large_tables_quickly_and_correctly():
    rng = np.random.default_rng(1)
    n = 100_000
    gt = np.column_stack(
        [rng.integers(0, 500, n), rng.uniform(0, 256, n), rng.uniform(0, 256, n)]
    )
    det = gt.copy()
    det[:, 1:] += rng.normal(0, 0.2, (n, 2))
    perm = rng.permutation(n)
    t0 = time.perf_counter()
    res = match_localisations(gt, det[perm], tolerance=1.0)
    assert time.perf_counter() - t0 < 3.0
    assert res.recall > 0.98
    # Most matched detections are the true partners.
    assert np.mean(perm[res.det_index] == res.gt_index) > 0.97
    assert res.mean_error_px == pytest.approx(0.2 * math.sqrt(math.pi / 2), rel=0.05)


def test_match_dense_group_maximises_matches():
    # Both the dense and the sparse solver of a large group give the same optimum.
    import napari_cycleulm.evaluate.metrics as m

    rng = np.random.default_rng(2)
    gt = np.column_stack([np.zeros(400), rng.uniform(0, 20, 400), rng.uniform(0, 20, 400)])
    det = gt[:300].copy()
    det[:, 1:] += rng.normal(0, 0.5, (300, 2))
    dense = match_localisations(gt, det, 1.0)
    old = m._DENSE_LIMIT
    try:
        m._DENSE_LIMIT = 0
        sparse_res = match_localisations(gt, det, 1.0)
    finally:
        m._DENSE_LIMIT = old
    assert dense.tp == sparse_res.tp
    assert dense.errors.sum() == pytest.approx(sparse_res.errors.sum())


def test_precision_recall_sweep():
    gt = Localisations({"frame": [0] * 4, "y": [10, 20, 30, 40], "x": [10] * 4})
    det = Localisations(
        {"frame": [0] * 6, "y": [10, 20, 30, 40, 50, 60], "x": [10.5] * 6,
         "score": [0.9, 0.8, 0.7, 0.2, 0.5, 0.1]}
    )
    sweep = precision_recall_sweep(gt, det, thresholds=[0.6, 0.0, 0.15])
    assert [s["threshold"] for s in sweep] == [0.0, 0.15, 0.6]
    assert [s["n_detections"] for s in sweep] == [6, 5, 3]
    assert sweep[0]["recall"] == 1.0 and sweep[0]["precision"] == pytest.approx(4 / 6)
    assert sweep[1]["recall"] == 1.0 and sweep[1]["precision"] == pytest.approx(4 / 5)
    assert sweep[2]["recall"] == 0.75 and sweep[2]["precision"] == 1.0
    assert sweep[2]["mean_error_px"] == pytest.approx(0.5)
    assert len(precision_recall_sweep(gt, det)) >= 2
    with pytest.raises(CycleULMError, match="score"):
        precision_recall_sweep(gt, det.select(np.ones(6, bool)).with_columns(), score_column="q")


def test_the_accuracy_benchmark_uses_this_sweep(monkeypatch):
    """benchmarks/accuracy.py reports metrics.precision_recall_sweep (score >= threshold), no copy of it."""
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "accuracy.py"
    if not path.is_file():
        pytest.skip("benchmarks/ is not beside the package (installed without the repository)")
    spec = importlib.util.spec_from_file_location("_accuracy_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gt = Localisations({"frame": [0] * 4, "y": [10, 20, 30, 40], "x": [10] * 4})
    det = Localisations({"frame": [0] * 6, "y": [10, 20, 30, 40, 50, 60], "x": [10.5] * 6,
                         "score": [0.9, 0.8, 0.7, 0.2, 0.5, 0.1]})
    monkeypatch.setattr(bench, "iter_pipeline", lambda *a, **k: None)
    monkeypatch.setattr(bench, "drive", lambda _: SimpleNamespace(localisations=det))
    rows = bench.sweep(SimpleNamespace(frames=None, ground_truth=gt), None, "p", [0.2, 0.7], 0.0, 1.0)
    expected = precision_recall_sweep(gt, det, thresholds=[0.2, 0.7], tolerance=1.0)
    # A score equal to the threshold is kept (>=): 5 detections at 0.2, 3 at 0.7.
    assert [r["n"] for r in rows] == [e["n_detections"] for e in expected] == [5, 3]
    for r, e in zip(rows, expected):
        assert r["pipeline"] == "p"
        assert {k: r[k] for k in ("threshold", "recall", "precision", "f1", "mean_error_px")} == {
            k: e[k] for k in ("threshold", "recall", "precision", "f1", "mean_error_px")}


# -- maps ------------------------------------------------------------------
def test_rmse_known_value_and_normalisation():
    a = np.zeros((4, 4))
    b = np.full((4, 4), 3.0)
    assert rmse(a, b) == pytest.approx(3.0)
    assert rmse(np.ones((3, 3)), 5 * np.ones((3, 3)), normalise="max") == pytest.approx(0.0)
    with pytest.raises(CycleULMError):
        rmse(a, b[:2])


def test_map_correlation_is_scale_free_and_does_not_reward_an_empty_map():
    truth = np.zeros((40, 40))
    truth[20, 5:35] = 1.0  # a thin vessel
    assert map_correlation(truth, 3.0 * truth) == pytest.approx(1.0)
    empty = np.zeros_like(truth)
    assert map_correlation(empty, truth) == 0.0
    assert rmse(empty, truth, normalise="max") < rmse(np.roll(truth, 1, axis=0), truth, normalise="max") + 1e-12
    shifted = np.roll(truth, 1, axis=0)  # one pixel off
    assert map_correlation(shifted, truth) < 0.05
    assert map_correlation(shifted, truth, sigma_px=1.0) > 0.5
    assert map_correlation(-truth, truth) == pytest.approx(-1.0)
    with pytest.raises(CycleULMError, match="sigma_px"):
        map_correlation(truth, truth, sigma_px=-1.0)
    with pytest.raises(CycleULMError, match="same shape"):
        map_correlation(truth, truth[:5])


def test_ssim_identical_and_scaled_maps():
    rng = np.random.default_rng(3)
    a = rng.random((32, 32))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, 7.0 * a) == pytest.approx(1.0)  # max normalisation
    assert ssim(a, 7.0 * a, normalise=None) < 0.9
    assert ssim(a, rng.random((32, 32))) < 0.2


def test_evaluate_to_json_roundtrip(tmp_path):
    res = match_localisations(np.array([[0, 1.0, 1.0]]), np.empty((0, 3)))
    assert isinstance(res, MatchResult)
    data = evaluate_to_json(res, tmp_path / "m.json", note="x")
    loaded = json.loads((tmp_path / "m.json").read_text())
    assert loaded == data
    assert loaded["fn"] == 1 and loaded["mean_error_px"] is None and loaded["note"] == "x"
    d = match_localisations(np.array([[0, 1.0, 1.0]]), np.array([[0, 1.0, 1.5]])).to_dict(
        pixel_size_um=10.0, include_pairs=True
    )
    assert d["mean_error_um"] == pytest.approx(5.0) and d["det_index"] == [0]
