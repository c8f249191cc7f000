"""evaluate/studies.py: CNR and FWHM on the MIP, localisation accuracy tables and plots."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.evaluate import (
    SCORE_COLUMNS,
    cnr_on_mip,
    compare_cnr,
    compare_fwhm,
    fwhm_on_mip,
    method_from_name,
    mip,
    peak_fwhm,
    plot_precision_recall,
    plot_profiles,
    profile_along,
    rows_to_text,
    score_localisations,
    sweep_localisations,
    write_rows_csv,
)
from napari_cycleulm.io import read_stack, write_stack
from napari_cycleulm.evaluate.metrics import fwhm
from napari_cycleulm.io.tables import Localisations

GAUSS_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))  # FWHM / sigma


def _cnr_stack():
    """3 frames whose MIP has a signal square of 12 and a background of 1s and 3s (mean 2, std 1)."""
    img = np.where((np.arange(40)[:, None] + np.arange(50)[None, :]) % 2 == 0, 1.0, 3.0)
    img[10:20, 10:20] = 12.0
    frames = np.stack([img * 0.5, img, img * 0.25]).astype(np.float32)
    signal = np.zeros(img.shape, bool)
    signal[10:20, 10:20] = True
    background = np.zeros(img.shape, bool)
    background[25:35, 5:45] = True
    return frames, signal, background


def test_mip_is_the_maximum_over_time_block_by_block(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(7, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(mip(frames, block_size=2), frames.max(0))
    np.testing.assert_array_equal(mip(frames[0]), frames[0])
    write_stack(tmp_path / "s.tif", frames)
    np.testing.assert_array_equal(mip(read_stack(tmp_path / "s.tif", lazy=True), block_size=3), frames.max(0))
    with pytest.raises(CycleULMError):
        mip(np.zeros((2, 2, 2, 2)))
    with pytest.raises(CycleULMError, match="empty"):
        mip(np.zeros((0, 2, 2)))
    with pytest.raises(CycleULMError, match="numeric"):
        mip(np.full((2, 2, 2), "a"))


def test_mip_ignores_nan_and_an_all_nan_pixel_stays_nan(recwarn):
    """The NaN rule of the one MIP: NaN is "no value"; blocks do not change the answer."""
    frames = np.array([[[np.nan, 1.0, np.nan]], [[2.0, np.nan, np.nan]], [[1.0, 0.5, np.nan]]], np.float32)
    for block in (1, 2, 128):
        out = mip(frames, block_size=block)
        assert out.dtype == np.float32 and out.shape == (1, 3)
        np.testing.assert_array_equal(out, [[2.0, 1.0, np.nan]])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # no all-NaN warning
    # Complex (IQ) frames: the MIP of the magnitude.
    np.testing.assert_allclose(mip(np.array([[[3 + 4j]], [[1j]]])), [[5.0]])


def test_export_uses_the_evaluate_mip():
    """No second MIP in export.py: a stack's PNG and `cycleulm export --mip` project with evaluate.mip."""
    import napari_cycleulm.export as export

    assert export._mip is mip
    assert not hasattr(export, "_stack_mip")


def test_cnr_on_the_mip_matches_known_means_and_std():
    frames, signal, background = _cnr_stack()
    r = cnr_on_mip(frames, signal, background, name="raw")
    assert r.name == "raw"
    assert r.signal_mean == pytest.approx(12.0)
    assert r.background_mean == pytest.approx(2.0)
    assert r.background_std == pytest.approx(1.0)
    assert r.cnr_db == pytest.approx(20.0)  # 20 log10(|12 - 2| / 1)
    assert r.cnr_ratio_db == pytest.approx(20 * math.log10(6.0))  # 20 log10(12 / 2)
    assert (r.n_signal, r.n_background) == (100, 400)
    assert r.to_dict()["cnr_db"] == pytest.approx(20.0)


