"""GUI tests: the dock widgets in a real napari viewer (run under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

import json  # noqa: E402
import warnings  # noqa: E402

import napari_cycleulm  # noqa: E402
from napari_cycleulm._napari.sample_data import make_sample  # noqa: E402
from napari_cycleulm._napari.widgets import _base, track_widget  # noqa: E402
from napari_cycleulm._napari.widgets._layers import (  # noqa: E402
    GENERATED_KEY, PSF_METADATA_KEY, RERUN_MODES, RESULT_KEY, sr_layer_kwargs,
)
from napari_cycleulm.psf import PSF  # noqa: E402
from napari_cycleulm._napari.widgets.localise_widget import LocaliseWidget  # noqa: E402
from napari_cycleulm._napari.widgets.pipeline_widget import PipelineWidget  # noqa: E402
from napari_cycleulm._napari.widgets.psf_widget import PSFWidget  # noqa: E402
from napari_cycleulm._napari.widgets.render_widget import RenderWidget  # noqa: E402
from napari_cycleulm._napari.widgets.track_widget import TrackWidget  # noqa: E402
from napari_cycleulm._napari.widgets.denoise_widget import DenoiseWidget  # noqa: E402
from napari_cycleulm._napari.widgets.e2e_widget import E2EWidget  # noqa: E402
from napari_cycleulm._napari.widgets.translate_widget import TranslateWidget  # noqa: E402
from napari_cycleulm._tests._tiny_nets import tiny_checkpoints  # noqa: E402
from napari_cycleulm._tests._gui import run_widget, wait_for_worker  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def sample_tuples():
    """The simulated sample, made once for the module (layer-data tuples)."""
    return make_sample()


def _load_sample(viewer, tuples):
    layers = []
    for data, kwargs, kind in tuples:
        layers.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    return layers


@pytest.fixture
def sample_viewer(make_napari_viewer, sample_tuples):
    viewer = make_napari_viewer()
    image, gt = _load_sample(viewer, sample_tuples)
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


def _psf_layer(viewer, image, name):
    """A PSF layer as the PSF widget makes it, with the sample's true PSF."""
    psf = PSF(sigma_y_px=image.metadata["psf_sigma_y_px"], sigma_x_px=image.metadata["psf_sigma_x_px"],
              n_bubbles=20)
    return viewer.add_image(psf.kernel, name=name, metadata={PSF_METADATA_KEY: psf.to_dict()})


def _check_record(layer, stage, source, origin, method=None):
    """The provenance record every result layer carries (napari contracts)."""
    record = layer.metadata[RESULT_KEY]
    assert record["stage"] == stage and record["source"] == source
    assert record["origin"] == origin and record["method"] == method
    assert record["version"] == napari_cycleulm.__version__
    json.dumps(record["params"])
    assert layer.metadata[GENERATED_KEY]
    return record["params"]


