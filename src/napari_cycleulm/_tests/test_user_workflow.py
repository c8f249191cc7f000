"""The whole workflow a researcher follows in napari, on the bundled sample, driven from the main dock.

Load the sample -> pick bubbles by clicking (snapped) -> estimate the PSF ->
fine-tune MB-DT for a few steps on an ROI -> run each of the six pipelines ->
translate to MB-only -> evaluate (CNR, FWHM, accuracy against the ground
truth) -> export maps and tables.  The first 40 frames of the sample keep it
quick on a CPU; every widget is the one a user would open from the dock.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_cycleulm.pipeline import PIPELINES  # noqa: E402
from napari_cycleulm.simulate import isolated_positions  # noqa: E402
from napari_cycleulm._tests._gui import run_widget, wait_for_worker  # noqa: E402
from napari_cycleulm._napari.widgets.workflow_widget import PLUGIN_NAME  # noqa: E402

pytestmark = pytest.mark.gui

N_FRAMES = 40


def _boxes(gt: np.ndarray, shape):
    """A signal box on the busiest vessel pixel and a background box without any bubble."""
    _, h, w = shape
    hist, _, _ = np.histogram2d(gt[:, 1], gt[:, 2], bins=(h, w), range=((-0.5, h - 0.5), (-0.5, w - 0.5)))
    cy, cx = np.unravel_index(np.argmax(hist), hist.shape)
    signal = np.array([[cy - 1.0, cx - 1.0], [cy + 1.0, cx + 1.0]])
    for y0 in range(20, h - 30, 4):
        for x0 in range(20, w - 30, 4):
            if hist[y0 - 4:y0 + 14, x0 - 4:x0 + 14].sum() == 0:
                return signal, np.array([[y0, x0], [y0 + 10.0, x0 + 10.0]]), (cy, cx)
    raise AssertionError("no empty background box in the sample")


def test_whole_workflow_on_the_sample(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    # As a user does: Plugins > CycleULM > CycleULM workflow.
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "CycleULM workflow")

    # 1. data: the bundled sample, then its first frames as the stack to work on
    sample = dock.load_sample()
    gt_sample = viewer.layers["CEUS sample ground truth"]
    gt_all = gt_sample.data
    amplitude = np.asarray(gt_sample.features["amplitude"])[gt_all[:, 0] < N_FRAMES]
    stack = viewer.add_image(np.asarray(sample.data[:N_FRAMES]), name="CEUS 40",
                             metadata=dict(sample.metadata), colormap="gray")
    gt = gt_all[gt_all[:, 0] < N_FRAMES]
    gt_layer = viewer.add_points(gt, name="CEUS 40 ground truth", visible=False)
    dock.image.value = stack
    assert "not estimated" in dock.psf_status.value.lower() or "auto" in dock.psf_status.value.lower()

    # 2. PSF: click near isolated bubbles (1-2 px off); clicks snap to the bubble's maximum
    psf_w = dock.open_psf_tool()
    assert psf_w.image.value is stack
    picks = psf_w.new_picking_layer()
    truth = gt[isolated_positions(gt, stack.data.shape[1:], border_px=20, amplitude=amplitude,
                                  min_amplitude=0.8, n=12)]
    assert len(truth) >= 8
    off = np.array([[0, 2, -1], [0, -1, 2], [0, -2, -2], [0, 1, 1]])
    for i, t in enumerate(truth):
        picks.add(np.round(t) + off[i % len(off)])
    assert len(picks.data) == len(truth)
    assert np.median(np.hypot(*(picks.data[:, 1:] - truth[:, 1:]).T)) <= 1.0
    run_widget(qtbot, psf_w)
    psf_layer = viewer.layers["CEUS 40 PSF"]
    true_fwhm = stack.metadata["psf_fwhm_y_px"], stack.metadata["psf_fwhm_x_px"]
    psf = psf_w.psf
    assert psf.fwhm_y_px == pytest.approx(true_fwhm[0], rel=0.2)
    assert psf.fwhm_x_px == pytest.approx(true_fwhm[1], rel=0.2)
    dock.psf_layer.reset_choices()
    dock.psf_layer.value = psf_layer
    assert "FWHM" in dock.psf_status.value

    # 3. fine-tune MB-DT a few steps on an ROI over the organ
    train_w = dock.open_train_tool()
    roi = viewer.add_shapes([np.array([[10, 10], [10, 150], [118, 150], [118, 10]], float)],
                            shape_type="polygon", name="organ ROI")
    train_w.roi.reset_choices()
    train_w.roi.value = roi
    train_w.psf_layer.reset_choices()
    train_w.psf_layer.value = psf_layer
    assert train_w.n_patches and train_w.n_patches > 100
    train_w.steps.value = 3
    train_w.batch_size.value = 2
    train_w.out.value = tmp_path / "mbdt_finetuned.pt"
    run_widget(qtbot, train_w, timeout=300_000)
    assert (tmp_path / "mbdt_finetuned.pt").is_file()
    assert train_w.history["step"], "the loss plot got no points"
    qtbot.waitUntil(lambda: str(dock.mbdt.source()).endswith("mbdt_finetuned.pt"), timeout=5000)

    # 4. every pipeline in one click from the dock
    dock.block_size.value = 20
    for name in PIPELINES:
        dock.pipeline.value = name
        run_widget(qtbot, dock, timeout=600_000)
        density = viewer.layers[f"[{name}] CEUS 40 SR density"]
        assert density.data.max() > 0 and density.colormap.name == "hot"
        assert density.metadata["cycleulm"]["source"] == "CEUS 40"
        np.testing.assert_allclose(density.scale[-2:], np.asarray(stack.scale[-2:]) / 4)
        if not PIPELINES[name].end_to_end:
            assert len(viewer.layers[f"[{name}] CEUS 40 localisations"].data) > 0

    # 5. MB-only frames for the evaluation
    _, tr = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Translate to MB-only (MB-DT)")
    tr.image.value = stack
    run_widget(qtbot, tr)
    mb = viewer.layers["CEUS 40 MB-only"]

    # 6. evaluate: CNR on the MIPs, FWHM along a line, accuracy against the ground truth
    ev = dock.open_evaluate_tool()
    ev.raw.value = stack
    ev.mb_only.reset_choices()
    ev.mb_only.value = mb
    signal, background, (cy, cx) = _boxes(gt, stack.data.shape)
    ev.cnr.new_rois.native.click()
    ev.cnr.signal.value.add_rectangles(signal)
    ev.cnr.background.value.add_rectangles(background)
    ev.cnr.run_button.native.click()
    wait_for_worker(qtbot, ev.cnr)
    assert ev.cnr.last_error is None, ev.cnr.last_error
    assert [r["frames"] for r in ev.cnr.table.rows] == ["raw", "MB-only"]
    assert all(np.isfinite(r["cnr_db"]) for r in ev.cnr.table.rows)

    ev.fwhm.new_line.native.click()
    ev.fwhm.line.value.add_lines(np.array([[cy, cx - 10.0], [cy, cx + 10.0]]))
    ev.fwhm.run_button.native.click()
    wait_for_worker(qtbot, ev.fwhm)
    assert ev.fwhm.last_error is None, ev.fwhm.last_error
    assert len(ev.fwhm.profiles) == 2

    acc = ev.accuracy
    acc.ground_truth.reset_choices()
    acc.ground_truth.value = gt_layer
    acc.detections.reset_choices()
    acc.select_localisation_layers()  # the '[pipeline] ... localisations' layers
    acc.sweep.value = True
    acc.run_button.native.click()
    wait_for_worker(qtbot, acc)
    assert acc.last_error is None, acc.last_error
    assert len(acc.rows) == sum(not spec.end_to_end for spec in PIPELINES.values())
    assert all(r["recall"] > 0.1 for r in acc.rows), acc.rows

    # 7. export every CycleULM result
    ex = dock.open_export_tool()
    ex.select_results.native.click()
    ex.folder.value = tmp_path / "export"
    ex.run_button.native.click()
    wait_for_worker(qtbot, ex)
    assert ex.last_error is None, ex.last_error
    files = {p.name for p in (tmp_path / "export").iterdir()}
    for name in PIPELINES:
        stem = f"{name}_CEUS_40_SR_density"
        assert {f"{stem}.tif", f"{stem}.png"} <= files, sorted(files)
    assert any(f.endswith(".csv") and "tracks" in f for f in files)
    manifest = json.loads((tmp_path / "export" / "export.json").read_text())
    assert len(manifest["files"]) == len(files) - 1

    # nothing the user drew was removed along the way
    for name in ("organ ROI", "CEUS 40 PSF bubbles", "CEUS sample", "CEUS 40 ground truth"):
        assert name in viewer.layers
