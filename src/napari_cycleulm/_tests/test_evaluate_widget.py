"""GUI: the Evaluate widget (CNR, FWHM and localisation accuracy tabs) in a real viewer."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import numpy as np
import pytest

pytest.importorskip("napari")

from napari_cycleulm._tests._gui import wait_for_worker  # noqa: E402
from napari_cycleulm._napari.widgets.evaluate_widget import (  # noqa: E402
    BACKGROUND_LAYER,
    LINE_LAYER,
    SIGNAL_LAYER,
    EvaluateWidget,
)
from napari_cycleulm.evaluate import cnr_on_mip, fwhm_on_mip  # noqa: E402
from napari_cycleulm.roi import rois_to_mask  # noqa: E402

pytestmark = pytest.mark.gui

GAUSS_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


def press(qtbot, panel, button=None):
    """Click a panel's Run button (or ``button``) and wait for its worker; return the error, if any."""
    (button or panel.run_button).native.click()
    wait_for_worker(qtbot, panel)
    return panel.last_error


def _vessel(sigma, noise, seed):
    """10 frames of 64x64: a horizontal vessel (Gaussian across, centre y = 30.3) plus noise."""
    rng = np.random.default_rng(seed)
    yy = np.arange(64, dtype=float)[:, None]
    ridge = np.exp(-0.5 * ((yy - 30.3) / sigma) ** 2) * np.ones((1, 64))
    return (ridge[None] + noise * rng.random((10, 64, 64))).astype(np.float32)


@pytest.fixture
def eval_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    meta = {"pixel_size_um": 50.0, "frame_rate_hz": 500.0}
    raw = viewer.add_image(_vessel(2.0, 0.3, 0), name="CEUS", metadata=meta)
    mb = viewer.add_image(_vessel(1.0, 0.05, 1), name="CEUS MB-only", metadata={**meta, "mb_only": True})
    return viewer, raw, mb


def test_cnr_from_two_roi_layers_for_raw_and_mb_only(eval_viewer, qtbot):
    viewer, raw, mb = eval_viewer
    w = EvaluateWidget(viewer)
    assert w.raw.value is raw and w.mb_only.value is mb
    w.cnr.new_rois.native.click()
    sig, bg = viewer.layers[SIGNAL_LAYER], viewer.layers[BACKGROUND_LAYER]
    assert w.cnr.signal.value is sig and w.cnr.background.value is bg and sig.mode == "add_rectangle"
    sig.add_rectangles(np.array([[28.0, 10.0], [33.0, 50.0]]))
    bg.add_rectangles(np.array([[44.0, 10.0], [60.0, 50.0]]))
    assert press(qtbot, w.cnr) is None
    s = rois_to_mask([sig.data[0]], (64, 64))
    b = rois_to_mask([bg.data[0]], (64, 64))
    exp_raw, exp_mb = cnr_on_mip(raw.data, s, b), cnr_on_mip(mb.data, s, b)
    rows = w.cnr.table.rows
    assert [r["frames"] for r in rows] == ["raw", "MB-only"]
    assert rows[0]["cnr_db"] == pytest.approx(exp_raw.cnr_db)
    assert rows[1]["cnr_ratio_db"] == pytest.approx(exp_mb.cnr_ratio_db)
    assert rows[1]["cnr_db"] > rows[0]["cnr_db"] > 0  # less noise in the MB-only frames
    assert w.cnr.table.cell(0, "cnr_db") == f"{exp_raw.cnr_db:.3f}"
    assert f"raw {exp_raw.cnr_db:.2f} dB" in w.cnr.status.value
    text = w.cnr.table.copy()
    from qtpy.QtWidgets import QApplication

    assert QApplication.clipboard().text() == text and text.startswith("frames\tcnr_db")
    # one Shapes layer for both: its first rectangle is the signal, the second the background;
    # drawn on the stack, so its vertices are (frame, y, x)
    both = viewer.add_shapes([np.c_[np.full(4, 4.0), v] for v in (sig.data[0], bg.data[0])],
                             shape_type="rectangle", name="regions")
    assert both.ndim == 3
    w.cnr.signal.value = both
    w.cnr.background.value = None
    assert press(qtbot, w.cnr) is None
    assert w.cnr.results[0].cnr_db == pytest.approx(exp_raw.cnr_db)