def test_stage_widgets_chain_from_denoise_to_render(sample_viewer, qtbot):
    viewer, image, gt = sample_viewer
    small = viewer.add_image(image.data[:40], name="short", metadata=dict(image.metadata),
                             scale=(1, 2, 3), translate=(0, 5, -4))
    psf_layer = _psf_layer(viewer, image, "short PSF")

    den = DenoiseWidget(viewer)
    den.image.value = small
    run_widget(qtbot, den)
    denoised = viewer.layers["short denoised"]
    assert _check_record(denoised, "denoise", "short", "short")["method"] == "adaptive threshold"
    np.testing.assert_allclose(denoised.scale, small.scale)
    np.testing.assert_allclose(denoised.translate, small.translate)

    loc = LocaliseWidget(viewer)
    loc.image.value = small
    loc.psf_layer.value = psf_layer
    run_widget(qtbot, loc)
    points = viewer.layers["[ncc] short localisations"]
    assert len(points.data) > 50
    # Hidden, like every localisations and tracks layer; the status line says so.
    assert not points.visible and loc.status.value == (
        f"{len(points.data)} localisations in '[ncc] short localisations' (hidden: tick its eye to show it)")
    assert "score" in points.features.columns
    params = _check_record(points, "localise", "short", "short", "ncc")
    assert params["threshold"] == loc.threshold.value and params["psf_layer"] == "short PSF"
    assert params["psf"]["sigma_y_px"] == pytest.approx(image.metadata["psf_sigma_y_px"])
    assert points.metadata["pixel_size_um"] == image.metadata["pixel_size_um"]
    assert points.metadata["frame_rate_hz"] == image.metadata["frame_rate_hz"]
    np.testing.assert_allclose(points.scale, small.scale)
    np.testing.assert_allclose(points.translate, small.translate)

    tr = TrackWidget(viewer)
    tr.points.value = points
    run_widget(qtbot, tr)
    tracks = viewer.layers["[ncc] short tracks"]
    assert tracks.data.shape[1] == 4
    assert not tracks.visible and "'[ncc] short tracks' (hidden" in tr.status.value
    assert _check_record(tracks, "track", "[ncc] short localisations", "short", "ncc")["max_gap"] == 1
    np.testing.assert_allclose(tracks.scale, small.scale)
    assert tracks.metadata["pixel_size_um"] == image.metadata["pixel_size_um"]

    rw = RenderWidget(viewer)
    rw.tracks.value = tracks
    rw.reference.value = small
    run_widget(qtbot, rw)
    density = viewer.layers["[ncc] short SR density"]
    velocity = viewer.layers["[ncc] short SR velocity"]
    direction = viewer.layers["[ncc] short SR direction"]
    assert density.data.shape == (small.data.shape[1] * 4, small.data.shape[2] * 4)
    assert density.data.sum() > 0
    assert (density.colormap.name, velocity.colormap.name, direction.colormap.name) == ("hot", "turbo", "twilight")
    assert _check_record(density, "render", "[ncc] short tracks", "short", "ncc")["upsampling"] == 4
    assert velocity.metadata["unit"] == "mm/s"
    # SR maps overlay the CEUS frames: SR pixel 1.5 is the centre of CEUS pixel 0.
    geo = sr_layer_kwargs(small, 4)
    for layer in (density, velocity, direction):
        np.testing.assert_allclose(layer.scale, geo["scale"])
        np.testing.assert_allclose(layer.translate, geo["translate"])
    np.testing.assert_allclose(np.asarray(density.data_to_world([1.5, 1.5]))[-2:], [5.0, -4.0])


def test_rerun_replaces_our_result_or_adds_a_numbered_one_never_touching_user_layers(sample_viewer, qtbot):
    viewer, image, gt = sample_viewer
    tiny = viewer.add_image(image.data[:6, :64, :64], name="tiny", metadata=dict(image.metadata))
    psf_layer = _psf_layer(viewer, image, "tiny PSF")
    loc = LocaliseWidget(viewer)
    loc.image.value = tiny
    loc.psf_layer.value = psf_layer
    assert loc.rerun_mode == "replace" and loc.rerun.choices == RERUN_MODES
    run_widget(qtbot, loc)
    first = viewer.layers["[ncc] tiny localisations"]
    n_first = len(first.data)

    first.visible = True  # the user shows it: re-running keeps that choice
    loc.threshold.value = 0.6  # fewer localisations: the layer is updated in place
    run_widget(qtbot, loc)
    assert viewer.layers["[ncc] tiny localisations"] is first
    assert first.visible and "hidden" not in loc.status.value
    assert 0 < len(first.data) < n_first
    assert first.metadata[RESULT_KEY]["params"]["threshold"] == 0.6
    assert "[ncc] tiny localisations (2)" not in viewer.layers

    loc.rerun.value = "add numbered"
    assert loc.rerun_mode == "add numbered"
    run_widget(qtbot, loc)
    assert "[ncc] tiny localisations (2)" in viewer.layers
    assert len(first.data) < n_first  # the previous result is kept as it was

    # A layer the user made with the conventional name is never changed or removed.
    viewer.layers.remove(first)
    viewer.layers.remove("[ncc] tiny localisations (2)")
    mine = viewer.add_points(np.array([[0.0, 1.0, 2.0]]), name="[ncc] tiny localisations")
    loc.rerun.value = "replace"
    run_widget(qtbot, loc)
    assert viewer.layers["[ncc] tiny localisations"] is mine and len(mine.data) == 1
    assert GENERATED_KEY not in mine.metadata
    assert len(viewer.layers["[ncc] tiny localisations (2)"].data) > 0