def test_background_around_the_signal_leaves_the_signal_out():
    frames, signal, _ = _cnr_stack()
    around = np.zeros_like(signal)
    around[5:25, 5:25] = True  # encloses the signal square
    r = cnr_on_mip(frames, signal, around)
    assert r.n_background == 400 - 100
    assert r.background_mean == pytest.approx(2.0)


def test_cnr_ratio_is_nan_for_non_positive_means_and_inf_for_flat_background():
    img = np.full((10, 10), -1.0)
    img[:3] = 5.0
    s = np.zeros((10, 10), bool)
    s[:3] = True
    r = cnr_on_mip(img, s, ~s)
    assert math.isnan(r.cnr_ratio_db)
    assert math.isinf(r.cnr_db)
    assert r.to_dict()["cnr_ratio_db"] is None


def test_cnr_compares_raw_and_mb_only_in_order():
    frames, signal, background = _cnr_stack()
    sharper = frames.copy()
    sharper[:, 25:35, 5:45] = 2.0  # flatter background: higher contrast
    sharper[1, 25, 5] = 2.5
    out = compare_cnr({"raw": frames, "MB-only": sharper}, signal, background)
    assert [r.name for r in out] == ["raw", "MB-only"]
    assert out[1].cnr_db > out[0].cnr_db


@pytest.mark.parametrize("kwargs, match", [
    ({"signal_mask": np.zeros((40, 50), bool)}, "signal region covers no pixel"),
    ({"background_mask": "signal"}, "background region"),
    ({"signal_mask": np.ones((4, 4), bool)}, "shape"),
])
def test_cnr_bad_regions_say_what_to_do(kwargs, match):
    frames, signal, background = _cnr_stack()
    args = {"signal_mask": signal, "background_mask": background, **kwargs}
    if isinstance(args["background_mask"], str):
        args["background_mask"] = signal
    with pytest.raises(CycleULMError, match=match):
        cnr_on_mip(frames, **args)


