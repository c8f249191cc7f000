"""Specification of the napari reader and writer hooks (called directly, no viewer)."""

import numpy as np
import pytest
import tifffile

from napari_cycleulm._napari import reader as _reader
from napari_cycleulm._napari.reader import napari_get_reader
from napari_cycleulm._napari.writer import write_image, write_points, write_tracks
from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.io import read_stack, read_table
from napari_cycleulm.io.tables import Localisations, Tracks


def test_get_reader_accepts_supported_paths_only(tmp_path):
    for ext in (".tif", ".TIFF", ".npy", ".mat", ".h5", ".hdf5", ".csv"):
        assert callable(napari_get_reader(str(tmp_path / f"a{ext}")))
    assert napari_get_reader(str(tmp_path / "a.png")) is None
    assert napari_get_reader(str(tmp_path / "a")) is None
    assert callable(napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.csv")]))
    assert napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.png")]) is None
    assert napari_get_reader([]) is None


def test_read_image_layer(tmp_path):
    stack = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    p = tmp_path / "acq.tif"
    tifffile.imwrite(p, stack)
    layers = napari_get_reader(str(p))(str(p))
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image" and kwargs["name"] == "acq"
    assert kwargs["metadata"]["source"] == str(p)
    np.testing.assert_array_equal(data, stack)


def test_big_files_open_lazily(tmp_path, monkeypatch):
    stack = np.ones((3, 4, 5), np.float32)
    p = tmp_path / "big.npy"
    np.save(p, stack)
    monkeypatch.setattr(_reader, "LAZY_ABOVE_BYTES", 10)
    data, _, _ = napari_get_reader(str(p))(str(p))[0]
    # A dask array chunked along time, over a LazyStack (see test_iq_zarr.py).
    assert type(data).__module__.startswith("dask") and data.shape == (3, 4, 5)
    np.testing.assert_array_equal(data[1], stack[1])


def test_read_points_and_tracks_layers(tmp_path):
    loc = Localisations({"frame": [1, 0], "y": [2.5, 3.0], "x": [4.0, 5.5], "score": [0.9, 0.1]})
    loc.to_csv(tmp_path / "loc.csv")
    tr = Tracks({"track_id": [2, 1, 1], "frame": [0, 1, 0], "y": [1.0, 2.0, 3.0],
                 "x": [0.0, 1.0, 2.0], "vy": [0.1, 0.2, 0.3]})
    tr.to_csv(tmp_path / "tr.csv")
    paths = [str(tmp_path / "loc.csv"), str(tmp_path / "tr.csv")]
    (pdata, pkw, pkind), (tdata, tkw, tkind) = napari_get_reader(paths)(paths)
    assert pkind == "points" and pkw["name"] == "loc"
    np.testing.assert_allclose(pdata, [[1, 2.5, 4.0], [0, 3.0, 5.5]])
    np.testing.assert_allclose(pkw["features"]["score"], [0.9, 0.1])
    assert tkind == "tracks"
    # Sorted by track then frame, columns (track_id, frame, y, x).
    np.testing.assert_allclose(tdata, [[1, 0, 3.0, 2.0], [1, 1, 2.0, 1.0], [2, 0, 1.0, 0.0]])
    np.testing.assert_allclose(tkw["features"]["vy"], [0.3, 0.2, 0.1])


def test_reader_reports_bad_files(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CycleULMError, match="lacks column"):
        napari_get_reader(str(tmp_path / "bad.csv"))(str(tmp_path / "bad.csv"))


def test_write_image_tif_and_npy(tmp_path):
    img = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = write_image(str(tmp_path / "o.tif"), img, {})
    assert out == [str(tmp_path / "o.tif")]
    back = read_stack(out[0])
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, img)
    out = write_image(str(tmp_path / "o.npy"), img[0], {})
    np.testing.assert_array_equal(np.load(out[0]), img[:1].astype(np.float32))
    out = write_image(str(tmp_path / "noext"), img, {})
    assert out[0].endswith("noext.tif")


def test_write_points_with_features(tmp_path):
    data = np.array([[0.0, 1.5, 2.5], [3.0, 4.0, 5.0]])
    meta = {"features": {"score": np.array([0.5, 0.25]), "label": np.array(["a", "b"])}}
    (path,) = write_points(str(tmp_path / "p.csv"), data, meta)
    t = read_table(path)
    assert type(t) is Localisations and t.names == ["frame", "y", "x", "score"]
    np.testing.assert_allclose(t.positions, data)
    np.testing.assert_allclose(t["score"], [0.5, 0.25])
    # properties are used when there are no features; 2-D points get frame 0.
    (path,) = write_points(str(tmp_path / "p2"), data[:, 1:], {"properties": {"i": [7, 8]}})
    assert path.endswith("p2.csv")
    t = read_table(path)
    np.testing.assert_array_equal(t["frame"], [0, 0])
    np.testing.assert_allclose(t["i"], [7, 8])
    (path,) = write_points(str(tmp_path / "empty.csv"), np.empty((0, 3)), {})
    assert len(read_table(path)) == 0
    with pytest.raises(CycleULMError):
        write_points(str(tmp_path / "x.csv"), np.ones((2, 4)), {})


def test_write_tracks_roundtrip_through_reader(tmp_path):
    data = np.array([[1, 0, 2.0, 3.0], [1, 1, 2.5, 3.5], [4, 0, 8.0, 9.0]])
    meta = {"features": {"vx": [0.5, 0.5, 0.0]}}
    (path,) = write_tracks(str(tmp_path / "t.csv"), data, meta)
    t = read_table(path)
    assert type(t) is Tracks and t.names == ["track_id", "frame", "y", "x", "vx"]
    tdata, tkw, kind = napari_get_reader(path)(path)[0]
    assert kind == "tracks"
    np.testing.assert_allclose(tdata, data)
    np.testing.assert_allclose(tkw["features"]["vx"], [0.5, 0.5, 0.0])
    with pytest.raises(CycleULMError, match=r"\(N, 4\)"):
        write_tracks(str(tmp_path / "t.csv"), data[:, :3], {})
    assert not list(tmp_path.glob("*.part"))