@pytest.fixture
def errors(monkeypatch):
    """The messages shown with napari's show_error by the widgets."""
    shown: list[str] = []
    monkeypatch.setattr(_base, "show_error", shown.append)
    return shown


@pytest.mark.parametrize("cls", [DenoiseWidget, LocaliseWidget, TrackWidget, RenderWidget, PipelineWidget,
                                 TranslateWidget, E2EWidget])
def test_no_layer_selected_is_a_notification(make_napari_viewer, errors, cls):
    w = cls(make_napari_viewer())
    assert w.start() is None
    assert len(errors) == 1 and errors[0] == w.last_error
    assert w.last_error.startswith("no ") and "Traceback" not in w.last_error
    assert w.status.value.startswith("error:")
    assert w.run_button.enabled


def test_bad_input_is_a_notification_saying_what_to_do(sample_viewer, errors, qtbot):
    viewer, image, gt = sample_viewer
    flat = viewer.add_image(np.zeros((8, 8)), name="flat")
    loc = LocaliseWidget(viewer)
    loc.image.value = image
    loc.psf_layer.value = flat  # an image without a PSF
    assert loc.start() is None
    assert "holds no PSF" in errors[-1] and "Estimate PSF" in errors[-1]

    tr = TrackWidget(viewer)
    tr.points.value = viewer.add_points(np.zeros((0, 3)), name="clicks")
    assert tr.start() is None
    assert "empty" in errors[-1]

    pw = PipelineWidget(viewer)
    pw.image.value = image
    pw.psf_layer.value = flat
    assert pw.start() is None
    assert "holds no PSF" in errors[-1]
    assert len(errors) == 3

    # Found only once running (no bubble to estimate a PSF from in a blank frame): still a notification.
    pw.image.value = flat
    pw.psf_layer.value = None
    assert pw.start() is not None
    wait_for_worker(qtbot, pw)
    assert len(errors) == 4 and "bubble" in errors[-1] and pw.status.value.startswith("error:")


def test_failures_in_the_worker_and_while_adding_layers_are_notifications(sample_viewer, errors, qtbot,
                                                                         monkeypatch):
    viewer, image, gt = sample_viewer
    pts = viewer.add_points(np.array([[0, 10.0, 10.0], [1, 10.5, 10.0], [2, 11.0, 10.0], [3, 11.5, 10.0]]),
                            name="clicks")
    tr = TrackWidget(viewer)
    tr.points.value = pts

    def broken(*args, **kwargs):
        raise RuntimeError("linker exploded")

    # A RuntimeError in the worker (superqt would only warn about it) reaches the user.
    monkeypatch.setattr(track_widget.Linker, "add", broken)
    assert tr.start() is not None
    wait_for_worker(qtbot, tr)
    assert errors == ["RuntimeError: linker exploded"]
    monkeypatch.undo()
    monkeypatch.setattr(_base, "show_error", errors.append)

    monkeypatch.setattr(track_widget, "show_tracks", broken)
    assert tr.start() is not None
    wait_for_worker(qtbot, tr)
    assert errors[-1] == "RuntimeError: linker exploded" and len(errors) == 2
    assert "clicks tracks" not in viewer.layers and tr.run_button.enabled