def _ridge(sigma, shape=(60, 60), y0=30.3, angle=0.0):
    """A Gaussian ridge along a line through (y0, 30) at ``angle`` (radians from the x axis)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    # distance of each pixel to the line
    d = (yy - y0) * math.cos(angle) - (xx - 30.0) * math.sin(angle)
    return np.exp(-0.5 * (d / sigma) ** 2)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0])
def test_fwhm_of_a_gaussian_line_across_it(sigma):
    frames = np.stack([_ridge(sigma) * 0.3, _ridge(sigma)])  # the MIP is the second frame
    p = fwhm_on_mip(frames, [[18.0, 30.0], [42.0, 30.0]], pixel_size_um=50.0, name="raw")
    assert p.fwhm_px == pytest.approx(GAUSS_FWHM * sigma, rel=0.03)
    assert p.fwhm_um == pytest.approx(p.fwhm_px * 50.0)
    assert p.distance_px[0] == 0 and p.distance_px[-1] == pytest.approx(24.0)
    assert p.values.max() == pytest.approx(1.0, abs=0.02)


def test_fwhm_of_an_oblique_line_and_a_path():
    img = _ridge(2.0, angle=math.radians(30))
    # perpendicular to the ridge through its centre
    n = np.array([math.cos(math.radians(30)), -math.sin(math.radians(30))])
    c = np.array([30.3, 30.0])
    line = [c - 10 * n, c + 10 * n]
    assert fwhm_on_mip(img, line).fwhm_px == pytest.approx(GAUSS_FWHM * 2.0, rel=0.03)
    path = [c - 10 * n, c - 3 * n, c + 10 * n]  # same line with a middle vertex
    d, v = profile_along(img, path)
    assert d[-1] == pytest.approx(20.0)
    assert fwhm_on_mip(img, path).fwhm_px == pytest.approx(GAUSS_FWHM * 2.0, rel=0.03)
    # (frame, y, x) vertices from a Shapes layer on a stack: the frame is ignored
    line3 = [[5, *line[0]], [5, *line[1]]]
    assert fwhm_on_mip(img, line3).fwhm_px == pytest.approx(fwhm_on_mip(img, line).fwhm_px)


def test_profile_along_is_the_metrics_path_profile():
    """One sampler: evaluate.profile_along only chooses the number of samples (4 per px by default)."""
    import napari_cycleulm.evaluate.studies as evaluate
    from napari_cycleulm.evaluate.metrics import path_profile

    img = _ridge(1.5, angle=0.3)
    path = [[10.0, 12.0], [40.5, 31.0], [45.0, 50.0]]
    d, v = profile_along(img, path)
    length = math.hypot(30.5, 19.0) + math.hypot(4.5, 19.0)
    assert len(d) == math.ceil(4 * length) + 1
    d2, v2 = path_profile(img, path, len(d))
    np.testing.assert_array_equal(d, d2)
    np.testing.assert_array_equal(v, v2)
    assert not hasattr(evaluate, "line_profile") and not hasattr(evaluate, "ndimage")


def test_compare_fwhm_raw_wider_than_mb_only():
    out = compare_fwhm({"raw": _ridge(3.0), "MB-only": _ridge(1.5)}, [[15, 30], [45, 30]])
    assert out[0].fwhm_px == pytest.approx(2 * out[1].fwhm_px, rel=0.05)
    assert out[0].fwhm_um is None


def test_profile_errors_and_unbracketed_peak():
    img = _ridge(2.0)
    with pytest.raises(CycleULMError, match="zero length"):
        fwhm_on_mip(img, [[10, 10], [10, 10]])
    with pytest.raises(CycleULMError, match="at least 2"):
        fwhm_on_mip(img, [[10, 10]])
    with pytest.raises(CycleULMError, match="outside"):
        fwhm_on_mip(img, [[-50, -50], [-40, -60]])
    with pytest.raises(CycleULMError, match="pixel_size_um"):
        fwhm_on_mip(img, [[10, 10], [20, 10]], pixel_size_um=0)
    # a line that stops on the ridge: the peak is not bracketed
    assert math.isnan(fwhm_on_mip(img, [[20, 30], [30.3, 30]]).fwhm_px)


def test_score_localisations_on_constructed_points():
    gt = Localisations({"frame": [0, 0, 1, 1], "y": [10.0, 20.0, 10.0, 30.0], "x": [10.0, 20.0, 10.0, 30.0]})
    det = Localisations({
        "frame": [0, 0, 1, 1, 0],
        "y": [10.3, 20.0, 10.0, 40.0, 10.0],
        "x": [10.4, 20.6, 10.0, 40.0, 10.0],
        "score": [0.9, 0.8, 0.7, 0.2, 0.1],
    })
    # gt 0 takes det 4 (error 0, beating det 0 at 0.5), gt 1 det 1 (0.6), gt 2 det 2 (0);
    # det 0 and det 3 (far) are false positives, gt 3 is missed
    rows = score_localisations(gt, {"[ncc] CEUS localisations": det, "[decon] CEUS localisations (2)": det.select([])},
                               tolerance=1.0, pixel_size_um=50.0)
    a, b = rows
    assert list(a) == list(SCORE_COLUMNS)
    assert a["method"] == "ncc" and b["method"] == "decon"
    assert (a["tp"], a["fp"], a["fn"]) == (3, 2, 1)
    assert a["precision"] == pytest.approx(3 / 5) and a["recall"] == pytest.approx(3 / 4)
    assert a["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert a["mean_error_px"] == pytest.approx((0.0 + 0.6 + 0.0) / 3)
    assert a["mean_error_um"] == pytest.approx(50 * 0.6 / 3)
    assert (b["tp"], b["precision"], b["recall"]) == (0, 0.0, 0.0) and math.isnan(b["mean_error_px"])
    # a tighter tolerance loses the 0.6 px match
    tight = score_localisations(gt, {"d": det}, tolerance=0.55)[0]
    assert tight["tp"] == 2 and tight["mean_error_um"] is None


def test_sweep_raises_precision_with_the_threshold_and_needs_scores():
    gt = Localisations({"frame": [0, 0, 1, 1], "y": [10.0, 20.0, 10.0, 30.0], "x": [10.0, 20.0, 10.0, 30.0]})
    det = Localisations({"frame": [0, 0, 1, 1], "y": [10.0, 20.0, 50.0, 5.0], "x": [10.0, 20.0, 50.0, 5.0],
                         "score": [0.9, 0.8, 0.3, 0.2]})
    curves = sweep_localisations(gt, {"a": det}, thresholds=[0.0, 0.5, 0.85])
    rows = curves["a"]
    assert [r["precision"] for r in rows] == pytest.approx([0.5, 1.0, 1.0])
    assert [r["recall"] for r in rows] == pytest.approx([0.5, 0.5, 0.25])
    with pytest.raises(CycleULMError, match="'b' has no 'score'"):
        sweep_localisations(gt, {"a": det, "b": Localisations({"frame": [0], "y": [1.0], "x": [1.0]})})
    with pytest.raises(CycleULMError, match="ground truth is empty"):
        score_localisations(Localisations(), {"a": det})
    with pytest.raises(CycleULMError, match="no detections"):
        score_localisations(gt, {})
    with pytest.raises(CycleULMError, match="tolerance"):
        score_localisations(gt, {"a": det}, tolerance=0)


def test_method_from_name():
    assert method_from_name("[cycleulm-loc] CEUS sample localisations") == "cycleulm-loc"
    assert method_from_name("[ncc] x localisations (3)") == "ncc"
    assert method_from_name("[ncc] scan [2] localisations") == "ncc"  # the leading tag, not a bracket in the source
    assert method_from_name("my points") == "my points"


def test_rows_as_tsv_and_csv(tmp_path):
    rows = [{"layer": "a", "f1": 0.123456, "mean_error_um": None, "x": float("nan")}]
    text = rows_to_text(rows)
    assert text.splitlines() == ["layer\tf1\tmean_error_um\tx", "a\t0.1235\t\tnan"]
    write_rows_csv(rows, tmp_path / "t.csv", ["layer", "f1"])
    with open(tmp_path / "t.csv", newline="") as fh:
        assert list(csv.reader(fh)) == [["layer", "f1"], ["a", "0.1235"]]


def test_plots_draw_one_line_per_profile_and_curve():
    from matplotlib.figure import Figure

    profiles = compare_fwhm({"raw": _ridge(3.0), "MB-only": _ridge(1.5)}, [[15, 30], [45, 30]],
                            pixel_size_um=50.0)
    ax = Figure().add_subplot(111)
    plot_profiles(ax, profiles)
    assert len(ax.lines) == 3  # two profiles and the half-maximum guide
    assert "um" in ax.get_xlabel()
    assert "FWHM" in ax.get_legend().get_texts()[0].get_text()
    sweeps = {"[a] x": [{"recall": 0.1, "precision": 1.0}, {"recall": 0.5, "precision": 0.6}]}
    plot_precision_recall(ax, sweeps, {"[a] x": (0.5, 0.6)})
    assert len(ax.lines) == 2 and ax.get_legend().get_texts()[0].get_text() == "a"


def test_fwhm_ignores_a_brighter_structure_at_the_end_of_the_line():
    d = np.linspace(0, 30, 121)
    values = np.exp(-0.5 * ((d - 10) / 2.0) ** 2) + np.clip(d - 25, 0, None) * 0.5  # ends on a bright edge
    assert math.isnan(fwhm(values, d[1]))  # the plain FWHM takes the bright end as the peak
    assert peak_fwhm(values, d[1]) == pytest.approx(GAUSS_FWHM * 2.0, rel=0.01)
    assert math.isnan(peak_fwhm(np.linspace(0, 1, 10)))  # no interior peak: not bracketed
