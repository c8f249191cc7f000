"""Walk the napari workflow on the bundled sample, screenshot each step and time it.

Usage::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py [--out docs/images] [--steps 300]

Opens the sample in a real napari window and drives the main *CycleULM
workflow* dock as a user would: load the sample, click on isolated bubbles
(simulated clicks 1-2 px off bright, isolated ground-truth bubbles, which snap
to the bubble), estimate the PSF, fine-tune MB-DT on an ROI, run the six
pipelines (the layer list is shot after the first two), compare the SR maps
side by side, evaluate (CNR, FWHM, accuracy against the ground truth) and
export.  After each step it saves a screenshot
of the whole window in ``--out`` and the wall time of the step in
``--out/workflow_timings.json`` (the user guide, docs/napari.md, shows both).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _pump(app, seconds: float = 0.3) -> None:
    t0 = time.time()
    while time.time() - t0 < seconds:
        app.processEvents()
        time.sleep(0.01)


def _run(app, widget, timeout_s: float = 1800.0) -> float:
    """Press a widget's Run (as a click would) and wait for its worker; the wall time in seconds."""
    t0 = time.perf_counter()
    widget.run_button.native.click()
    while widget.worker is not None and time.perf_counter() - t0 < timeout_s:
        app.processEvents()
        time.sleep(0.01)
    if widget.last_error:
        raise RuntimeError(f"{type(widget).__name__}: {widget.last_error}")
    return time.perf_counter() - t0


