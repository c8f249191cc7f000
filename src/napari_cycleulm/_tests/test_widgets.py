"""GUI tests: the dock widgets in a real napari viewer (run under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_cycleulm._sample_data import make_sample  # noqa: E402
from napari_cycleulm._widgets.localise_widget import LocaliseWidget  # noqa: E402
from napari_cycleulm._widgets.pipeline_widget import PipelineWidget  # noqa: E402
from napari_cycleulm._widgets.psf_widget import PSFWidget  # noqa: E402
from napari_cycleulm._widgets.render_widget import RenderWidget  # noqa: E402
from napari_cycleulm._widgets.track_widget import TrackWidget  # noqa: E402
from napari_cycleulm._widgets.denoise_widget import DenoiseWidget  # noqa: E402
from napari_cycleulm._tests._gui import run_widget, wait_for_worker  # noqa: E402

pytestmark = pytest.mark.gui


def _load_sample(viewer):
    layers = []
    for data, kwargs, kind in make_sample():
        layers.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    return layers


@pytest.fixture
def sample_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    image, gt = _load_sample(viewer)
    return viewer, image, gt


def test_sample_data_opens_with_hidden_ground_truth(sample_viewer):
    viewer, image, gt = sample_viewer
    assert image.data.ndim == 3
    assert not gt.visible
    assert gt.data.shape[1] == 3 and len(gt.data) > 100


def test_sample_data_is_registered_in_the_manifest():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    samples = [s.key for s in pm.get_manifest("napari-cycleulm").contributions.sample_data]
    assert "ceus_sample" in samples


def test_psf_widget_estimates_from_clicked_bubbles(sample_viewer, qtbot):
    viewer, image, gt = sample_viewer
    w = PSFWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.auto_pick()
    assert f"{image.name} PSF bubbles" in viewer.layers
    picked = viewer.layers[f"{image.name} PSF bubbles"]
    assert len(picked.data) >= 3
    # Simulate the user's clicks: a Points layer of bubble positions.
    w.points.value = picked
    run_widget(qtbot, w)
    assert f"{image.name} PSF" in viewer.layers
    assert f"{image.name} MB-only PSF" in viewer.layers
    true_y = image.metadata["psf_fwhm_y_px"]
    assert abs(w.psf.fwhm_y_px / true_y - 1) < 0.3
    assert "FWHM y" in w.result.value
    shot = viewer.screenshot(canvas_only=False)
    assert shot.ndim == 3


def test_psf_widget_reports_empty_points_as_a_notification(sample_viewer, qtbot):
    viewer, image, gt = sample_viewer
    empty = viewer.add_points(np.zeros((0, 3)), name="clicks")
    w = PSFWidget(viewer)
    w.points.value = empty
    assert w.start() is None
    assert "empty" in w.last_error


def test_stage_widgets_chain_from_denoise_to_render(sample_viewer, qtbot):
    viewer, image, gt = sample_viewer
    small = viewer.add_image(image.data[:40], name="short", metadata=dict(image.metadata))
    psf_w = PSFWidget(viewer)
    psf_w.image.value = small
    psf_w.auto_pick()
    run_widget(qtbot, psf_w)

    den = DenoiseWidget(viewer)
    den.image.value = small
    run_widget(qtbot, den)
    assert "short denoised" in viewer.layers

    loc = LocaliseWidget(viewer)
    loc.image.value = small
    loc.psf_layer.value = viewer.layers["short PSF"]
    run_widget(qtbot, loc)
    points = viewer.layers["short localisations [ncc]"]
    assert len(points.data) > 50
    assert "score" in points.features.columns

    tr = TrackWidget(viewer)
    tr.points.value = points
    run_widget(qtbot, tr)
    tracks = viewer.layers["short tracks"]
    assert tracks.data.shape[1] == 4

    rw = RenderWidget(viewer)
    rw.tracks.value = tracks
    rw.reference.value = small
    run_widget(qtbot, rw)
    density = viewer.layers["short SR density"]
    assert density.data.shape == (small.data.shape[1] * 4, small.data.shape[2] * 4)
    np.testing.assert_allclose(density.scale, np.asarray(small.scale[-2:]) / 4)
    assert density.data.sum() > 0


def test_pipeline_widget_runs_baseline_and_can_be_stopped(sample_viewer, qtbot):
    viewer, image, gt = sample_viewer
    w = PipelineWidget(viewer)
    w.image.value = image
    w.block_size.value = 20
    w.pipeline.value = "baseline1"
    run_widget(qtbot, w)
    assert f"{image.name} SR density [baseline1]" in viewer.layers
    n_layers = len(viewer.layers)

    # Stop: the run ends early and adds nothing.
    w.pipeline.value = "baseline2"
    assert w.start() is not None
    w.stop()
    wait_for_worker(qtbot, w)
    assert f"{image.name} SR density [baseline2]" not in viewer.layers
    assert len(viewer.layers) == n_layers
