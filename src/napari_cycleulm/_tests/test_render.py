"""Specification of super-resolution rendering on the upsampled grid."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.render import (
    PowerDopplerAccumulator,
    SRRenderer,
    power_doppler,
    px_per_frame_to_mm_s,
    render_density,
    render_localisations,
    render_velocity,
    to_png,
)
from napari_cycleulm.io.tables import Localisations, Tracks


def _straight(tid, y0, x0, vy, vx, n, f0=0, with_velocity=True):
    f = np.arange(n)
    cols = {
        "track_id": np.full(n, tid),
        "frame": f0 + f,
        "y": y0 + vy * f,
        "x": x0 + vx * f,
    }
    if with_velocity:
        cols["vy"] = np.full(n, float(vy))
        cols["vx"] = np.full(n, float(vx))
    return Tracks(cols)


def test_horizontal_track_draws_a_line_of_the_right_length_and_row():
    u = 4
    # original y = 10.1 -> SR row floor(10.1*4 + 1.5 + 0.5) = 42; x 5 -> 15 -> SR 21.5..61.5
    tracks = _straight(0, 10.1, 5.0, 0.0, 1.0, 11)
    d = render_density(tracks, (32, 32), upsampling=u)
    assert d.shape == (128, 128)
    rows, cols = np.nonzero(d)
    assert set(rows) == {42}
    assert cols.min() == 22 and cols.max() == 62  # floor(21.5 + .5) .. floor(61.5 + .5)
    assert np.all(d[42, 22:63] == 1)  # once per track, no gaps, no double counts at joints
    assert d.sum() == 41


def test_slow_and_fast_tracks_count_once_per_passage():
    slow = _straight(0, 5.0, 2.0, 0.0, 0.05, 200)  # lingers ~5 frames per SR pixel
    fast = _straight(1, 5.0, 2.0, 0.0, 2.0, 6)
    d = render_density(Tracks.concat([slow, fast]), (16, 32))
    assert d.max() == 2
    both = render_density(slow, (16, 32))
    assert both.max() == 1


def test_density_is_incremental():
    a = _straight(0, 3.0, 3.0, 0.5, 1.0, 20)
    b = _straight(1, 20.0, 2.0, -0.3, 0.8, 35)
    c = _straight(2, 10.0, 25.0, 0.7, -0.7, 15)
    one = SRRenderer((32, 40))
    one.add_tracks(Tracks.concat([a, b, c]))
    parts = SRRenderer((32, 40))
    parts.add_tracks(Tracks.concat([a, c]))
    parts.add_tracks(b)
    r1, r2 = one.result(), parts.result()
    for name in ("density", "velocity", "axial_velocity", "direction"):
        np.testing.assert_allclose(getattr(r1, name), getattr(r2, name), equal_nan=True)
    assert r1.density.max() >= 2  # the tracks cross


def test_velocity_magnitude_and_units():
    speed = np.hypot(0.6, 0.8)  # 1 px/frame
    tracks = _straight(0, 5.0, 5.0, 0.6, 0.8, 20)
    r = SRRenderer((40, 40))
    r.add_tracks(tracks)
    v = r.velocity_magnitude()
    drawn = r.density() > 0
    assert np.all(np.isnan(v[~drawn]))
    np.testing.assert_allclose(v[drawn], speed, rtol=1e-6)
    mm = r.velocity_magnitude(pixel_size_um=50.0, frame_rate_hz=500.0)
    np.testing.assert_allclose(mm[drawn], 25.0, rtol=1e-6)  # 1 px/frame * 50 um * 500 Hz
    assert px_per_frame_to_mm_s(2.0, 100.0, 1000.0) == pytest.approx(200.0)
    maps = r.result(pixel_size_um=50.0, frame_rate_hz=500.0)
    assert maps.velocity_unit == "mm/s" and maps.pixel_size_um == pytest.approx(12.5)
    assert np.all(maps.axial_velocity[drawn] > 0)  # moving down (+y)
    with pytest.raises(CycleULMError):
        r.velocity_magnitude(pixel_size_um=50.0)


def test_velocity_from_finite_differences_when_columns_missing():
    tracks = _straight(0, 5.0, 5.0, 0.0, 1.5, 10, with_velocity=False)
    v = render_velocity(tracks, (20, 30))
    np.testing.assert_allclose(v[np.isfinite(v)], 1.5)


def test_direction_map_angle():
    r = SRRenderer((40, 40))
    r.add_tracks(_straight(0, 30.0, 5.0, -1.0, 1.0, 15))  # up and right
    r.add_tracks(_straight(1, 5.0, 35.0, 0.0, -1.0, 20))  # left
    d = r.velocity_direction()
    up_right = r.axial_velocity() < 0
    np.testing.assert_allclose(d[up_right], -np.pi / 4, atol=1e-6)
    left = np.isfinite(d) & ~up_right
    np.testing.assert_allclose(np.abs(d[left]), np.pi, atol=1e-6)


def test_coordinate_convention():
    locs = Localisations({"frame": [0, 0, 1], "y": [10.0, 10.1, 0.0], "x": [20.0, 20.1, 0.0]})
    c3 = render_localisations(locs.select([0]), (32, 32), upsampling=3)
    assert np.argwhere(c3).tolist() == [[10 * 3 + 1, 20 * 3 + 1]]  # y*u + (u-1)/2
    c4 = render_localisations(locs, (32, 32), upsampling=4)
    # (10, 20) -> SR (41.5, 81.5), on a border: goes to the higher pixel; 10.1 -> 41.9 -> 42
    assert c4[42, 82] == 2 and c4[0 * 4 + 2, 2] == 1 and c4.sum() == 3
    assert render_localisations(locs, (32, 32), upsampling=1)[10, 20] == 2
    out = Localisations({"frame": [0], "y": [40.0], "x": [1.0]})
    assert render_localisations(out, (32, 32)).sum() == 0  # outside the grid


def test_power_doppler_mean_power_and_streaming():
    rng = np.random.default_rng(0)
    iq = rng.normal(size=(10, 4, 5)) + 1j * rng.normal(size=(10, 4, 5))
    pd = power_doppler(iq)
    np.testing.assert_allclose(pd, np.mean(np.abs(iq) ** 2, axis=0), rtol=1e-5)
    acc = PowerDopplerAccumulator()
    acc.add(iq[:3])
    acc.add(iq[3:])
    np.testing.assert_allclose(acc.result(), pd, rtol=1e-6)
    with pytest.raises(CycleULMError):
        acc.add(np.zeros((2, 3, 3)))
    with pytest.raises(CycleULMError):
        power_doppler(np.zeros((2, 2, 2, 2)))


def test_png_written_and_readable(tmp_path):
    import matplotlib.image as mpimg

    d = render_density(_straight(0, 10.0, 5.0, 0.2, 1.0, 20), (32, 40))
    path = tmp_path / "sr.png"
    to_png(d, path, scale_bar_mm=0.5, pixel_size_um=12.5)
    img = mpimg.imread(path)
    assert img.shape[:2] == d.shape
    assert img[..., :3].max() > 0.9 and img[0, 0, :3].max() < 0.05  # bright track, black background
    to_png(np.where(d > 0, np.float32(-1.0), np.nan), tmp_path / "signed.png", cmap="coolwarm")
    assert (tmp_path / "signed.png").is_file()
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(CycleULMError, match="pixel_size_um"):
        to_png(d, tmp_path / "x.png", scale_bar_mm=1.0)
    with pytest.raises(CycleULMError, match="colormap"):
        to_png(d, tmp_path / "x.png", cmap="no-such-map")
    with pytest.raises(CycleULMError):
        to_png(np.zeros((2, 2, 2)), tmp_path / "x.png")


def test_bad_input_raises():
    with pytest.raises(CycleULMError, match="lack column"):
        render_density(Localisations({"frame": [0], "y": [1.0], "x": [1.0]}).columns, (8, 8))
    with pytest.raises(CycleULMError, match="upsampling"):
        SRRenderer((8, 8), upsampling=0)
    with pytest.raises(CycleULMError, match="shape"):
        SRRenderer((8, -1))
    assert render_density(Tracks(), (8, 8)).sum() == 0