def test_cnr_mistakes_become_notifications(eval_viewer, qtbot):
    viewer, raw, _ = eval_viewer
    w = EvaluateWidget(viewer)
    assert "New ROI layers" in press(qtbot, w.cnr)
    one = viewer.add_shapes([np.array([[28, 10], [28, 50], [33, 50], [33, 10]])], shape_type="rectangle",
                            name="one")
    w.cnr.signal.value = one
    assert "1 area shape" in press(qtbot, w.cnr)
    lines = viewer.add_shapes([np.array([[5, 5], [20, 20]])], shape_type="line", name="lines")
    w.cnr.background.value = lines
    assert "no rectangle" in press(qtbot, w.cnr)
    for layer in [la for la in viewer.layers if la.name.startswith("CEUS")]:
        viewer.layers.remove(layer)
    assert w.raw.value is None
    assert "no raw frames" in press(qtbot, w.cnr)


def test_fwhm_profile_of_raw_and_mb_only_with_plot_saved(eval_viewer, qtbot, tmp_path):
    viewer, raw, mb = eval_viewer
    w = EvaluateWidget(viewer)
    w.fwhm.new_line.native.click()
    line = viewer.layers[LINE_LAYER]
    assert w.fwhm.line.value is line and line.mode == "add_line"
    line.add_lines(np.array([[18.0, 30.0], [42.0, 30.0]]))
    assert press(qtbot, w.fwhm) is None
    raw_p, mb_p = w.fwhm.profiles
    assert raw_p.fwhm_px == pytest.approx(GAUSS_FWHM * 2.0, rel=0.05)
    assert mb_p.fwhm_px == pytest.approx(GAUSS_FWHM * 1.0, rel=0.05)
    assert raw_p.fwhm_um == pytest.approx(raw_p.fwhm_px * 50.0)
    assert raw_p.fwhm_px == pytest.approx(
        fwhm_on_mip(raw.data, [[18.0, 30.0], [42.0, 30.0]]).fwhm_px)
    assert f"raw {raw_p.fwhm_px:.2f} px ({raw_p.fwhm_um:.0f} um)" in w.fwhm.result.value
    assert len(w.fwhm.plot.ax.lines) == 3
    target = tmp_path / "profile.png"
    w.fwhm.plot.ask_path = lambda: str(target)
    w.fwhm.plot.save_button.native.click()
    assert target.is_file() and mpimg.imread(target).shape[2] in (3, 4)
    # a zero-length line is refused with advice
    line.data = [np.array([[20.0, 20.0], [20.0, 20.0]])]
    line.shape_type = ["line"]
    assert "zero length" in press(qtbot, w.fwhm)


