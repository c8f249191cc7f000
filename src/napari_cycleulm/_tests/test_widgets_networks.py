"""GUI tests of the network widgets (Translate, E2E, Fine-tune MB-DT, Localise mblnet) under Xvfb.

Tiny random checkpoints (``_tiny_nets``) stand in for the shipped weights and
are passed by file path through the model chooser, so the tests check the
plumbing (layers, geometry, progress, Stop, errors), not the network quality.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_cycleulm._tests._tiny_nets import tiny_checkpoints  # noqa: E402
from napari_cycleulm._napari.widgets._layers import PSF_METADATA_KEY  # noqa: E402
from napari_cycleulm._napari.widgets._model_picker import MODELS_METADATA_KEY, trained_models  # noqa: E402
from napari_cycleulm._napari.widgets._plot import PlotPanel  # noqa: E402
from napari_cycleulm._napari.widgets.e2e_widget import E2EWidget  # noqa: E402
from napari_cycleulm._napari.widgets.localise_widget import LocaliseWidget  # noqa: E402
from napari_cycleulm._napari.widgets.train_widget import PLOTTED_LOSSES, TrainWidget  # noqa: E402
from napari_cycleulm._napari.widgets.translate_widget import TranslateWidget  # noqa: E402
from napari_cycleulm.dl.checkpoint import load_checkpoint  # noqa: E402
from napari_cycleulm.localise import localise_mblnet  # noqa: E402
from napari_cycleulm.stages import LOCALISERS, run_scale  # noqa: E402
from napari_cycleulm.preprocess.evidence_gate import DEFAULT_GATE  # noqa: E402
from napari_cycleulm.psf import PSF  # noqa: E402
from napari_cycleulm.roi import count_patches, rois_to_mask  # noqa: E402
from napari_cycleulm.dl.mbdt_inference import translate  # noqa: E402
from napari_cycleulm._tests._gui import run_widget, wait_for_worker  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("nets"))


def _ceus(t=6, h=48, w=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 0.2, size=(t, h, w)).astype(np.float32)


def _shown(widget) -> bool:
    """Not hidden by the widget (``visible`` is False until the dock is on screen)."""
    return not widget.native.isHidden()


def _add_psf(viewer, name="CEUS PSF"):
    psf = PSF(sigma_y_px=2.0, sigma_x_px=2.5)
    return viewer.add_image(psf.kernel, name=name, metadata={PSF_METADATA_KEY: psf.to_dict()})


def test_manifest_registers_the_network_widgets():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    widgets = {w.command: w.display_name for w in pm.get_manifest("napari-cycleulm").contributions.widgets}
    assert widgets["napari-cycleulm.translate_widget"] == "Translate to MB-only (MB-DT)"
    assert widgets["napari-cycleulm.e2e_widget"] == "End-to-end SR (MBT-Net)"
    assert widgets["napari-cycleulm.train_widget"] == "Fine-tune MB-DT"


def test_translate_widget_makes_mb_only_layer_with_the_input_geometry(make_napari_viewer, qtbot, nets):
    viewer = make_napari_viewer()
    frames = _ceus(t=10, h=32, w=40)
    ceus = viewer.add_image(frames, name="ceus", scale=(1, 2, 3), translate=(0, 5, -4),
                            metadata={"pixel_size_um": 50.0})
    w = TranslateWidget(viewer)
    w.image.value = ceus
    w.block_size.value = 4  # several blocks: neighbours cross block borders
    # The pipelines' evidence gate by default (its result is compared with the pipeline in
    # test_widget_pipeline_parity.py); here MB-DT's own output, block by block.
    assert w.gate.value == DEFAULT_GATE
    w.gate.value = "none"
    assert w.tta.value == "lateral"  # the pipelines' mirror averaging by default; here one pass
    w.tta.value = "none"
    w.model.use_file(nets["mbdt"])
    assert str(nets["mbdt"]) in w.model.active.value
    run_widget(qtbot, w)
    mb = viewer.layers["ceus MB-only"]
    assert mb.data.shape == frames.shape
    np.testing.assert_allclose(mb.scale, ceus.scale)
    np.testing.assert_allclose(mb.translate, ceus.translate)
    assert mb.metadata["mb_only"] and mb.metadata["pixel_size_um"] == 50.0
    np.testing.assert_allclose(mb.data, translate(frames, nets["mbdt"], device="cpu", tta="none"), atol=1e-5)
    assert mb.metadata["cycleulm"]["params"]["tta"] == "none"
    assert w.progress.value == w.progress.max == 10


def test_model_picker_without_a_file_is_a_clear_error(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(_ceus(), name="ceus")
    w = TranslateWidget(viewer)
    w.model.choice.value = "file"
    assert _shown(w.model.file)
    assert w.start() is None
    assert "checkpoint file" in w.last_error
    assert "ceus MB-only" not in viewer.layers


def test_e2e_widget_makes_sr_maps_overlaying_the_ceus(make_napari_viewer, qtbot, nets):
    viewer = make_napari_viewer()
    frames = _ceus(t=12, h=20, w=24)
    ceus = viewer.add_image(frames, name="ceus", scale=(1, 2, 2))
    w = E2EWidget(viewer)
    w.image.value = ceus
    assert not w.mb_only.value and _shown(w.mbdt.choice)
    w.mbdt.use_file(nets["mbdt"])
    w.mbtnet.use_file(nets["mbtnet"])
    w.block_size.value = 8
    run_widget(qtbot, w)
    density = viewer.layers["[cycleulm-e2e] ceus SR density"]
    velocity = viewer.layers["[cycleulm-e2e] ceus SR velocity"]
    assert density.data.shape == velocity.data.shape == (80, 96)
    np.testing.assert_allclose(density.scale, [0.5, 0.5])
    # SR pixel k sits at original pixel (k - 1.5) / 4: the SR map's first pixel centre.
    np.testing.assert_allclose(density.translate, [-0.75, -0.75])
    assert np.isfinite(density.data).all() and density.data.min() >= 0


def test_e2e_widget_takes_mb_only_layers_without_mbdt(make_napari_viewer, qtbot, nets):
    viewer = make_napari_viewer()
    mb = viewer.add_image(_ceus(t=9, h=16, w=16), name="mb", metadata={"mb_only": True})
    w = E2EWidget(viewer)
    w.image.value = mb
    assert w.mb_only.value and not _shown(w.mbdt.choice)
    w.mbdt.choice.value = "file"  # no file: must not matter, MB-DT is skipped
    w.mbtnet.use_file(nets["mbtnet"])
    run_widget(qtbot, w)
    assert viewer.layers["[cycleulm-e2e] mb SR density"].data.shape == (64, 64)


def test_localise_widget_runs_mblnet_on_mb_only_frames(make_napari_viewer, qtbot, nets):
    viewer = make_napari_viewer()
    frames = _ceus(t=5, h=24, w=24, seed=3) * 0.5
    mb = viewer.add_image(frames, name="mb")
    w = LocaliseWidget(viewer)
    w.image.value = mb
    assert not _shown(w.model.choice)
    w.method.value = "mblnet"
    # The pipelines' default (cycleulm-loc), from the stage registry.
    assert _shown(w.model.choice) and w.threshold.value == LOCALISERS["mblnet"].threshold_mbonly
    w.model.use_file(nets["mblnet"])
    w.threshold.value = 0.1  # the tiny random network is never confident
    run_widget(qtbot, w)
    pts = viewer.layers["[mblnet] mb localisations"]
    # A layer CycleULM did not make is brought to the library's intensity units first.
    want = localise_mblnet(frames * np.float32(run_scale(frames)), nets["mblnet"], threshold=0.1, device="cpu")
    assert len(pts.data) == len(want) > 0
    np.testing.assert_allclose(np.sort(pts.data[:, 1]), np.sort(want["y"]), atol=1e-4)
    assert "score" in pts.features.columns
    w.method.value = "ncc"
    assert w.threshold.value == 0.3 and not _shown(w.model.choice)


@pytest.fixture
def train_setup(make_napari_viewer, nets, tmp_path):
    viewer = make_napari_viewer()
    ceus = viewer.add_image(_ceus(), name="ceus")
    _add_psf(viewer)
    w = TrainWidget(viewer)
    w.image.value = ceus
    w.init.value = "file"
    w.init_file.value = nets["mbdt"]
    w.out.value = tmp_path / "run" / "mbdt.pt"
    w.batch_size.value = 2
    return viewer, ceus, w


def test_train_widget_counts_patches_and_refuses_a_tiny_roi(train_setup):
    viewer, ceus, w = train_setup
    assert w.n_patches == 9 * 9 and "whole frame" in w.patches.value  # 48 - 40 + 1 = 9 per axis
    rect = np.array([[0, 0], [0, 44], [44, 44], [44, 0]], float)
    expected = count_patches(rois_to_mask([rect], (48, 48)), 40)
    assert 0 < expected < 81
    # Drawn on a Shapes layer with its own scale: vertices are mapped through world coordinates.
    roi = viewer.add_shapes([rect / 2], shape_type="rectangle", name="roi", scale=(2, 2))
    w.roi.value = roi
    assert w.n_patches == expected and "inside the ROI" in w.patches.value
    # Editing the shapes updates the count.
    roi.data = [np.array([[1, 1], [1, 10], [10, 10], [10, 1]], float)]
    assert w.n_patches == 0 and "too small" in w.patches.value
    assert w.start() is None
    assert "smaller than one 40x40" in w.last_error
    assert "ceus MB-DT preview" not in viewer.layers


def test_train_widget_without_psf_reports_an_error(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(_ceus(), name="ceus")
    # An MB-only PSF layer is not offered (it would be shrunk twice).
    psf = PSF(sigma_y_px=1.0, sigma_x_px=1.0)
    viewer.add_image(psf.kernel, name="ceus MB-only PSF",
                     metadata={PSF_METADATA_KEY: psf.to_dict(), "shrink": 0.5})
    w = TrainWidget(viewer)
    assert w.psf_layer.value is None
    assert w.start() is None
    assert "no PSF" in w.last_error and "Estimate PSF" in w.last_error


def test_train_widget_trains_with_loss_plot_preview_and_checkpoint(train_setup, qtbot, nets, tmp_path):
    viewer, ceus, w = train_setup
    w.steps.value = 4
    run_widget(qtbot, w)
    assert w.history["step"] == [1, 2, 3, 4]  # log every step for short runs
    assert all(len(w.history[k]) == 4 and np.isfinite(w.history[k]).all() for k in PLOTTED_LOSSES)
    # The loss plot is the shared PlotPanel (no second plot class): one line per loss, savable.
    assert isinstance(w.plot, PlotPanel)
    lines = {line.get_label(): line for line in w.plot.ax.lines}
    assert set(lines) == set(PLOTTED_LOSSES.values())
    xs, ys = lines[PLOTTED_LOSSES["total"]].get_data()
    np.testing.assert_array_equal(xs, [1, 2, 3, 4])
    np.testing.assert_allclose(ys, w.history["total"])
    assert w.plot.save_button.enabled and w.plot.save_png(tmp_path / "losses").stat().st_size > 0
    preview = viewer.layers["ceus MB-DT preview"]
    assert preview.data.shape == (48, 48) and np.isfinite(preview.data).all()
    ck = load_checkpoint(tmp_path / "run" / "mbdt.pt", kind="mbdt", device="cpu")
    assert ck.step == 4
    assert w.active_path == tmp_path / "run" / "mbdt.pt"
    # The trained model is offered to the Translate widget.
    assert ceus.metadata[MODELS_METADATA_KEY]["mbdt"] == str(w.active_path)
    tr = TranslateWidget(viewer)
    tr.model.reset_choices()
    labels = [label for label, _ in trained_models(viewer, "mbdt")]
    assert labels == ["trained on ceus: mbdt.pt"]
    tr.model.choice.value = str(w.active_path)
    assert tr.model.source() == w.active_path

    # Save copies the checkpoint and makes the copy active; Load reads one back.
    w.save_path.value = tmp_path / "kept" / "mine.pt"
    dest = w.save()
    assert dest.is_file() and load_checkpoint(dest, kind="mbdt", device="cpu").step == 4
    assert w.active.value == str(dest)
    w.load_path.value = nets["mbdt"]
    assert w.load().step == 0 and w.active_path == nets["mbdt"]
    w.load_path.value = nets["mbtnet"]
    assert w.load() is None and "MB-DT" in w.last_error
    assert w.active_path == nets["mbdt"]  # a failed Load changes nothing


def test_train_widget_stop_keeps_a_loadable_checkpoint(train_setup, qtbot, tmp_path):
    viewer, ceus, w = train_setup
    w.steps.value = 100_000
    worker = w.start()
    assert worker is not None, w.last_error
    qtbot.waitUntil(lambda: len(w.history["step"]) >= 2, timeout=30_000)
    w.stop()
    wait_for_worker(qtbot, w, timeout=30_000)
    assert w.last_error is None
    assert w.status.value.startswith("stopped at step")
    ck = load_checkpoint(tmp_path / "run" / "mbdt.pt", kind="mbdt", device="cpu")
    assert 2 <= ck.step < 100_000
    assert ck.step >= w.history["step"][-1]
    assert w.active_path == tmp_path / "run" / "mbdt.pt"


def test_missing_default_weights_are_a_notification_not_a_crash(make_napari_viewer, monkeypatch, tmp_path):
    from napari_cycleulm.dl.models import DEFAULT_WEIGHTS

    # An installation whose default weights file is missing (the dict is shared by models and the picker).
    monkeypatch.setitem(DEFAULT_WEIGHTS, "mbtnet", tmp_path / "missing" / "mbtnet_default.pt")
    viewer = make_napari_viewer()
    viewer.add_image(_ceus(t=9, h=16, w=16), name="mb", metadata={"mb_only": True})
    w = E2EWidget(viewer)
    assert "not shipped" in w.mbtnet.active.value
    assert w.start() is None
    assert "no default weights shipped for MBT-Net" in w.last_error
