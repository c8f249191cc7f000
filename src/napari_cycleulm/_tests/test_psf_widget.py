"""GUI tests of the PSF widget: picking bubbles by clicking, snapping, the gallery, Estimate, Auto.

Clicks are simulated with ``Points.add`` (what napari's add mode calls on a
click) or by appending rows to the layer data, 1-2 px off the true bubble
centres of the simulated sample.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_cycleulm._napari.sample_data import make_sample  # noqa: E402
from napari_cycleulm._tests._gui import run_widget, wait_for_worker  # noqa: E402
from napari_cycleulm._napari.widgets import _base  # noqa: E402
from napari_cycleulm._napari.widgets._layers import PSF_METADATA_KEY, psf_from_layer  # noqa: E402
from napari_cycleulm._napari.widgets.psf_widget import PSFWidget, _camera  # noqa: E402

pytestmark = pytest.mark.gui

#: Clicks land this far (frame, y, x) from the nearest pixel of the true centre.
OFFSETS = np.array([[0, 2, -1], [0, -2, 1], [0, 1, 2], [0, -1, -2], [0, 2, 2], [0, -2, -1]])


@pytest.fixture(scope="module")
def sample():
    """The simulated sample: frames, metadata, ground-truth positions and amplitudes."""
    (frames, kwargs, _), (gt, gt_kwargs, _) = make_sample()
    return frames, kwargs["metadata"], gt, gt_kwargs["features"]


@pytest.fixture(scope="module")
def isolated(sample):
    """Ground-truth bubbles a researcher would click: bright, isolated, away from the border,
    one per bubble track (10 of them, over many frames)."""
    frames, _, gt, feats = sample
    _, h, w = frames.shape
    keep = []
    for i, (f, y, x) in enumerate(gt):
        same = gt[gt[:, 0] == f]
        nearest = np.sort(np.hypot(same[:, 1] - y, same[:, 2] - x))[1:2]
        if (nearest.size == 0 or nearest[0] > 16) and 20 < y < h - 20 and 20 < x < w - 20 \
                and feats["amplitude"][i] > 0.8:
            keep.append(i)
    keep = np.array(keep)
    _, first = np.unique(np.asarray(feats["track_id"])[keep], return_index=True)
    chosen = gt[keep[np.sort(first)]]
    assert len(chosen) >= 8
    return chosen


def _clicks(truth: np.ndarray) -> np.ndarray:
    return np.round(truth) + OFFSETS[np.arange(len(truth)) % len(OFFSETS)]


@pytest.fixture
def viewer_widget(make_napari_viewer, sample):
    frames, meta, _, _ = sample
    viewer = make_napari_viewer()
    image = viewer.add_image(frames, name="CEUS sample", metadata=dict(meta), colormap="gray")
    w = PSFWidget(viewer)
    viewer.window.add_dock_widget(w)
    return viewer, image, w


@pytest.fixture
def errors(monkeypatch):
    """Every error notification the widgets show."""
    shown = []
    monkeypatch.setattr(_base, "show_error", shown.append)
    return shown


def test_new_picking_layer_overlays_the_ceus_layer_in_add_mode(make_napari_viewer, sample):
    frames, meta, _, _ = sample
    viewer = make_napari_viewer()
    image = viewer.add_image(frames[:5], name="scan", scale=(1, 0.05, 0.1), translate=(0, 1, 2))
    w = PSFWidget(viewer)
    layer = w.new_picking_layer()
    assert layer.name == "scan PSF bubbles" and len(layer.data) == 0 and layer.ndim == 3
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    assert layer.mode == "add"
    assert viewer.layers.selection.active is layer
    assert w.points.value is layer
    # A click (in world coordinates, as napari gives it) snaps onto the brightest
    # CEUS pixel within 3 px, in the CEUS pixel grid.
    f, y, x = 2, 40, 60
    data = np.asarray(image.data[f])
    near = data[y - 3 : y + 4, x - 3 : x + 4]
    layer.add(layer.world_to_data(image.data_to_world([f, y, x])))
    yy, xx = np.mgrid[-3:4, -3:4]
    near = np.where(np.hypot(yy, xx) <= 3, near, -np.inf)
    py, px = np.unravel_index(np.argmax(near), near.shape)
    np.testing.assert_allclose(layer.data[0], [f, y + py - 3, x + px - 3], atol=1e-6)


def test_clicks_snap_to_the_bubble_centres(viewer_widget, isolated):
    viewer, image, w = viewer_widget
    layer = w.new_picking_layer()
    clicks = _clicks(isolated)
    for c in clicks[:-1]:
        layer.add(c)  # what a click in add mode does
    layer.data = np.vstack([layer.data, clicks[-1:]])  # appending to the data snaps too
    assert len(layer.data) == len(isolated)
    err = np.hypot(*(layer.data[:, 1:] - isolated[:, 1:]).T)
    assert err.max() < 1.0, err
    np.testing.assert_array_equal(layer.data[:, 0], isolated[:, 0])
    assert np.abs(clicks[:, 1:] - isolated[:, 1:]).max() > 1.5  # the clicks themselves were off
    # One pending tile per pick.
    w.refresh_gallery()
    assert len(w.gallery.tiles) == len(isolated)
    assert {t.state for t in w.gallery.tiles} == {"pending"}

    # Dragging a pick does not snap it; with 'snap clicks' off, a click stays put.
    moved = layer.data.copy()
    moved[0, 1:] += 2
    layer.data = moved
    np.testing.assert_array_equal(layer.data[0], moved[0])
    w.snap.value = False
    layer.add(clicks[0])
    np.testing.assert_array_equal(layer.data[-1], clicks[0])


def test_estimate_from_clicks_matches_the_true_psf_and_flags_the_border_pick(
    viewer_widget, isolated, sample, qtbot
):
    viewer, image, w = viewer_widget
    _, meta, _, _ = sample
    layer = w.new_picking_layer()
    for c in _clicks(isolated):
        layer.add(c)
    border = len(layer.data)
    layer.add([int(isolated[0, 0]), 1, 80])  # a pick at the top edge
    run_widget(qtbot, w)

    psf = w.psf
    assert abs(psf.fwhm_y_px / meta["psf_fwhm_y_px"] - 1) < 0.15
    assert abs(psf.fwhm_x_px / meta["psf_fwhm_x_px"] - 1) < 0.15
    assert psf.pixel_size_um == meta["pixel_size_um"]
    # Result layers carry the PSF (the MB-only one shrunk by the factor) and how it was made.
    psf_layer = viewer.layers["CEUS sample PSF"]
    mb_layer = viewer.layers["CEUS sample MB-only PSF"]
    assert psf_from_layer(psf_layer).fwhm_x_px == pytest.approx(psf.fwhm_x_px)
    mb = psf_from_layer(mb_layer)
    assert mb.fwhm_y_px == pytest.approx(0.5 * psf.fwhm_y_px)
    assert PSF_METADATA_KEY in mb_layer.metadata
    info = psf_layer.metadata["cycleulm"]
    assert info["stage"] == "psf" and info["source"] == "CEUS sample"
    assert len(info["params"]["points"]) == border + 1
    # The result line gives the FWHM in pixels and micrometres and the MB-only PSF.
    text = w.result.value
    assert "FWHM y" in text and f"{psf.fwhm_x_px:.2f} px" in text
    assert f"{psf.fwhm_x_um:.0f} um" in text and "MB-only" in text

    # Gallery: one tile per pick; the border pick is red with its reason, the used ones green.
    tiles = w.gallery.tiles
    assert len(tiles) == border + 1
    assert border in w.gallery.rejected_indices
    assert "border" in tiles[border].caption.text() and "border" in tiles[border].toolTip()
    used = [t.index for t in tiles if t.state == "used"]
    assert used == w.estimate.used_index.tolist()
    assert sorted(w.gallery.rejected_indices) == sorted(i for i, _ in w.estimate.rejected)
    # ... and in the Points layer: a 'rejected' feature and a red marker.
    assert layer.features["rejected"].tolist() == [t.rejected for t in tiles]
    assert "border" in layer.features["reason"][border]
    np.testing.assert_allclose(layer.border_color[border], [1, 0.188, 0.188, 1], atol=0.01)
    np.testing.assert_allclose(layer.border_color[used[0]], [1, 1, 0, 1])

    # Deleting the rejected pick removes its tile; a new click is unflagged.
    layer.selected_data = {border}
    layer.remove_selected()
    layer.add(_clicks(isolated)[:1] + [[0, 0, 0]])
    w.refresh_gallery()
    assert len(w.gallery.tiles) == border + 1
    assert border not in w.gallery.rejected_indices
    assert not layer.features["rejected"].iloc[-1]


def test_clicking_a_tile_goes_to_its_bubble(viewer_widget, isolated, qtbot):
    from qtpy.QtCore import Qt

    viewer, image, w = viewer_widget
    layer = w.new_picking_layer()
    for c in _clicks(isolated[:3]):
        layer.add(c)
    w.refresh_gallery()
    qtbot.mouseClick(w.gallery.tiles[2], Qt.MouseButton.LeftButton)
    assert viewer.dims.current_step[0] == int(isolated[2, 0])
    np.testing.assert_allclose(_camera(viewer).center[-2:], layer.data[2, 1:], atol=1e-6)
    assert layer.selected_data == {2} and layer.mode == "select"


def test_auto_pick_runs_in_the_background_and_feeds_estimate(viewer_widget, sample, qtbot):
    viewer, image, w = viewer_widget
    _, meta, _, _ = sample
    assert w.start_auto_pick() is not None
    assert not w.auto_button.enabled
    wait_for_worker(qtbot, w)
    assert w.last_error is None, w.last_error
    layer = viewer.layers["CEUS sample PSF bubbles"]
    assert w.points.value is layer and len(layer.data) == w.n_auto.value
    # The proposals are editable: delete one, then estimate from the rest.
    layer.selected_data = {0}
    layer.remove_selected()
    w.refresh_gallery()
    assert len(w.gallery.tiles) == w.n_auto.value - 1
    run_widget(qtbot, w)
    assert abs(w.psf.fwhm_y_px / meta["psf_fwhm_y_px"] - 1) < 0.15
    assert abs(w.psf.fwhm_x_px / meta["psf_fwhm_x_px"] - 1) < 0.15
    assert w.auto_button.enabled


def test_failures_are_notifications_that_say_what_to_do(make_napari_viewer, errors, qtbot):
    viewer = make_napari_viewer()
    w = PSFWidget(viewer)
    # No CEUS layer, no bubbles layer.
    assert w.new_picking_layer() is None
    assert "no CEUS layer" in errors[-1]
    assert w.start() is None and "no CEUS layer" in errors[-1]

    rng = np.random.default_rng(0)
    blank = viewer.add_image(np.abs(rng.normal(0, 0.01, (4, 48, 48))).astype(np.float32), name="blank")
    w.image.value = blank
    assert w.start() is None and "New picking layer" in errors[-1]
    # Auto-pick on noise finds nothing and says what to do instead.
    assert w.start_auto_pick() is not None
    wait_for_worker(qtbot, w)
    assert "no isolated bubbles" in errors[-1] and "New picking layer" in errors[-1]
    layer = w.new_picking_layer()
    assert w.start() is None and "empty" in errors[-1]

    # A click outside the image cannot snap: it says so (and stays where it was).
    n_err = len(errors)
    layer.add([0, 30, 60])
    assert len(errors) == n_err + 1 and "outside the 48x48 image" in errors[-1]
    layer.selected_data = {0}
    layer.remove_selected()

    # Picks on an empty area: Estimate fails with the reasons, every tile is red.
    for c in ([0, 20, 20], [1, 24, 24], [2, 28, 20]):
        layer.add(c)
    assert w.start() is not None
    wait_for_worker(qtbot, w)
    assert "usable bubble" in w.last_error and "gallery" in w.last_error
    assert errors[-1] == w.last_error
    assert w.gallery.rejected_indices == [0, 1, 2]
    assert layer.features["rejected"].all()
    assert "blank PSF" not in viewer.layers


def test_user_points_layers_are_never_restyled(viewer_widget, isolated, qtbot):
    viewer, image, w = viewer_widget
    clicks = viewer.add_points(np.round(isolated), name="my clicks", face_color="blue")
    w.points.value = clicks
    run_widget(qtbot, w)
    assert list(clicks.features.columns) == []
    np.testing.assert_allclose(clicks.face_color[0], [0, 0, 1, 1])
    assert len(w.gallery.tiles) == len(isolated)
    assert {t.state for t in w.gallery.tiles} <= {"used", "rejected"}
