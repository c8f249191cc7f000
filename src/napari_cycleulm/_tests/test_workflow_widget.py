"""The CycleULM workflow dock: stage statuses, tool docks, one-click pipeline runs, Stop, errors.

GUI tests (Xvfb).  They use a 60-frame crop of the simulated sample, made
once for the module, so that a baseline run takes a few seconds on one core.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from qtpy.QtCore import QTimer  # noqa: E402

from napari_cycleulm._napari import sample_data as _sample_data  # noqa: E402
from napari_cycleulm._napari.sample_data import make_sample  # noqa: E402
from napari_cycleulm._tests._gui import elide_middle, run_widget, wait_for_worker  # noqa: E402
from napari_cycleulm._napari.widgets import _base, workflow_widget  # noqa: E402
from napari_cycleulm._napari.widgets._layers import (  # noqa: E402
    GENERATED_KEY, PSF_METADATA_KEY, RESULT_KEY, parse_result_name, result_name,
)
from napari_cycleulm._napari.widgets._model_picker import record_trained_model  # noqa: E402
from napari_cycleulm._napari.widgets.psf_widget import PSFWidget  # noqa: E402
from napari_cycleulm._napari.widgets.render_widget import RenderWidget  # noqa: E402
from napari_cycleulm._napari.widgets.train_widget import TrainWidget  # noqa: E402
from napari_cycleulm.pipeline import PIPELINES  # noqa: E402
from napari_cycleulm.psf import PSF  # noqa: E402

pytestmark = pytest.mark.gui

N_FRAMES = 60


def _first_frames(n_frames: int) -> list:
    """``make_sample()`` cut to its first ``n_frames`` frames (same layer names and metadata)."""
    (frames, img_kw, _), (gt, gt_kw, _) = make_sample()
    keep = gt[:, 0] < n_frames
    gt_kw = {**gt_kw, "features": {k: np.asarray(v)[keep] for k, v in gt_kw["features"].items()}}
    return [(frames[:n_frames].copy(), img_kw, "image"), (gt[keep], gt_kw, "points")]


@pytest.fixture(scope="module")
def small_sample():
    return _first_frames(N_FRAMES)


@pytest.fixture
def errors(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(_base, "show_error", shown.append)
    return shown


@pytest.fixture
def dock(make_napari_viewer, small_sample, monkeypatch):
    """A viewer with the workflow dock, and 'Load sample' giving the small sample."""
    monkeypatch.setattr(_sample_data, "make_sample", lambda: small_sample)
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget(workflow_widget.PLUGIN_NAME, "CycleULM workflow")
    return viewer, w


def _psf_layer(viewer, name, n_bubbles=20):
    psf = PSF(sigma_y_px=1.7, sigma_x_px=2.55, n_bubbles=n_bubbles)
    return viewer.add_image(psf.kernel, name=name, metadata={PSF_METADATA_KEY: psf.to_dict()})


def test_manifest_lists_the_workflow_first():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    widgets = pm.get_manifest("napari-cycleulm").contributions.widgets
    assert widgets[0].display_name == "CycleULM workflow"
    assert widgets[0].command == "napari-cycleulm.workflow_widget"


def test_an_empty_viewer_says_what_each_stage_needs(dock):
    viewer, w = dock
    assert w.image.value is None
    assert w.data_status.value.startswith("✗") and "Load sample" in w.data_status.value
    assert "PSF: not estimated" in w.psf_status.value
    assert "not used by baseline1" in w.mbdt_status.value
    assert w.pipeline_status.value.startswith("✗ needs a CEUS stack")
    assert w.render_status.value.startswith("✗ no SR map yet")
    assert set(w.pipeline.choices) == set(PIPELINES)
    texts = [w.pipeline.native.itemText(i) for i in range(w.pipeline.native.count())]
    assert texts[0] == "baseline1: adaptive thresholding + NCC + tracking"


def test_load_sample_fills_the_data_stage(dock):
    viewer, w = dock
    w.load_sample_button.changed.emit(True)
    image = viewer.layers["CEUS sample"]
    assert w.image.value is image and "CEUS sample ground truth" in viewer.layers
    assert w.data_status.value == f"✓ {N_FRAMES} frames of 128 x 160 px; pixel 50 µm, 500 Hz"
    assert w.pipeline_status.value == "✓ ready: baseline1 on 'CEUS sample' with an automatic PSF"
    # Only CEUS stacks are offered: not the ground truth, not 2-D images or results.
    viewer.add_image(np.zeros((8, 8)), name="flat")
    viewer.add_image(np.zeros((3, 8, 8)), name="ours", metadata={GENERATED_KEY: True})
    assert [layer.name for layer in w.image.choices] == ["CEUS sample"]
    # Without units the status says what to add.
    bare = viewer.add_image(np.zeros((4, 8, 9)), name="bare")
    w.image.value = bare
    assert "4 frames of 8 x 9 px; pixel size unknown, frame rate unknown" in w.data_status.value
    assert "px/frame" in w.data_status.value


def test_statuses_follow_psf_layers_renames_and_fine_tuned_models(dock, tmp_path):
    viewer, w = dock
    image = w.load_sample()
    psf = _psf_layer(viewer, "CEUS sample PSF")
    # A PSF estimated for the chosen stack is used at once.
    assert w.psf_layer.value is psf
    assert w.psf_status.value == "✓ PSF: FWHM 4.0 x 6.0 px from 20 bubbles"
    assert "with its PSF layer" in w.pipeline_status.value
    # The MB-only PSF is not offered (the pipelines shrink the CEUS PSF themselves).
    mb = _psf_layer(viewer, "CEUS sample MB-only PSF")
    mb.metadata = {**mb.metadata, "shrink": 0.5}
    assert mb not in list(w.psf_layer.choices)
    viewer.layers.remove(psf)
    assert w.psf_layer.value is None and "PSF: not estimated" in w.psf_status.value
    # A broken PSF layer is flagged, and the pipeline says what it needs.
    bad = viewer.add_image(np.zeros((5, 5)), name="bad PSF", metadata={PSF_METADATA_KEY: {"sigma_y_px": -1}})
    w.psf_layer.value = bad
    assert w.psf_status.value.startswith("✗ PSF layer 'bad PSF' is not usable")
    assert "a usable PSF (step 2)" in w.pipeline_status.value
    w.psf_layer.value = None

    image.name = "renamed stack"
    assert w.image.value is image
    assert "'renamed stack'" in w.pipeline_status.value

    # MB-DT: the default for the CycleULM pipelines, then a model fine-tuned on this stack.
    w.pipeline.value = "cycleulm-ncc"
    assert w.mbdt_status.value == "✓ MB-DT: default weights (mbdt_default.pt)"
    ckpt = tmp_path / "renamed_mbdt.pt"
    ckpt.write_bytes(b"not read by the status")
    record_trained_model(image, "mbdt", ckpt)
    assert w.mbdt.choice.value == str(ckpt)
    assert w.mbdt_status.value == "✓ MB-DT: renamed_mbdt.pt (fine-tuned on 'renamed stack')"
    w.mbdt.choice.value = "default"  # the user's choice stands
    assert "a model fine-tuned on this stack is in the list" in w.mbdt_status.value
    ckpt.unlink()
    w.mbdt.choice.value = str(ckpt)
    assert w.mbdt_status.value.startswith("✗") and "an MB-DT model (step 3)" in w.pipeline_status.value


def test_tool_buttons_dock_the_tools_with_the_stack_chosen(dock, errors):
    viewer, w = dock
    # Without data the PSF tool explains what to do first (a notification, not a traceback).
    w.psf_button.changed.emit(True)
    assert len(errors) == 1 and "choose a CEUS stack first" in errors[0]
    assert "psf" not in w.docks

    image = w.load_sample()
    w.psf_button.changed.emit(True)
    psf_tool = w.docks["psf"]
    assert isinstance(psf_tool, PSFWidget) and psf_tool.image.value is image
    assert w.open_psf_tool() is psf_tool  # opened once, shown again
    train = w.open_train_tool()
    assert isinstance(train, TrainWidget) and train.image.value is image
    render = w.open_render_tool()
    assert isinstance(render, RenderWidget) and render.reference.value is image
    # A closed dock is made again.
    viewer.window.remove_dock_widget(psf_tool.native)
    assert w.open_psf_tool() is not psf_tool
    assert len(errors) == 1


def test_one_click_pipeline_run_makes_the_named_layers(dock, errors, qtbot):
    viewer, w = dock
    w.start()  # nothing chosen yet
    assert errors and errors[-1].startswith("no CEUS layer selected")

    image = w.load_sample()
    w.block_size.value = 10
    run_widget(qtbot, w)
    name = "CEUS sample"
    for what in ("localisations", "tracks", "SR density", "SR velocity"):
        layer = viewer.layers[f"[baseline1] {name} {what}"]
        record = layer.metadata[RESULT_KEY]
        assert record["stage"] == "pipeline" and record["source"] == name and record["method"] == "baseline1"
        assert record["params"]["block_size"] == 10 and record["params"]["psf_layer"] == "auto"
        assert layer.metadata["pixel_size_um"] == 50.0
    points = viewer.layers[f"[baseline1] {name} localisations"]
    np.testing.assert_allclose(points.scale, image.scale)
    assert len(points.data) > 100 and points.data[:, 0].max() < N_FRAMES
    density = viewer.layers[f"[baseline1] {name} SR density"]
    assert density.data.shape == (128 * 4, 160 * 4) and density.data.sum() > 0
    assert w.render_status.value.startswith("✓ SR maps: [baseline1] CEUS sample SR density")
    assert "localisations" in w.status.value and w.progress.value == w.progress.max == N_FRAMES
    assert len(errors) == 1


def test_runs_of_two_pipelines_stay_told_apart_in_the_layer_list(make_napari_viewer, monkeypatch, qtbot):
    """Each result is ``[pipeline] <stack> <what>``: napari's layer list, which elides long names in
    the middle, still shows every layer's pipeline and what it holds; points and tracks are hidden."""
    monkeypatch.setattr(_sample_data, "make_sample", lambda: _first_frames(36))
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget(workflow_widget.PLUGIN_NAME, "CycleULM workflow")  # as the menu does
    w.load_sample()
    w.block_size.value = 12
    runs: dict[str, list] = {}
    for pipeline, mode in (("cycleulm-ncc", "replace"), ("cycleulm-loc", "replace"),
                           ("cycleulm-ncc", "add numbered")):  # the same pipeline again, kept apart
        w.pipeline.value = pipeline
        w.rerun.value = mode
        before = set(map(id, viewer.layers))
        run_widget(qtbot, w)
        runs[f"{pipeline} {mode}"] = [layer for layer in viewer.layers if id(layer) not in before]

    whats = ("localisations", "tracks", "SR density", "SR velocity")
    for run, layers in runs.items():
        pipeline, mode = run.split(" ", 1)
        suffix = " (2)" if mode == "add numbered" else ""
        assert sorted(layer.name for layer in layers) == sorted(
            result_name("CEUS sample", what, pipeline) + suffix for what in whats)
        for layer in layers:
            assert layer.name.startswith(f"[{pipeline}] ")
            source, what, method = parse_result_name(layer.name)
            assert (source, method) == ("CEUS sample", pipeline) == (layer.metadata[RESULT_KEY]["origin"],
                                                                     layer.metadata[RESULT_KEY]["method"])
            # Only the density map shows: the points and tracks of many runs would hide it.
            assert layer.visible == (what == "SR density"), (layer.name, layer.visible)
    # What the layer list shows of the 12 names (about 25 characters): all different.
    shown = [elide_middle(layer.name) for layers in runs.values() for layer in layers]
    assert len(set(shown)) == len(shown) == 12, shown
    assert all(text.startswith("[cycleulm-") for text in shown)


def test_event_loop_keeps_running_during_a_run_and_stop_keeps_previous_results(dock, qtbot):
    viewer, w = dock
    w.load_sample()
    w.block_size.value = 10
    run_widget(qtbot, w)
    before = {layer.name: (layer, np.array(layer.data, copy=True)) for layer in viewer.layers}

    ticks: list[bool] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(w.worker is not None and w.worker.is_running))
    timer.start()
    try:
        assert w.start() is not None  # the same run again, replacing its layers if it finished
        qtbot.waitUntil(lambda: len(ticks) >= 15, timeout=20_000)
        # The UI thread handled 15 timer events while the pipeline ran in the worker.
        assert all(ticks[1:15]) and w.worker is not None and w.worker.is_running
        assert not w.run_button.enabled and w.stop_button.enabled
        w.stop_button.changed.emit(True)
        wait_for_worker(qtbot, w)
    finally:
        timer.stop()
    assert w.status.value == "stopped; nothing was changed"
    assert w.run_button.enabled and not w.stop_button.enabled
    assert [layer.name for layer in viewer.layers] == list(before)
    for layer in viewer.layers:
        same, data = before[layer.name]
        assert layer is same
        np.testing.assert_array_equal(np.asarray(layer.data), data)
