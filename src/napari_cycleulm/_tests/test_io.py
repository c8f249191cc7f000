"""Specification of napari_cycleulm.io: stacks come back as (T, H, W)."""

import warnings

import h5py
import numpy as np
import pytest
import scipy.io
import tifffile

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.io import LazyStack, iter_blocks, read_stack, read_table, write_stack
from napari_cycleulm.io.tables import Localisations, Tracks


@pytest.fixture
def stack():
    rng = np.random.default_rng(0)
    return rng.random((5, 6, 7)).astype(np.float32)  # T, H, W all different


def _write_mat73(path, arrays):
    """Write arrays as MATLAB v7.3 does: HDF5 with a MATLAB header, transposed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, a in arrays.items():
            a = np.asarray(a)
            if np.iscomplexobj(a):
                dt = np.dtype([("real", "<f8"), ("imag", "<f8")])
                rec = np.empty(a.T.shape, dt)
                rec["real"], rec["imag"] = a.T.real, a.T.imag
                f.create_dataset(name, data=rec)
            else:
                f.create_dataset(name, data=a.T)  # MATLAB's column-major order
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116, b" "))


@pytest.mark.parametrize("ext", [".tif", ".tiff", ".npy"])
def test_write_read_roundtrip(tmp_path, stack, ext):
    p = tmp_path / f"s{ext}"
    write_stack(p, stack)
    out = read_stack(p)
    assert out.shape == (5, 6, 7) and out.dtype == np.float32
    np.testing.assert_array_equal(out, stack)
    lazy = read_stack(p, lazy=True)
    assert isinstance(lazy, LazyStack) and lazy.shape == (5, 6, 7) and len(lazy) == 5
    np.testing.assert_array_equal(lazy.block(1, 4), stack[1:4])
    np.testing.assert_array_equal(lazy[2], stack[2])
    np.testing.assert_array_equal(lazy[1:5:2, 2:4, ::-1], stack[1:5:2, 2:4, ::-1])
    np.testing.assert_array_equal(lazy[..., 3], stack[..., 3])
    np.testing.assert_array_equal(lazy[[4, 0]], stack[[4, 0]])
    np.testing.assert_array_equal(np.asarray(lazy), stack)
    lazy.close()
    assert not list(tmp_path.glob("*.part"))


def test_lazy_tiff_per_page_reader_equals_eager(tmp_path, stack):
    p = tmp_path / "c.tif"
    tifffile.imwrite(p, stack, compression="zlib")  # not memory-mappable
    eager = read_stack(p)
    with read_stack(p, lazy=True) as lazy:
        for a, b, blk in iter_blocks(lazy, 2):
            np.testing.assert_array_equal(blk, eager[a:b])
        assert lazy.dtype == np.float32


def test_2d_input_becomes_one_frame(tmp_path):
    img = np.arange(12, dtype=np.uint16).reshape(3, 4)
    p = tmp_path / "i.tif"
    tifffile.imwrite(p, img)
    out = read_stack(p)
    assert out.shape == (1, 3, 4)
    np.testing.assert_array_equal(out[0], img)
    np.save(tmp_path / "i.npy", img)
    assert read_stack(tmp_path / "i.npy", lazy=True).shape == (1, 3, 4)


def test_mat_v5_hwt_becomes_thw_and_largest_3d_variable(tmp_path, stack):
    p = tmp_path / "a.mat"
    hwt = np.transpose(stack, (1, 2, 0))  # MATLAB (H, W, T)
    scipy.io.savemat(p, {"small": np.ones((2, 2, 2)), "IQ": hwt, "fs": 100.0})
    out = read_stack(p)
    assert out.shape == (5, 6, 7)
    np.testing.assert_allclose(out, stack)
    small = read_stack(p, variable="small")
    assert small.shape == (2, 2, 2)
    one = read_stack(p, variable="fs")
    assert one.shape == (1, 1, 1)


def test_mat_v5_errors_list_candidates(tmp_path):
    p = tmp_path / "b.mat"
    scipy.io.savemat(p, {"img": np.ones((4, 5)), "v": np.ones(3)})
    with pytest.raises(CycleULMError, match=r"no 3-D.*img \(4, 5\)"):
        read_stack(p)
    assert read_stack(p, variable="img").shape == (1, 4, 5)
    with pytest.raises(CycleULMError, match="no numeric variable 'nope'"):
        read_stack(p, variable="nope")
    scipy.io.savemat(p, {"x": np.ones((2, 3, 4, 5))})
    with pytest.raises(CycleULMError, match="expected a 3-D stack"):
        read_stack(p, variable="x")


def test_mat_v5_complex_becomes_magnitude_with_warning(tmp_path):
    iq = np.full((3, 4, 2), 3 + 4j)
    p = tmp_path / "c.mat"
    scipy.io.savemat(p, {"IQ": iq})
    with pytest.warns(UserWarning, match="complex IQ data"):
        out = read_stack(p)
    assert out.shape == (2, 3, 4)
    np.testing.assert_allclose(out, 5.0)


def test_mat_v73_transposed_dataset(tmp_path, stack):
    p = tmp_path / "v73.mat"
    _write_mat73(p, {"IQ": np.transpose(stack, (1, 2, 0)), "other": np.ones((2, 2))})
    with h5py.File(p, "r") as f:
        assert f["IQ"].shape == (5, 7, 6)  # stored as (T, W, H)
    out = read_stack(p)
    assert out.shape == (5, 6, 7)
    np.testing.assert_array_equal(out, stack)
    with read_stack(p, lazy=True) as lazy:
        assert lazy.shape == (5, 6, 7)
        np.testing.assert_array_equal(lazy.block(2, 5), stack[2:5])
        np.testing.assert_array_equal(lazy[3, 1], stack[3, 1])
    two = read_stack(p, variable="other")
    assert two.shape == (1, 2, 2)


def test_mat_v73_complex_compound(tmp_path):
    iq = np.zeros((3, 4, 2), complex)
    iq[1, 2, 1] = 6 - 8j
    p = tmp_path / "c73.mat"
    _write_mat73(p, {"IQ": iq})
    with pytest.warns(UserWarning, match="magnitude"):
        out = read_stack(p)
    assert out.shape == (2, 3, 4)
    assert out[1, 1, 2] == pytest.approx(10.0) and out.sum() == pytest.approx(10.0)


def test_plain_hdf5_is_read_as_stored(tmp_path, stack):
    p = tmp_path / "d.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("grp/frames", data=stack)
    np.testing.assert_array_equal(read_stack(p), stack)
    np.testing.assert_array_equal(read_stack(p, variable="/grp/frames", lazy=True).block(0, 5), stack)


def test_wrong_dimensionality_errors(tmp_path):
    np.save(tmp_path / "four.npy", np.ones((2, 3, 4, 5)))
    with pytest.raises(CycleULMError, match=r"\(frames, height, width\)"):
        read_stack(tmp_path / "four.npy")
    np.save(tmp_path / "one.npy", np.ones(5))
    with pytest.raises(CycleULMError, match="shape \\(5,\\)"):
        read_stack(tmp_path / "one.npy")
    with pytest.raises(CycleULMError):
        write_stack(tmp_path / "x.tif", np.ones(4))


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(CycleULMError, match="does not exist"):
        read_stack(tmp_path / "nope.tif")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(CycleULMError, match=r"\.tif .*\.mat.*\.csv"):
        read_stack(tmp_path / "x.png")
    with pytest.raises(CycleULMError, match="use a .tif"):
        write_stack(tmp_path / "x.png", np.ones((2, 2)))


def test_read_table_chooses_class(tmp_path):
    loc = Localisations({"frame": [0, 1], "y": [1.5, 2.5], "x": [3.0, 4.0], "score": [0.5, 0.7]})
    loc.to_csv(tmp_path / "l.csv")
    t = read_table(tmp_path / "l.csv")
    assert type(t) is Localisations and t.names == ["frame", "y", "x", "score"]
    np.testing.assert_allclose(t["y"], [1.5, 2.5])
    tr = Tracks({"track_id": [3, 3], "frame": [0, 1], "y": [1.0, 2.0], "x": [0.0, 0.5]})
    tr.to_csv(tmp_path / "t.csv")
    t = read_table(tmp_path / "t.csv")
    assert type(t) is Tracks and t.n_tracks == 1
    with pytest.raises(CycleULMError, match="read_table"):
        read_stack(tmp_path / "t.csv")
    with pytest.raises(CycleULMError, match=".csv"):
        np.save(tmp_path / "a.npy", np.ones(3))
        read_table(tmp_path / "a.npy")


def test_iter_blocks_tiles_and_overlaps(stack):
    blocks = list(iter_blocks(stack, 2))
    assert [(a, b) for a, b, _ in blocks] == [(0, 2), (2, 4), (4, 5)]
    blocks = list(iter_blocks(stack, 3, overlap=1))
    assert [(a, b) for a, b, _ in blocks] == [(0, 3), (2, 5)]
    for a, b, blk in blocks:
        assert blk.dtype == np.float32
        np.testing.assert_array_equal(blk, stack[a:b])
    assert [(a, b) for a, b, _ in iter_blocks(stack, 10)] == [(0, 5)]
    assert [(a, b) for a, b, _ in iter_blocks(stack[0], 4)] == [(0, 1)]
    with pytest.raises(CycleULMError):
        list(iter_blocks(stack, 2, overlap=2))
    with pytest.raises(CycleULMError):
        list(iter_blocks(stack, 0))


def test_write_lazy_stack_streams(tmp_path, stack):
    np.save(tmp_path / "src.npy", stack)
    lazy = read_stack(tmp_path / "src.npy", lazy=True)
    write_stack(tmp_path / "o.tif", lazy)
    write_stack(tmp_path / "o.npy", lazy)
    np.testing.assert_array_equal(read_stack(tmp_path / "o.tif"), stack)
    np.testing.assert_array_equal(read_stack(tmp_path / "o.npy"), stack)


def test_no_warning_for_real_data(tmp_path, stack):
    np.save(tmp_path / "r.npy", stack)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_stack(tmp_path / "r.npy")


def test_tiff_frames_vs_colour(tmp_path):
    # tifffile tags a 3-frame stack as planar RGB by default: still 3 frames.
    three = np.random.default_rng(1).random((3, 8, 9)).astype(np.float32)
    tifffile.imwrite(tmp_path / "three.tif", three)
    np.testing.assert_array_equal(read_stack(tmp_path / "three.tif"), three)
    np.testing.assert_array_equal(read_stack(tmp_path / "three.tif", lazy=True).block(0, 3), three)
    rgb = np.zeros((8, 9, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    for lazy in (False, True):
        with pytest.raises(CycleULMError, match="colour"):
            read_stack(tmp_path / "rgb.tif", lazy=lazy)
