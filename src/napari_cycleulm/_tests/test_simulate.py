"""Specification of the CEUS simulator (simulate/ceus.py) and the napari sample data."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.simulate import (
    PRESETS,
    Simulation,
    load_simulation,
    save_simulation,
    simulate,
)
from napari_cycleulm.io.tables import Localisations


@pytest.fixture(scope="module")
def sample() -> Simulation:
    return simulate(seed=0, **PRESETS["sample"])


def small(**kw) -> Simulation:
    args = dict(n_frames=20, height=48, width=64, density=10.0, seed=3)
    args.update(kw)
    return simulate(**args)


def test_same_seed_same_output_different_seed_different():
    a, b, c = small(), small(), small(seed=4)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.ground_truth["x"], b.ground_truth["x"])
    assert not np.array_equal(a.frames, c.frames)


def test_shapes_dtypes_and_metadata(sample):
    assert sample.frames.shape == (200, 128, 160)
    assert sample.frames.dtype == np.float32
    assert sample.vessel_mask.shape == sample.organ_mask.shape == (128, 160)
    assert sample.vessel_mask.dtype == bool and sample.organ_mask.dtype == bool
    # the organ covers most of the image and contains the vessels
    assert 0.5 < sample.organ_mask.mean() < 0.9
    assert sample.vessel_mask.any()
    assert np.percentile(sample.frames, 99.9) == pytest.approx(1.0, rel=0.02)
    gt = sample.ground_truth
    assert isinstance(gt, Localisations)
    for col in ("frame", "y", "x", "track_id", "amplitude", "vy", "vx"):
        assert col in gt
    for key in ("pixel_size_um", "frame_rate_hz", "psf_fwhm_y_px", "psf_fwhm_x_px",
                "psf_sigma_y_px", "psf_sigma_x_px", "seed", "density", "clutter_db"):
        assert key in sample.metadata
    assert sample.metadata["psf_sigma_x_px"] == pytest.approx(
        sample.metadata["psf_fwhm_x_px"] / 2.3548, rel=1e-3)


def test_ground_truth_inside_image_and_in_vessels(sample):
    gt = sample.ground_truth
    assert gt["frame"].min() >= 0 and gt["frame"].max() < 200
    assert gt["y"].min() >= 0 and gt["y"].max() <= 127
    assert gt["x"].min() >= 0 and gt["x"].max() <= 159
    yi, xi = np.round(gt["y"]).astype(int), np.round(gt["x"]).astype(int)
    assert sample.organ_mask[yi, xi].mean() > 0.99
    # dilated by one pixel, the vessel mask holds the bubbles
    from scipy.ndimage import binary_dilation

    assert binary_dilation(sample.vessel_mask)[yi, xi].mean() > 0.95
    assert (gt["amplitude"] > 0).all()


def test_displacement_matches_velocity(sample):
    gt = sample.ground_truth.sort("track_id", "frame")
    same = (np.diff(gt["track_id"]) == 0) & (np.diff(gt["frame"]) == 1)
    dy = np.diff(gt["y"])[same]
    dx = np.diff(gt["x"])[same]
    err = np.hypot(dy - gt["vy"][:-1][same], dx - gt["vx"][:-1][same])
    assert same.sum() > 1000
    assert np.median(err) < 0.02
    assert np.percentile(err, 95) < 0.2


def test_speeds_within_requested_range(sample):
    gt = sample.ground_truth
    speed_mm_s = np.hypot(gt["vy"], gt["vx"]) * 50.0 * 500.0 / 1000.0
    assert speed_mm_s.min() >= 1.0 - 1e-6
    assert speed_mm_s.max() <= 25.0 + 1e-6
    # larger vessels are faster: a good spread of speeds
    assert np.percentile(speed_mm_s, 90) > 3 * np.percentile(speed_mm_s, 10)


@pytest.mark.parametrize("density", [5.0, 20.0, 60.0])
def test_mean_bubble_count_matches_density(density):
    sim = simulate(n_frames=300, height=96, width=112, density=density, seed=1,
                   clutter_db=-np.inf, noise_db=-np.inf)
    per_frame = np.bincount(sim.ground_truth["frame"], minlength=300)
    assert per_frame.mean() == pytest.approx(density, rel=0.3)
    tracks = np.unique(sim.ground_truth["track_id"])
    assert tracks.size > density  # bubbles come and go


def test_frames_brighter_at_bubbles(sample):
    gt = sample.ground_truth
    f = sample.frames
    at_gt = f[gt["frame"], np.round(gt["y"]).astype(int), np.round(gt["x"]).astype(int)]
    assert at_gt.mean() > 3 * np.median(f)


def _fwhm(profile: np.ndarray, centre: int) -> float:
    half = profile[centre] / 2
    r = centre + np.flatnonzero(profile[centre:] < half)[0]
    lft = centre - np.flatnonzero(profile[: centre + 1][::-1] < half)[0]
    xr = r - 1 + (profile[r - 1] - half) / (profile[r - 1] - profile[r])
    xl = lft + 1 - (profile[lft + 1] - half) / (profile[lft + 1] - profile[lft])
    return float(xr - xl)


def _isolated_widths(sim: Simulation, min_gap: float = 15.0):
    gt = sim.ground_truth
    out = []
    for t in range(0, sim.frames.shape[0], 3):
        g = gt.in_frames(t, t + 1)
        p = np.stack([g["y"], g["x"]], 1)
        for i in range(len(g)):
            d = np.hypot(*(p - p[i]).T)
            d[i] = np.inf
            y, x = int(round(p[i, 0])), int(round(p[i, 1]))
            if d.min() < min_gap or not (12 <= y < sim.frames.shape[1] - 12) or not (
                    12 <= x < sim.frames.shape[2] - 12):
                continue
            img = sim.frames[t]
            out.append((p[i, 0], _fwhm(img[y - 10:y + 11, x], 10), _fwhm(img[y, x - 10:x + 11], 10)))
    return np.array(out)


def test_psf_fwhm_metadata_and_rendered_width():
    sim = simulate(n_frames=60, height=96, width=112, density=3.0, seed=2, clutter_db=-np.inf,
                   noise_db=-np.inf, depth_dependence=0.0, amplitude_jitter=0.0)
    fy_true, fx_true = 200.0 / 50.0, 300.0 / 50.0
    assert sim.metadata["psf_fwhm_y_px"] == pytest.approx(fy_true, rel=0.05)
    assert sim.metadata["psf_fwhm_x_px"] == pytest.approx(fx_true, rel=0.05)
    w = _isolated_widths(sim)
    assert len(w) > 20
    assert np.median(w[:, 1]) == pytest.approx(fy_true, rel=0.2)
    assert np.median(w[:, 2]) == pytest.approx(fx_true, rel=0.2)


def test_psf_widens_with_depth():
    sim = simulate(n_frames=150, height=128, width=96, density=4.0, seed=5, clutter_db=-np.inf,
                   noise_db=-np.inf, depth_dependence=0.8, amplitude_jitter=0.0)
    w = _isolated_widths(sim)
    top, bottom = w[w[:, 0] < 50], w[w[:, 0] > 78]
    assert len(top) > 5 and len(bottom) > 5
    assert np.median(bottom[:, 2]) > 1.2 * np.median(top[:, 2])


def test_lateral_side_lobes_exist_and_are_weak():
    from napari_cycleulm.simulate.ceus import _lateral

    x = np.linspace(0, 4, 4001)
    prof = np.abs(_lateral(x, np.ones_like(x)))
    lobe = prof[(x > 1.05) & (x < 2.0)].max()
    assert 10 ** (-26 / 20) < lobe < 10 ** (-15 / 20)


def _background_corr(sim: Simulation) -> float:
    from scipy.ndimage import binary_dilation

    region = sim.organ_mask & ~binary_dilation(sim.vessel_mask, iterations=8)
    a = sim.frames[:-1][:, region].astype(np.float64)
    b = sim.frames[1:][:, region].astype(np.float64)
    return float(np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)]))


def test_clutter_is_temporally_correlated():
    hi = small(n_frames=15, density=0.0, clutter_correlation=0.98, noise_db=-60.0)
    lo = small(n_frames=15, density=0.0, clutter_correlation=0.3, noise_db=-60.0)
    assert _background_corr(hi) > 0.85
    assert _background_corr(lo) < 0.3
    # stronger inside the organ than outside
    f = hi.frames.mean(0)
    assert np.median(f[hi.organ_mask]) > 2 * np.median(f[~hi.organ_mask])


def test_tissue_motion_moves_clutter():
    still = small(n_frames=40, density=0.0, noise_db=-np.inf, clutter_correlation=0.999999)
    moving = small(n_frames=40, density=0.0, noise_db=-np.inf, clutter_correlation=0.999999,
                   tissue_motion_px=3.0)
    drift = np.array(moving.metadata["tissue_drift_px"])
    assert drift.shape == (40, 2) and np.abs(drift[:, 0]).max() <= 3.0
    d_still = np.abs(still.frames[-1] - still.frames[0]).mean()
    d_moving = np.abs(moving.frames[-1] - moving.frames[0]).mean()
    assert np.abs(drift[-1] - drift[0]).max() > 0.5
    assert d_moving > 3 * d_still


def test_progress_is_reported():
    calls = []
    small(progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (20, 20)


def test_save_load_round_trip(tmp_path):
    sim = small()
    paths = save_simulation(sim, tmp_path / "sim")
    assert {p.name for p in paths.values()} >= {"frames.tif", "ground_truth.csv",
                                                 "vessel_mask.tif", "metadata.json"}
    back = load_simulation(tmp_path / "sim")
    np.testing.assert_array_equal(back.frames, sim.frames)
    np.testing.assert_array_equal(back.vessel_mask, sim.vessel_mask)
    np.testing.assert_array_equal(back.organ_mask, sim.organ_mask)
    np.testing.assert_allclose(back.ground_truth["x"], sim.ground_truth["x"], rtol=1e-5)
    np.testing.assert_array_equal(back.ground_truth["track_id"], sim.ground_truth["track_id"])
    assert back.metadata["psf_fwhm_x_px"] == pytest.approx(sim.metadata["psf_fwhm_x_px"])
    assert not list((tmp_path / "sim").glob("*.part"))


def test_load_missing_folder_raises(tmp_path):
    with pytest.raises(CycleULMError, match="missing"):
        load_simulation(tmp_path / "nothing")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_frames=0), "n_frames"),
        (dict(height=-5), "height"),
        (dict(width=2.5), "width"),
        (dict(density=-1), "density"),
        (dict(pixel_size_um=0), "pixel_size_um"),
        (dict(frame_rate_hz=-500), "frame_rate_hz"),
        (dict(psf_fwhm_um=(200.0,)), "psf_fwhm_um"),
        (dict(psf_fwhm_um=(0.0, 300.0)), "psf_fwhm_um"),
        (dict(speed_range_mm_s=(25.0, 1.0)), "speed_range_mm_s"),
        (dict(diameter_range_um=(200.0, 20.0)), "diameter_range_um"),
        (dict(clutter_correlation=1.0), "clutter_correlation"),
        (dict(depth_dependence=-0.1), "depth_dependence"),
        (dict(seed=-1), "seed"),
        (dict(progress=5), "progress"),
        (dict(clutter_db=float("nan")), "clutter_db"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(CycleULMError, match=match):
        small(**kwargs)


def test_make_sample_returns_image_and_hidden_points():
    from napari_cycleulm._napari.sample_data import make_sample

    layers = make_sample()
    assert [lt[2] for lt in layers] == ["image", "points"]
    frames, img_kw, _ = layers[0]
    assert frames.shape == (200, 128, 160) and frames.dtype == np.float32
    assert img_kw["name"] == "CEUS sample" and img_kw["metadata"]["psf_fwhm_x_px"] > 0
    pts, pts_kw, _ = layers[1]
    assert pts.ndim == 2 and pts.shape[1] == 3 and len(pts) > 1000
    assert pts_kw["visible"] is False
    assert len(pts_kw["features"]["track_id"]) == len(pts)


def test_isolated_positions_keeps_lone_bubbles_away_from_the_border():
    from napari_cycleulm.simulate import isolated_positions

    pos = np.array([[0, 30, 30], [0, 30, 40],   # a close pair: neither is isolated
                    [0, 60, 60],                # alone
                    [0, 5, 60],                 # alone but at the border
                    [1, 30, 35]], float)        # alone in its frame
    assert isolated_positions(pos, (80, 80)).tolist() == [2, 4]
    assert isolated_positions(pos, (80, 80), amplitude=[1, 1, 0.2, 1, 1], min_amplitude=0.5).tolist() == [4]
    assert isolated_positions(pos, (80, 80), min_distance_px=5).tolist() == [0, 1, 2, 4]
    assert len(isolated_positions(pos, (80, 80), n=1)) == 1


# ---------------------------------------------------------------------------
# Second forward model: PSF shapes and low-rank clutter
# ---------------------------------------------------------------------------
def test_defaults_unchanged_for_a_fixed_seed():
    """The new options leave the default output exactly as it was (values from before they existed)."""
    sim = simulate(n_frames=12, height=48, width=64, density=10.0, seed=3)
    f = sim.frames
    assert f.astype(np.float64).sum() == pytest.approx(5558.384505989263, rel=1e-6)
    np.testing.assert_allclose(f[[0, 5, 11], [10, 20, 30], [15, 32, 50]],
                               [0.16809695959091187, 0.22386229038238525, 0.030826477333903313], rtol=1e-5)
    assert len(sim.ground_truth) == 128
    assert sim.ground_truth["x"].sum() == pytest.approx(4725.275197418412, rel=1e-9)
    assert sim.metadata["intensity_scale"] == pytest.approx(1.4786872863769531, rel=1e-5)
    assert sim.metadata["psf_shape"] == "gauss-sinc" and sim.metadata["clutter_model"] == "ar1"
    moving = simulate(n_frames=12, height=48, width=64, density=10.0, seed=3, tissue_motion_px=2.0,
                      clutter_correlation=0.9)
    assert moving.frames.astype(np.float64).sum() == pytest.approx(5281.446259784279, rel=1e-6)
    np.testing.assert_allclose(moving.frames[[0, 5, 11], [10, 20, 30], [15, 32, 50]],
                               [0.2816602289676666, 0.29200002551078796, 0.156309574842453], rtol=1e-5)


@pytest.mark.parametrize("shape", ["gauss", "sinc"])
@pytest.mark.parametrize("fwhm_um", [(200.0, 300.0), (450.0, 500.0)])
def test_psf_shapes_rendered_width_matches_metadata(shape, fwhm_um):
    sim = simulate(n_frames=60, height=96, width=112, density=3.0, seed=2, clutter_db=-np.inf,
                   noise_db=-np.inf, depth_dependence=0.0, amplitude_jitter=0.0, psf_shape=shape,
                   psf_fwhm_um=fwhm_um)
    meta = sim.metadata
    assert meta["psf_shape"] == shape
    assert meta["psf_fwhm_y_px"] == pytest.approx(fwhm_um[0] / 50.0, rel=1e-3)
    assert meta["psf_fwhm_x_px"] == pytest.approx(fwhm_um[1] / 50.0, rel=1e-3)
    assert meta["psf_sigma_x_px"] == pytest.approx(meta["psf_fwhm_x_px"] / 2.3548, rel=1e-3)
    w = _isolated_widths(sim)
    assert len(w) > 20
    assert np.median(w[:, 1]) == pytest.approx(meta["psf_fwhm_y_px"], rel=0.1)
    assert np.median(w[:, 2]) == pytest.approx(meta["psf_fwhm_x_px"], rel=0.1)


def test_psf_shapes_side_lobes_and_modulation():
    from napari_cycleulm.simulate.ceus import _lateral, _lateral_gauss, _lateral_sinc

    x = np.linspace(0, 5, 5001)
    one = np.ones_like(x)
    lobe = {name: np.abs(f(x, one))[x > 1.05].max() for name, f in (("gauss-sinc", _lateral),
                                                                      ("sinc", _lateral_sinc))}
    assert 10 ** (-17 / 20) < lobe["sinc"] < 10 ** (-11 / 20)  # stronger than the default's ~-20 dB
    assert lobe["sinc"] > 1.5 * lobe["gauss-sinc"]
    assert np.all(np.diff(_lateral_gauss(x, one)) <= 0)  # monotone decay: no side lobe
    # only the modulated shapes record an axial period
    assert small(psf_shape="gauss").metadata["axial_period_px"] is None
    assert small(psf_shape="sinc").metadata["axial_period_px"] > 0


def _svd_residual(sim: Simulation, k: int = 10) -> float:
    """Fraction of the temporal variance of the stack outside its first ``k`` SVD components."""
    x = sim.frames.reshape(len(sim.frames), -1).astype(np.float64)
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    return float(np.sum(s[k:] ** 2) / np.sum(s ** 2))


def test_lowrank_clutter_lives_in_the_first_svd_components():
    kw = dict(n_frames=100, density=0.0, noise_db=-60.0)
    lowrank = small(clutter_model="lowrank", **kw)
    moving = small(clutter_model="lowrank", tissue_motion_px=1.0, **kw)
    fast = small(clutter_correlation=0.3, **kw)
    assert _svd_residual(lowrank) < 0.02
    assert _svd_residual(moving) < 0.05
    assert _svd_residual(fast) > 0.5
    meta = lowrank.metadata
    assert meta["clutter_model"] == "lowrank" and meta["clutter_rank"] == 3
    # it evolves: the first and last frames differ
    d = np.abs(lowrank.frames[-1] - lowrank.frames[0])[lowrank.organ_mask].mean()
    assert d > 0.2 * lowrank.frames[:, lowrank.organ_mask].mean()
    # same RMS (clutter_db) as the AR(1) clutter, stronger inside the organ than outside
    for sim in (lowrank, fast):
        rms = np.sqrt(np.mean(sim.frames[:, sim.organ_mask] ** 2)) * sim.metadata["intensity_scale"]
        assert rms == pytest.approx(10 ** (-12 / 20), rel=0.3)
    f = lowrank.frames.mean(0)
    assert np.median(f[lowrank.organ_mask]) > 2 * np.median(f[~lowrank.organ_mask])


def test_lowrank_clutter_with_bubbles_keeps_ground_truth():
    a = small(clutter_model="lowrank", psf_shape="gauss")
    b = small()
    # the bubbles do not depend on the forward model
    np.testing.assert_array_equal(a.ground_truth["x"], b.ground_truth["x"])
    assert a.frames.shape == b.frames.shape and np.isfinite(a.frames).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(psf_shape="airy"), "psf_shape"),
        (dict(clutter_model="svd"), "clutter_model"),
        (dict(clutter_model="lowrank", clutter_rank=0), "clutter_rank"),
        (dict(clutter_model="lowrank", clutter_timescale_frames=0), "clutter_timescale_frames"),
    ],
)
def test_bad_forward_model_arguments_raise(kwargs, match):
    with pytest.raises(CycleULMError, match=match):
        small(**kwargs)
