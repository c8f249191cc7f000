"""GUI: the Export widget writes calibrated TIFFs, colour PNGs with a scale bar and CSVs."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

pytest.importorskip("napari")

from napari_cycleulm._tests._gui import wait_for_worker  # noqa: E402
from napari_cycleulm._napari.widgets._layers import GENERATED_KEY  # noqa: E402
from napari_cycleulm._napari.widgets.export_widget import ExportWidget  # noqa: E402
from napari_cycleulm.export import read_map_tiff  # noqa: E402
from napari_cycleulm.io import read_table  # noqa: E402
from napari_cycleulm.render import SRRenderer  # noqa: E402
from napari_cycleulm.io.tables import Tracks  # noqa: E402

pytestmark = pytest.mark.gui

UNITS = {"pixel_size_um": 50.0, "frame_rate_hz": 500.0}


def press(qtbot, widget):
    widget.run_button.native.click()
    wait_for_worker(qtbot, widget)
    return widget.last_error


def _bar_length(path):
    img = mpimg.imread(path)[..., :3]
    white = img.min(axis=-1) > 0.97
    r = np.flatnonzero(white.any(axis=1)).max()
    cols = np.flatnonzero(white[r])
    return cols.max() - cols.min() + 1


@pytest.fixture
def export_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    frames = rng.random((5, 16, 20)).astype(np.float32)
    frames[:, 10:] = 0  # dark bottom rows, where the scale bar goes
    ceus = viewer.add_image(frames, name="CEUS", metadata=dict(UNITS))
    f = np.arange(10)
    tracks = Tracks({"track_id": np.r_[np.zeros(10), np.ones(10)], "frame": np.r_[f, f],
                     "y": np.r_[np.full(10, 8.0), 4 + 0.5 * f], "x": np.r_[2 + f, np.full(10, 12.0)],
                     "vy": np.r_[np.zeros(10), np.full(10, 0.5)], "vx": np.r_[np.ones(10), np.zeros(10)]})
    r = SRRenderer((16, 20), upsampling=4)
    r.add_tracks(tracks)
    result = {"cycleulm": {"stage": "render", "source": "CEUS"}, GENERATED_KEY: True, **UNITS}
    density = viewer.add_image(r.density(), name="[x] CEUS SR density", colormap="hot", contrast_limits=(0, 2),
                               scale=(0.25, 0.25), metadata={**result, "upsampling": 4, "sr_pixel_size_um": 12.5})
    points = viewer.add_points(tracks.positions, name="[x] CEUS localisations",
                               features={"score": np.linspace(0, 1, 20)}, metadata=result)
    tr = viewer.add_tracks(np.column_stack([tracks["track_id"], tracks.positions]), name="[x] CEUS tracks",
                           features={"vy": tracks["vy"], "vx": tracks["vx"]}, metadata=result)
    return viewer, ceus, density, points, tr


def test_export_results_as_tiff_png_and_csv(export_viewer, qtbot, tmp_path):
    viewer, ceus, density, points, tracks = export_viewer
    w = ExportWidget(viewer)
    assert not w.rerun.visible
    w.select_results.native.click()
    assert set(w.layers.value) == {density, points, tracks}  # CycleULM's results, not the CEUS stack
    w.folder.value = tmp_path
    w.physical.value = True
    assert press(qtbot, w) is None
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["export.json", "x_CEUS_SR_density.png", "x_CEUS_SR_density.tif", "x_CEUS_localisations.csv",
                     "x_CEUS_tracks.csv"]
    tif = read_map_tiff(tmp_path / "x_CEUS_SR_density.tif")
    np.testing.assert_array_equal(tif.data, density.data)
    assert tif.pixel_size_um == pytest.approx(12.5)
    # as displayed: hot colormap over contrast limits (0, 2); 80 px of 12.5 um -> a 0.2 mm bar (16 px)
    png = mpimg.imread(tmp_path / "x_CEUS_SR_density.png")[..., :3]
    assert png.shape[:2] == density.data.shape
    y, x = np.argwhere(density.data == 1)[0]
    np.testing.assert_allclose(png[y, x], density.colormap.map(np.array([0.5]))[0, :3], atol=0.02)
    assert _bar_length(tmp_path / "x_CEUS_SR_density.png") == pytest.approx(16, abs=1)
    locs = read_table(tmp_path / "x_CEUS_localisations.csv")
    np.testing.assert_allclose(locs.positions, points.data)
    np.testing.assert_allclose(locs["score"], np.linspace(0, 1, 20), atol=1e-6)
    np.testing.assert_allclose(locs["x_um"], points.data[:, 2] * 50)
    t = read_table(tmp_path / "x_CEUS_tracks.csv")
    assert isinstance(t, Tracks) and t.n_tracks == 2
    np.testing.assert_allclose(t["speed_mm_s"], np.hypot(t["vy"], t["vx"]) * 50 * 500 / 1000)
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert len(manifest["files"]) == 4
    assert "4 file(s)" in w.written.value


def test_export_a_stack_with_a_fixed_scale_bar_and_automatic_colours(export_viewer, qtbot, tmp_path):
    viewer, ceus, *_ = export_viewer
    w = ExportWidget(viewer)
    w.layers.value = [ceus]
    w.folder.value = tmp_path
    w.csv.value = False
    w.png_contrast.value = "auto"
    w.scale_bar_mm.value = 0.2  # 4 px of 50 um
    assert press(qtbot, w) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CEUS.tif", "CEUS_MIP.png", "export.json"]
    tif = read_map_tiff(tmp_path / "CEUS.tif")
    assert tif.data.shape == (5, 16, 20) and tif.pixel_size_um == pytest.approx(50.0)
    assert _bar_length(tmp_path / "CEUS_MIP.png") == pytest.approx(4, abs=1)


def test_export_mistakes(export_viewer, qtbot, tmp_path):
    viewer, ceus, *_ = export_viewer
    w = ExportWidget(viewer)
    assert "output folder" in press(qtbot, w)
    w.folder.value = tmp_path
    w.layers.value = []
    assert "at least one layer" in press(qtbot, w)
    w.layers.value = [ceus]
    for box in (w.tiff, w.png, w.csv):
        box.value = False
    assert "at least one format" in press(qtbot, w)
    w.csv.value = True  # CSV only, for an image: nothing to write
    assert "no file was written" in press(qtbot, w)
    assert not list(tmp_path.iterdir())