def test_accuracy_table_and_precision_recall_plot(eval_viewer, qtbot, tmp_path):
    viewer, _, _ = eval_viewer
    gt = np.array([[0, 10, 10], [0, 20, 20], [1, 10, 10], [1, 30, 30]], float)
    det_a = np.array([[0, 10.3, 10.4], [0, 20, 20.6], [1, 10, 10], [1, 50, 50]], float)
    gt_layer = viewer.add_points(gt, name="CEUS ground truth", metadata={"pixel_size_um": 50.0})
    a = viewer.add_points(det_a, name="[ncc] CEUS localisations", features={"score": [0.9, 0.8, 0.7, 0.1]})
    b = viewer.add_points(gt[:2], name="[decon] CEUS localisations")
    viewer.add_points(gt, name="other points")
    w = EvaluateWidget(viewer)
    acc = w.accuracy
    assert acc.ground_truth.value is gt_layer
    assert set(acc.detections.value) == {a, b}  # the localisation layers are chosen by default
    acc.sweep.value = True
    assert press(qtbot, acc) is None
    rows = {r["method"]: r for r in acc.rows}
    assert rows["ncc"]["precision"] == pytest.approx(0.75) and rows["ncc"]["recall"] == pytest.approx(0.75)
    assert rows["ncc"]["mean_error_px"] == pytest.approx((0.5 + 0.6) / 3)
    assert rows["ncc"]["mean_error_um"] == pytest.approx(50 * 1.1 / 3)
    assert rows["decon"]["precision"] == 1.0 and rows["decon"]["recall"] == 0.5
    i = [r["method"] for r in acc.rows].index("ncc")
    assert acc.table.cell(i, "f1") == "0.750"
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    acc.table.table.selectRow(i)
    qtbot.keyClick(acc.table.table, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    copied = QApplication.clipboard().text().splitlines()
    assert copied[0].startswith("layer\tmethod") and copied[1].startswith("[ncc] CEUS localisations\tncc")
    assert list(acc.sweeps) == ["[ncc] CEUS localisations"]  # decon has no score: left out
    assert not acc.plot.native.isHidden() and len(acc.plot.ax.lines) == 2
    target = tmp_path / "pr.png"
    acc.plot.ask_path = lambda: str(target)
    acc.plot.save_button.native.click()
    assert target.is_file()
    acc.table.ask_path = lambda: str(tmp_path / "acc.csv")
    acc.table.save_button.native.click()
    assert (tmp_path / "acc.csv").read_text().startswith("layer,method,n_detections")
    # a tolerance of 0.55 px loses the 0.6 px match
    acc.tolerance.value = 0.55
    acc.sweep.value = False
    assert press(qtbot, acc) is None
    assert {r["method"]: r for r in acc.rows}["ncc"]["tp"] == 2


def test_accuracy_mistakes(eval_viewer, qtbot):
    viewer, _, _ = eval_viewer
    w = EvaluateWidget(viewer)
    assert "no ground-truth" in press(qtbot, w.accuracy)
    empty = viewer.add_points(np.zeros((0, 3)), name="empty ground truth", ndim=3)
    w.accuracy.ground_truth.value = empty
    assert "is empty" in press(qtbot, w.accuracy)
    viewer.layers.remove(empty)
    viewer.add_points(np.array([[0, 1, 1.0]]), name="CEUS ground truth")
    w.accuracy.ground_truth.value = viewer.layers["CEUS ground truth"]
    w.accuracy.detections.value = []
    assert "no localisation layer" in press(qtbot, w.accuracy)
    viewer.add_points(np.array([[0, 1, 1.0]]), name="[x] CEUS localisations")
    w.accuracy.sweep.value = True
    assert w.accuracy.detections.value == [viewer.layers["[x] CEUS localisations"]]  # joins when added
    assert "'score'" in press(qtbot, w.accuracy)


def test_on_the_sample_with_mb_dt_and_mips(make_napari_viewer, qtbot):
    """The sample data cropped, translated by the shipped MB-DT; the widget equals the library."""
    from napari_cycleulm._napari.sample_data import make_sample
    from napari_cycleulm.dl.mbdt_inference import translate

    viewer = make_napari_viewer()
    (frames, kw, _), _gt = make_sample()
    crop = frames[:10, 32:96, 48:112]
    raw = viewer.add_image(crop, name="crop", metadata=kw["metadata"], translate=(0, 32, 48))
    mb = viewer.add_image(translate(crop), name="crop MB-only", metadata={"mb_only": True},
                          translate=(0, 32, 48))
    w = EvaluateWidget(viewer)
    assert w.raw.value is raw and w.mb_only.value is mb
    w.mip_button.native.click()
    mip_layer = viewer.layers["crop MIP"]
    np.testing.assert_array_equal(mip_layer.data, crop.max(0))
    assert mip_layer.data.ndim == 2 and "crop MB-only MIP" in viewer.layers
    # regions drawn in world coordinates (the crop is translated by (32, 48))
    sig, bg = w.cnr.add_roi_layers()
    sig.add_rectangles(np.array([[40.0, 60.0], [60.0, 80.0]]))
    bg.add_rectangles(np.array([[70.0, 60.0], [90.0, 100.0]]))
    assert press(qtbot, w.cnr) is None
    expected_signal = rois_to_mask([sig.data[0] - [32.0, 48.0]], (64, 64))
    np.testing.assert_array_equal(w.cnr.masks(raw)[0], expected_signal)
    exp = [cnr_on_mip(crop, *w.cnr.masks(raw)), cnr_on_mip(mb.data, *w.cnr.masks(mb))]
    for row, e in zip(w.cnr.table.rows, exp):
        assert row["cnr_db"] == pytest.approx(e.cnr_db) and math.isfinite(row["cnr_db"])
