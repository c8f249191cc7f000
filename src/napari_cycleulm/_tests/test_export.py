"""export.py, the PNG / calibrated-TIFF writer hook and `cycleulm export`."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from napari_cycleulm._napari.writer import write_image
from napari_cycleulm.cli import main
from napari_cycleulm.errors import CycleULMError
from napari_cycleulm._napari.widgets._layer_export import LayerExport, export_layers, pixel_size_from_meta
from napari_cycleulm.export import (
    export_maps,
    export_run,
    export_tables,
    map_style,
    nice_scale_bar_mm,
    read_map_tiff,
    safe_filename,
    with_physical_units,
    write_map_tiff,
    write_png,
)
from napari_cycleulm.io import read_stack, read_table
from napari_cycleulm.pipeline import PipelineResult, write_maps
from napari_cycleulm.render import SRRenderer
from napari_cycleulm.io.tables import Localisations, Tracks


def _bar(png_path):
    """(row, first column, last column) of the white scale bar: the lowest fully white row."""
    img = mpimg.imread(png_path)[..., :3]
    white = img.min(axis=-1) > 0.97
    rows = np.flatnonzero(white.any(axis=1))
    assert rows.size, "no white pixel: no scale bar"
    r = rows.max()
    cols = np.flatnonzero(white[r])
    return r, cols.min(), cols.max()


def _map(h=64, w=100):
    yy, xx = np.mgrid[0:h, 0:w]
    img = (np.exp(-0.5 * ((yy - h / 3) / 2.0) ** 2) * (xx / w)).astype(np.float32)
    img[0, 0] = np.nan
    return img


# -- TIFF ------------------------------------------------------------------------
def test_map_tiff_round_trip_keeps_values_pixel_size_and_info(tmp_path):
    img = _map()
    path = write_map_tiff(tmp_path / "m.tif", img, 12.5, info={"unit": "mm/s"})
    back = read_map_tiff(path)
    assert back.data.dtype == np.float32
    np.testing.assert_array_equal(back.data, img)  # NaN kept
    assert back.pixel_size_um == pytest.approx(12.5)
    assert back.info == {"pixel_size_um": 12.5, "unit": "mm/s"}
    assert read_stack(path).shape == (1, *img.shape)  # the reader still opens it
    stack = np.stack([np.nan_to_num(img)] * 3)
    back = read_map_tiff(write_map_tiff(tmp_path / "s.tif", stack, 50.0))
    assert back.data.shape == (3, *img.shape) and back.pixel_size_um == pytest.approx(50.0)
    assert read_map_tiff(write_map_tiff(tmp_path / "n.tif", img)).pixel_size_um is None
    assert not list(tmp_path.glob("*.part"))


def test_map_tiff_bad_input(tmp_path):
    with pytest.raises(CycleULMError, match=".tif"):
        write_map_tiff(tmp_path / "m.png", _map())
    with pytest.raises(CycleULMError, match="pixel_size_um"):
        write_map_tiff(tmp_path / "m.tif", _map(), -1)
    with pytest.raises(CycleULMError, match="2-D"):
        write_map_tiff(tmp_path / "m.tif", np.zeros(5))
    with pytest.raises(CycleULMError, match="does not exist"):
        read_map_tiff(tmp_path / "missing.tif")


# -- PNG -------------------------------------------------------------------------
def test_png_automatic_range_has_the_scale_bar_of_the_right_length(tmp_path):
    img = _map()
    path = write_png(img, tmp_path / "a.png", cmap="magma", gamma=1.0, scale_bar_mm=0.5, pixel_size_um=12.5)
    png = mpimg.imread(path)
    assert png.shape[:2] == img.shape
    r, c0, c1 = _bar(path)
    assert c1 - c0 + 1 == pytest.approx(0.5 * 1000 / 12.5, abs=1)  # 40 px
    assert r > img.shape[0] * 0.8 and c1 > img.shape[1] * 0.85  # bottom right
    # "auto": a round length of at most a fifth of the width (100 px * 12.5 um = 1.25 mm -> 0.2 mm)
    r, c0, c1 = _bar(write_png(img, tmp_path / "b.png", cmap="magma", pixel_size_um=12.5))
    assert c1 - c0 + 1 == pytest.approx(16, abs=1)
    # no pixel size: "auto" draws no bar, an explicit length is an error
    no_bar = mpimg.imread(write_png(img, tmp_path / "c.png", cmap="magma"))[..., :3]
    assert not (no_bar.min(axis=-1) > 0.97).any()
    with pytest.raises(CycleULMError, match="pixel size"):
        write_png(img, tmp_path / "d.png", scale_bar_mm=1.0)


def test_png_as_displayed_uses_contrast_limits_gamma_and_colours(tmp_path):
    img = np.array([[0.0, 1.0, 2.0, 4.0]] * 4)
    colours = np.array([[0, 0, 1, 1], [1, 0, 0, 1]], float)  # blue -> red
    path = write_png(img, tmp_path / "d.png", cmap=colours, contrast_limits=(1.0, 2.0), gamma=1.0,
                     scale_bar_mm=None)
    png = mpimg.imread(path)[0, :, :3]
    np.testing.assert_allclose(png[0], [0, 0, 1], atol=0.01)  # below the low limit: bottom colour
    np.testing.assert_allclose(png[1], [0, 0, 1], atol=0.01)
    np.testing.assert_allclose(png[2], [1, 0, 0], atol=0.01)  # at / above the high limit: top colour
    np.testing.assert_allclose(png[3], [1, 0, 0], atol=0.01)
    with pytest.raises(CycleULMError, match="colormap"):
        write_png(img, tmp_path / "e.png", cmap="no-such-map")
    with pytest.raises(CycleULMError, match="2-D"):
        write_png(np.zeros((2, 3, 3)), tmp_path / "e.png")


def test_scale_bar_lengths_and_map_styles_and_file_names():
    assert nice_scale_bar_mm(512, 12.5) == 1.0  # 6.4 mm wide -> at most 1.28 mm
    assert nice_scale_bar_mm(160, 50) == 1.0
    assert nice_scale_bar_mm(100, 12.5) == 0.2
    assert nice_scale_bar_mm(2000, 12.5) == 5.0
    assert map_style("sr_density")[0] == "hot" and map_style("sr_velocity")[0] == "turbo"
    assert map_style("sr_axial_velocity")[0] == "RdBu_r" and map_style("sr_direction")[0] == "twilight"
    assert safe_filename("[ncc] CEUS sample SR density (2)") == "ncc_CEUS_sample_SR_density_2"


def test_pixel_size_from_layer_state():
    meta = {"metadata": {"pixel_size_um": 50.0}}
    assert pixel_size_from_meta(meta) == 50.0
    sr = {"metadata": {"cycleulm": {"params": {"pixel_size_um": 50.0, "upsampling": 4}}}}
    assert pixel_size_from_meta(sr, "image") == 12.5
    assert pixel_size_from_meta(sr, "points") == 50.0  # points stay in CEUS pixels
    assert pixel_size_from_meta({"scale": (1, 0.0125, 0.0125), "units": ("s", "mm", "mm")}) == pytest.approx(12.5)
    assert pixel_size_from_meta({"scale": (1, 1), "units": ("pixel", "pixel"), "metadata": {}}) is None


# -- maps and tables ---------------------------------------------------------------
def _tracks():
    f = np.arange(10)
    return Tracks({"track_id": np.r_[np.zeros(10), np.ones(10)], "frame": np.r_[f, f],
                   "y": np.r_[np.full(10, 8.0), 4 + 0.5 * f], "x": np.r_[2 + f, np.full(10, 12.0)],
                   "vy": np.r_[np.zeros(10), np.full(10, 0.5)], "vx": np.r_[np.ones(10), np.zeros(10)]})


def test_export_sr_maps_writes_calibrated_tiffs_and_pngs(tmp_path):
    r = SRRenderer((16, 20), upsampling=4)
    r.add_tracks(_tracks())
    maps = r.result(pixel_size_um=50.0, frame_rate_hz=500.0)
    report = export_maps(maps, tmp_path, prefix="run_", formats=("tif", "png"))
    names = sorted(p.name for p in report.paths)
    assert "run_sr_density.tif" in names and "run_sr_velocity.png" in names and len(names) == 10
    back = read_map_tiff(tmp_path / "run_sr_velocity.tif")
    assert back.pixel_size_um == pytest.approx(12.5) and back.info["unit"] == "mm/s"
    np.testing.assert_array_equal(back.data, maps.velocity)
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert len(manifest["files"]) == 10
    _bar(tmp_path / "run_sr_density.png")


def test_tables_to_csv_with_physical_units(tmp_path):
    t = _tracks()
    report = export_tables({"tracks": t, "locs": Localisations({"frame": [3], "y": [1.0], "x": [2.0]})},
                           tmp_path, pixel_size_um=50.0, frame_rate_hz=500.0, physical=True)
    back = read_table(tmp_path / "tracks.csv")
    assert isinstance(back, Tracks) and len(back) == 20
    np.testing.assert_allclose(back["y_um"], t["y"] * 50)
    np.testing.assert_allclose(back["t_s"], t["frame"] / 500)
    np.testing.assert_allclose(back["speed_mm_s"], np.hypot(t["vy"], t["vx"]) * 50 * 500 / 1000)
    assert report.files[0]["tracks"] == 2
    locs = read_table(tmp_path / "locs.csv")
    assert locs.names == ["frame", "y", "x", "y_um", "x_um", "t_s"]
    assert with_physical_units(t) is t


def test_write_png_automatic_range_is_to_pngs_whatever_the_colormap_form(tmp_path):
    """One automatic rule: colours given as an array draw like the same colormap given by name."""
    import matplotlib

    from napari_cycleulm.render import to_png

    img = np.nan_to_num(_map()) * 3.0
    colours = matplotlib.colormaps["magma"](np.linspace(0.0, 1.0, 256))
    by_name = mpimg.imread(write_png(img, tmp_path / "name.png", cmap="magma", gamma=0.7, scale_bar_mm=None))
    by_array = mpimg.imread(write_png(img, tmp_path / "array.png", cmap=colours, gamma=0.7, scale_bar_mm=None))
    np.testing.assert_allclose(by_array, by_name, atol=1.5 / 255)
    to_png(img, tmp_path / "render.png", cmap="magma", gamma=0.7)  # scale_bar_mm=None by default there
    np.testing.assert_array_equal(mpimg.imread(tmp_path / "render.png"), by_name)


def test_the_core_knows_no_napari_layers():
    """Layer-state parsing and layer snapshots live on the napari side (_napari/widgets/_layer_export.py)."""
    import napari_cycleulm.export as export

    for name in ("LayerExport", "export_layers", "iter_export_layers", "pixel_size_from_meta",
                 "frame_rate_from_meta", "_meta_value"):
        assert not hasattr(export, name), name
        assert name not in export.__all__


def test_export_layers_images_points_and_a_stack(tmp_path):
    items = [
        LayerExport("density [ncc]", "image", _map(), pixel_size_um=12.5, cmap="hot",
                    contrast_limits=(0.0, 0.5), gamma=1.0),
        LayerExport("frames", "image", np.stack([_map(), _map() * 2]), pixel_size_um=50.0),
        LayerExport("no size", "image", _map()),
        LayerExport("locs", "points", Localisations({"frame": [0], "y": [1.0], "x": [2.0], "score": [0.5]})),
    ]
    report = export_layers(items, tmp_path, scale_bar_mm=1.0)
    names = {p.name for p in report.paths}
    assert names == {"density_ncc.tif", "density_ncc.png", "frames.tif", "frames_MIP.png",
                     "no_size.tif", "no_size.png", "locs.csv"}
    assert read_map_tiff(tmp_path / "frames.tif").data.shape == (2, 64, 100)
    assert any("no size" in n for n in report.notes)
    assert read_table(tmp_path / "locs.csv").names == ["frame", "y", "x", "score"]
    with pytest.raises(CycleULMError, match="same file name"):
        export_layers([items[0], LayerExport("density  [ncc]", "image", _map())], tmp_path)
    with pytest.raises(CycleULMError, match="no file was written"):
        export_layers(items[3:], tmp_path, formats=("png",))


# -- the writer hook ------------------------------------------------------------------
def test_writer_png_as_displayed_with_scale_bar_and_calibrated_tif(tmp_path):
    from napari.layers import Image

    img = _map()
    layer = Image(img, colormap="bop orange", contrast_limits=(0, 0.6), gamma=0.8,
                  metadata={"pixel_size_um": 50.0, "cycleulm": {"params": {"upsampling": 4}}})
    _, meta, _ = layer.as_layer_data_tuple()
    (path,) = write_image(str(tmp_path / "d.png"), img, meta)
    png = mpimg.imread(path)[..., :3]
    assert png.shape[:2] == img.shape
    r, c0, c1 = _bar(path)
    # 100 px of 12.5 um -> a 0.2 mm bar of 16 px
    assert c1 - c0 + 1 == pytest.approx(16, abs=1)
    expected = layer.colormap.map(np.array([min(1.0, (img[21, 90] / 0.6)) ** 0.8]))[0, :3]
    np.testing.assert_allclose(png[21, 90], expected, atol=0.02)
    (tif,) = write_image(str(tmp_path / "d.tif"), img, meta)
    assert read_map_tiff(tif).pixel_size_um == pytest.approx(12.5)
    with pytest.raises(CycleULMError, match="2-D"):
        write_image(str(tmp_path / "s.png"), np.zeros((3, 8, 8)), meta)
    with pytest.raises(CycleULMError, match="RGB"):
        write_image(str(tmp_path / "rgb.png"), np.zeros((8, 8, 3)), {**meta, "rgb": True})


# -- cycleulm export ----------------------------------------------------------------
@pytest.fixture
def run_dir(tmp_path):
    """A tiny folder as `cycleulm run` writes it (maps through pipeline.write_maps)."""
    out = tmp_path / "run"
    tracks = _tracks()
    r = SRRenderer((16, 20), upsampling=4)
    r.add_tracks(tracks)
    locs = Localisations({n: tracks[n] for n in ("frame", "y", "x")}).with_columns(score=np.linspace(0, 1, 20))
    res = PipelineResult(
        pipeline="baseline1", localisations=locs, tracks=tracks,
        maps=r.result(pixel_size_um=50.0, frame_rate_hz=500.0),
        power_doppler=np.ones((16, 20), np.float32), n_frames=10, n_localisations=20, n_tracks=2,
        params={"pixel_size_um": 50.0, "frame_rate_hz": 500.0, "upsampling": 4},
    )
    res.outputs = write_maps(res, out)
    locs.to_csv(out / "localisations.csv")
    tracks.to_csv(out / "tracks.csv")
    (out / "run.json").write_text(json.dumps(res.summary()))
    return out


def test_cli_export_a_run_folder(run_dir, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["export", str(run_dir), "--out", str(out), "--scale-bar-mm", "0.1"]) == 0
    text = capsys.readouterr().out
    assert "12.5 um/px" in text and "exported 12 file(s)" in text
    assert read_map_tiff(out / "sr_density.tif").pixel_size_um == pytest.approx(12.5)
    assert read_map_tiff(out / "power_doppler.tif").pixel_size_um == pytest.approx(50.0)
    _, c0, c1 = _bar(out / "sr_density.png")
    assert c1 - c0 + 1 == pytest.approx(8, abs=1)  # 0.1 mm of 12.5 um pixels
    assert read_table(out / "tracks.csv").n_tracks == 2
    manifest = json.loads((out / "export.json").read_text())
    assert {f["format"] for f in manifest["files"]} == {"tif", "png", "csv"}
    # only PNGs, another colormap, CEUS pixel size given on the command line
    out2 = tmp_path / "png"
    assert main(["export", str(run_dir / "sr_density.tif"), "--out", str(out2), "--png",
                 "--colormap", "magma", "--pixel-size-um", "100"]) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["export.json", "sr_density.png"]
    assert json.loads((out2 / "export.json").read_text())["files"][0]["pixel_size_um"] == 25.0


def test_export_run_tables_with_physical_units_from_run_json(run_dir, tmp_path):
    report = export_run([run_dir], tmp_path / "csv", formats=["csv"], physical=True)
    assert sorted(p.name for p in report.paths) == ["localisations.csv", "tracks.csv"]
    locs = read_table(tmp_path / "csv" / "localisations.csv")
    np.testing.assert_allclose(locs["x_um"], locs["x"] * 50.0)  # pixel size from run.json
    np.testing.assert_allclose(locs["t_s"], locs["frame"] / 500.0)


def test_cli_export_errors_are_one_line(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["export", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "lacks column" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--out", str(run_dir)]) == 2
    assert "overwrite" in capsys.readouterr().err
    stack = tmp_path / "stack.tif"
    write_map_tiff(stack, np.ones((3, 8, 8)))
    assert main(["export", str(stack), "--out", str(tmp_path / "o")]) == 2
    assert "--mip" in capsys.readouterr().err
    assert main(["export", str(stack), "--out", str(tmp_path / "o"), "--mip", "--scale-bar-mm", "1"]) == 2
    assert "--pixel-size-um" in capsys.readouterr().err
    assert main(["export", str(stack), "--out", str(tmp_path / "o"), "--mip"]) == 0
    assert (tmp_path / "o" / "stack_MIP.png").is_file()
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


def test_cli_evaluate_sweep_and_plot(run_dir, tmp_path, capsys):
    gt = Localisations({n: _tracks()[n] for n in ("frame", "y", "x")})
    gt.to_csv(tmp_path / "gt.csv")
    assert main(["evaluate", str(tmp_path / "gt.csv"), str(run_dir / "localisations.csv"), "--sweep",
                 "--plot", str(tmp_path / "pr.png"), "--out", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["recall"] == 1.0 and len(ev["sweep"]) > 2
    assert ev["sweep"][-1]["precision"] == 1.0
    assert (tmp_path / "pr.png").is_file()
    assert "precision-recall" in capsys.readouterr().out