def test_warnings_in_the_worker_are_notifications(sample_viewer, qtbot, monkeypatch):
    viewer, image, gt = sample_viewer
    warned: list[str] = []
    monkeypatch.setattr(_base, "show_warning", warned.append)
    original = track_widget.Linker.add

    def add(self, *args, **kwargs):
        warnings.warn("a warning from the core", UserWarning)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(track_widget.Linker, "add", add)
    tr = TrackWidget(viewer)
    tr.points.value = viewer.add_points(np.array([[0, 10.0, 10.0], [1, 10.5, 10.0]]), name="clicks")
    tr.min_length.value = 1
    run_widget(qtbot, tr)
    assert warned and warned[0] == "a warning from the core"
    assert "clicks tracks" in viewer.layers


def test_pipeline_widget_runs_baseline_and_can_be_stopped(sample_viewer, qtbot):
    viewer, image, gt = sample_viewer
    w = PipelineWidget(viewer)
    w.image.value = image
    w.block_size.value = 20
    w.pipeline.value = "baseline1"
    run_widget(qtbot, w)
    density = viewer.layers[f"[baseline1] {image.name} SR density"]
    params = _check_record(density, "pipeline", image.name, image.name, "baseline1")
    assert params["block_size"] == 20 and params["psf_layer"] == "auto" and params["pipeline"] == "baseline1"
    summary = density.metadata[RESULT_KEY]["summary"]
    points = viewer.layers[f"[baseline1] {image.name} localisations"]
    assert summary["n_localisations"] == len(points.data) > 0
    assert f"[baseline1] {image.name} tracks" in viewer.layers
    assert viewer.layers[f"[baseline1] {image.name} SR velocity"].metadata["unit"] == "mm/s"
    n_layers = len(viewer.layers)

    # Stop: the run ends early and adds nothing.
    w.pipeline.value = "baseline2"
    assert w.start() is not None
    w.stop()
    wait_for_worker(qtbot, w)
    assert f"[baseline2] {image.name} SR density" not in viewer.layers
    assert len(viewer.layers) == n_layers


def test_network_stages_name_and_record_their_results(make_napari_viewer, qtbot, tmp_path):
    """Translate -> ``<input> MB-only`` (magma); E2E on it names its maps after the CEUS layer."""
    nets = tiny_checkpoints(tmp_path)
    viewer = make_napari_viewer()
    frames = np.random.default_rng(0).gamma(2.0, 0.2, size=(9, 16, 20)).astype(np.float32)
    ceus = viewer.add_image(frames, name="ceus", scale=(1, 2, 3), translate=(0, 5, -4),
                            metadata={"pixel_size_um": 50.0, "frame_rate_hz": 500.0})
    tw = TranslateWidget(viewer)
    tw.image.value = ceus
    tw.model.use_file(nets["mbdt"])
    run_widget(qtbot, tw)
    mb = viewer.layers["ceus MB-only"]
    params = _check_record(mb, "translate", "ceus", "ceus")
    assert params["model"] == str(nets["mbdt"]) and mb.metadata["mb_only"]
    assert mb.colormap.name == "magma" and mb.metadata["frame_rate_hz"] == 500.0
    np.testing.assert_allclose(mb.scale, ceus.scale)
    np.testing.assert_allclose(mb.translate, ceus.translate)

    ew = E2EWidget(viewer)
    ew.image.value = mb
    assert ew.mb_only.value
    ew.mbtnet.use_file(nets["mbtnet"])
    run_widget(qtbot, ew)
    density = viewer.layers["[cycleulm-e2e] ceus SR density"]
    params = _check_record(density, "e2e", "ceus MB-only", "ceus", "cycleulm-e2e")
    assert params["mb_only_input"] and params["mbdt"] is None
    assert viewer.layers["[cycleulm-e2e] ceus SR velocity"].metadata["unit"] == "mm/s"
    geo = sr_layer_kwargs(ceus, 4)
    np.testing.assert_allclose(density.scale, geo["scale"])
    np.testing.assert_allclose(density.translate, geo["translate"])