def _isolated_clicks(gt: np.ndarray, amplitude: np.ndarray, shape, n: int = 15) -> np.ndarray:
    """Clicks 1-2 px off bright, isolated ground-truth bubbles, as a user would place them."""
    from napari_cycleulm.simulate import isolated_positions

    keep = gt[isolated_positions(gt, shape[1:], border_px=20, amplitude=amplitude, min_amplitude=0.8, n=n)]
    off = np.array([[0, 2, -1], [0, -1, 2], [0, -2, -2], [0, 1, 1]])
    return np.round(keep) + off[np.arange(len(keep)) % len(off)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--steps", type=int, default=300, help="MB-DT fine-tuning steps shown (default 300)")
    ap.add_argument("--block-size", type=int, default=100)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cycleulm_screens_"))

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cycleulm.pipeline import PIPELINES
    from napari_cycleulm._napari.widgets._layers import parse_result_name, result_name
    from napari_cycleulm._napari.widgets.workflow_widget import PLUGIN_NAME

    def is_density(layer) -> bool:
        parsed = parse_result_name(layer.name)
        return parsed is not None and parsed[1] == "SR density"

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    app = QApplication.instance()
    timings: dict[str, float] = {}

    def shot(name: str, keep=None, docks: bool = True) -> None:
        """Screenshot with one dock visible: ``keep`` (a tool), else the workflow dock (none: ``docks=False``)."""
        for key, widget in dock.docks.items():
            parent = widget.native.parent()
            if parent is not None:
                parent.setVisible(widget is keep)
        dock.native.parent().setVisible(keep is None and docks)
        _pump(app)
        viewer.window._qt_window.resize(1600, 1000)  # docks that were shown may have grown the window
        _pump(app)
        viewer.screenshot(str(out / name), canvas_only=False)
        print(f"  screenshot {out / name}", flush=True)

    # As a user does: Plugins > CycleULM > CycleULM workflow.
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "CycleULM workflow")

    # 1. load the sample
    t0 = time.perf_counter()
    image = dock.load_sample()
    timings["1 load the sample (simulate 200 frames)"] = time.perf_counter() - t0
    gt_layer = viewer.layers["CEUS sample ground truth"]
    viewer.dims.set_point(0, 60)
    shot("01_workflow_sample.png")

    # 2. PSF: click on bubbles (snapped), estimate
    t0 = time.perf_counter()
    psf_w = dock.open_psf_tool()
    picks = psf_w.new_picking_layer()
    clicks = _isolated_clicks(gt_layer.data, np.asarray(gt_layer.features["amplitude"]), image.data.shape)
    for c in clicks:
        picks.add(c)
    t_click = time.perf_counter() - t0
    t_est = _run(app, psf_w)
    timings[f"2 PSF: {len(clicks)} clicks snapped + gallery"] = t_click
    timings["2 PSF: Estimate"] = t_est
    dock.psf_layer.reset_choices()
    dock.psf_layer.value = viewer.layers["CEUS sample PSF"]
    viewer.dims.set_point(0, int(clicks[0][0]))
    shot("02_psf_picking.png", psf_w)

    # 3. fine-tune MB-DT on an ROI over the organ
    train_w = dock.open_train_tool()
    roi = viewer.add_shapes([np.array([[8, 14], [8, 146], [120, 146], [120, 14]], float)],
                            shape_type="polygon", name="organ ROI", edge_color="cyan",
                            face_color="transparent", edge_width=1)
    train_w.roi.reset_choices()
    train_w.roi.value = roi
    train_w.psf_layer.reset_choices()
    train_w.psf_layer.value = viewer.layers["CEUS sample PSF"]
    train_w.steps.value = args.steps
    train_w.out.value = work / "mbdt_sample.pt"
    timings[f"3 fine-tune MB-DT, {args.steps} steps"] = _run(app, train_w)
    shot("03_finetune.png", train_w)

    # 4. every pipeline from the dock; the layer list after the first two runs
    dock.block_size.value = args.block_size
    for i, name in enumerate(PIPELINES):
        dock.pipeline.value = name
        timings[f"4 pipeline {name}"] = _run(app, dock)
        if i == 1:
            shot("10_layer_list_two_runs.png")
    for layer in viewer.layers:
        layer.visible = False
    image.visible = True
    viewer.layers[result_name(image.name, "SR density", "cycleulm-loc")].visible = True
    viewer.dims.set_point(0, 100)
    viewer.reset_view()
    shot("04_pipeline_results.png")

    # side by side: the six SR density maps in napari's grid mode
    for layer in viewer.layers:
        layer.visible = is_density(layer)
    viewer.grid.enabled = True
    viewer.grid.shape = (2, 3)
    viewer.grid.stride = 1
    viewer.reset_view()
    shot("05_compare_methods.png", docks=False)
    viewer.grid.enabled = False

    # 5. evaluate: MB-only frames, CNR on the MIPs, FWHM along a line, accuracy vs ground truth
    _, tr = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Translate to MB-only (MB-DT)")
    tr.image.value = image
    t0 = time.perf_counter()
    timings["5 translate to MB-only (MB-DT, 200 frames)"] = _run(app, tr)
    ev = dock.open_evaluate_tool()
    ev.raw.value = image
    ev.mb_only.reset_choices()
    ev.mb_only.value = viewer.layers["CEUS sample MB-only"]
    for layer in viewer.layers:
        layer.visible = False
    ev.mip_button.native.click()
    _pump(app, 1.0)
    gt = gt_layer.data
    h, w = image.data.shape[1:]
    hist, _, _ = np.histogram2d(gt[:, 1], gt[:, 2], bins=(h, w), range=((-0.5, h - 0.5), (-0.5, w - 0.5)))
    cy, cx = np.unravel_index(np.argmax(hist), hist.shape)
    ev.cnr.new_rois.native.click()
    ev.cnr.signal.value.add_rectangles(np.array([[cy - 1.0, cx - 1.0], [cy + 1.0, cx + 1.0]]))
    empty = next((y0, x0) for y0 in range(20, h - 30, 4) for x0 in range(20, w - 30, 4)
                 if hist[y0 - 4:y0 + 14, x0 - 4:x0 + 14].sum() == 0)
    ev.cnr.background.value.add_rectangles(np.array([empty, [empty[0] + 10.0, empty[1] + 10.0]]))
    timings["5 evaluate: CNR on raw and MB-only MIPs"] = _run(app, ev.cnr)
    ev.tabs.setCurrentIndex(0)
    shot("06_evaluate_cnr.png", ev)
    ev.fwhm.new_line.native.click()
    ev.fwhm.line.value.add_lines(np.array([[cy, cx - 10.0], [cy, cx + 10.0]]))
    timings["5 evaluate: FWHM profile"] = _run(app, ev.fwhm)
    ev.tabs.setCurrentIndex(1)
    shot("07_evaluate_fwhm.png", ev)
    acc = ev.accuracy
    acc.ground_truth.reset_choices()
    acc.ground_truth.value = gt_layer
    acc.detections.reset_choices()
    acc.select_localisation_layers()
    acc.sweep.value = True
    timings["5 evaluate: accuracy table + PR sweep (5 methods)"] = _run(app, acc)
    ev.tabs.setCurrentIndex(2)
    shot("08_evaluate_accuracy.png", ev)

    # 6. export
    ex = dock.open_export_tool()
    ex.select_results.native.click()
    ex.folder.value = work / "export"
    timings["6 export TIFF + PNG + CSV"] = _run(app, ex)
    for layer in viewer.layers:
        layer.visible = False
    viewer.layers[result_name(image.name, "SR density", "cycleulm-loc")].visible = True
    shot("09_export.png", ex)

    timings = {k: round(v, 2) for k, v in timings.items()}
    (out / "workflow_timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    width = max(map(len, timings))
    for k, v in timings.items():
        print(f"{k:<{width}}  {v:8.2f} s")
    print(f"screenshots in {out}; exports in {work / 'export'}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
