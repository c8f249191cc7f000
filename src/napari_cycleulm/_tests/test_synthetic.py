"""Synthetic MB-only patches and sequences (paper section 3.3)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.psf import PSF, gaussian_kernel
from napari_cycleulm.simulate.mb_only import (
    SyntheticConfig,
    synthetic_patches,
    synthetic_sequences,
    to_targets,
)

PSF_MB = PSF(1.5, 2.0, theta_rad=0.3).mbonly()  # sigma (0.75, 1.0)


def _analytic(positions, index, size, sy, sx, theta):
    sel = positions.select(positions["frame"] == index)
    img = np.zeros((size, size))
    for y, x, a in zip(sel["y"], sel["x"], sel["intensity"]):
        img += a * gaussian_kernel(sy, sx, theta, size=(size, size), center=(y, x))
    return img


def test_patch_counts_and_intensities_within_range():
    cfg = SyntheticConfig(n_min=2, n_max=7, intensity_range=(0.2, 0.6))
    b = synthetic_patches(200, 40, PSF_MB, cfg, rng=0)
    counts = np.bincount(b.positions["frame"], minlength=200)
    assert counts.min() == 2 and counts.max() == 7
    assert b.positions["intensity"].min() >= 0.2 and b.positions["intensity"].max() <= 0.6
    assert b.positions["y"].min() >= -0.5 and b.positions["y"].max() < 39.5
    assert b.images.shape == (200, 40, 40) and b.images.dtype == np.float32
    # Default: 0..20 MBs for 40x40 patches, both ends reached.
    d = synthetic_patches(500, 40, PSF_MB, rng=1)
    counts = np.bincount(d.positions["frame"], minlength=500)
    assert counts.min() == 0 and counts.max() == 20
    assert SyntheticConfig().n_range(80) == (0, 80)


def test_images_are_sums_of_analytic_gaussians():
    b = synthetic_patches(5, 32, PSF_MB, SyntheticConfig(n_min=3, n_max=8), rng=2)
    for i in range(5):
        ref = _analytic(b.positions, i, 32, PSF_MB.sigma_y_px, PSF_MB.sigma_x_px, PSF_MB.theta_rad)
        np.testing.assert_allclose(b.images[i], ref, atol=1e-5)
    # Axis-aligned PSFs take the separable path; same result.
    flat = PSF(1.0, 1.5)
    b = synthetic_patches(3, 24, flat, SyntheticConfig(n_min=3, n_max=8), rng=3)
    for i in range(3):
        ref = _analytic(b.positions, i, 24, 1.0, 1.5, 0.0)
        np.testing.assert_allclose(b.images[i], ref, atol=1e-5)


def test_presence_map_and_targets_match_positions():
    b = synthetic_patches(20, 40, PSF_MB, rng=4)
    pos = b.positions
    iy = np.round(pos["y"]).astype(int).clip(0, 39)
    ix = np.round(pos["x"]).astype(int).clip(0, 39)
    assert np.all(b.presence[pos["frame"], iy, ix] == 1)
    n_pixels = len({(f, y, x) for f, y, x in zip(pos["frame"], iy, ix)})
    assert b.presence.sum() == n_pixels
    assert set(np.unique(b.presence)) <= {0.0, 1.0}
    counts = np.bincount(pos["frame"], minlength=20)
    assert np.array_equal(b.mask.sum(1), counts)
    assert b.targets.shape == (20, counts.max(), 3)
    for i in range(20):
        sel = pos.select(pos["frame"] == i)
        got = b.targets[i][b.mask[i]]
        np.testing.assert_allclose(got, np.c_[sel["intensity"], sel["y"], sel["x"]], atol=1e-5)
        assert np.all(b.targets[i][~b.mask[i]] == 0)
    t2, m2 = to_targets(pos, 20, max_bubbles=25)
    assert t2.shape == (20, 25, 3) and np.array_equal(m2.sum(1), counts)


def test_sigma_range_gives_varied_psfs():
    cfg = SyntheticConfig(n_min=1, n_max=3, sigma_range_px=((0.5, 1.0), (1.0, 2.0)))
    b = synthetic_patches(50, 40, None, cfg, rng=5)
    sy, sx, th = b.psf_params.T
    assert sy.min() >= 0.5 and sy.max() <= 1.0 and sx.min() >= 1.0 and sx.max() <= 2.0
    assert sy.std() > 0.1 and sx.std() > 0.2
    assert np.all(np.abs(th) <= 0.2) and th.std() > 0.05
    for i in (0, 1):
        ref = _analytic(b.positions, i, 40, *b.psf_params[i])
        np.testing.assert_allclose(b.images[i], ref, atol=1e-5)
    with pytest.raises(CycleULMError, match="PSF"):
        synthetic_patches(2, 40, None, SyntheticConfig())


def test_determinism_with_seed():
    a = synthetic_patches(8, 40, PSF_MB, rng=7)
    b = synthetic_patches(8, 40, PSF_MB, rng=np.random.default_rng(7))
    c = synthetic_patches(8, 40, PSF_MB, rng=8)
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    s1 = synthetic_sequences(4, 5, 32, PSF_MB, rng=7)
    s2 = synthetic_sequences(4, 5, 32, PSF_MB, rng=7)
    assert np.array_equal(s1.frames, s2.frames) and np.array_equal(s1.trajectory, s2.trajectory)


def test_noise_option():
    clean = synthetic_patches(4, 40, PSF_MB, SyntheticConfig(n_min=0, n_max=0), rng=0)
    assert np.all(clean.images == 0)
    noisy = synthetic_patches(4, 40, PSF_MB, SyntheticConfig(n_min=0, n_max=0, noise_std=0.05), rng=0)
    assert noisy.images.std() == pytest.approx(0.05, rel=0.05)


def test_sequences_obey_kinematics():
    cfg = SyntheticConfig(n_min=3, speed_range=(0.5, 2.0), speed_noise_std=0.1,
                          direction_noise_std=0.1)
    s = synthetic_sequences(6, 8, 40, PSF_MB, cfg, rng=9)
    pos = s.positions
    assert s.frames.shape == (6, 8, 40, 40)
    assert len(np.unique(pos["sequence"])) == 6
    n_checked = 0
    for tid in np.unique(pos["track_id"]):
        tr = pos.select(pos["track_id"] == tid).sort("frame")
        assert len(np.unique(tr["sequence"])) == 1
        assert np.all(tr["intensity"] == tr["intensity"][0])
        f = tr["frame"]
        for j in np.nonzero(np.diff(f) == 1)[0]:
            # x_{t+1} = x_t + v_t exactly.
            assert tr["y"][j + 1] == pytest.approx(tr["y"][j] + tr["vy"][j], abs=1e-9)
            assert tr["x"][j + 1] == pytest.approx(tr["x"][j] + tr["vx"][j], abs=1e-9)
            sp0, sp1 = np.hypot(tr["vy"][j], tr["vx"][j]), np.hypot(tr["vy"][j + 1], tr["vx"][j + 1])
            assert abs(sp1 - sp0) < 5 * 0.1
            if sp0 > 0.3 and sp1 > 0.3:
                a0 = np.arctan2(tr["vy"][j], tr["vx"][j])
                a1 = np.arctan2(tr["vy"][j + 1], tr["vx"][j + 1])
                assert abs(np.angle(np.exp(1j * (a1 - a0)))) < 5 * 0.1
            n_checked += 1
    assert n_checked > 100
    # Frames are the analytic render of everything near the patch, including MBs
    # just outside it; inside-positions account for the image wherever they are.
    first = pos.select((pos["sequence"] == 0) & (pos["frame"] == 0))
    for y, x in zip(first["y"], first["x"]):
        assert s.frames[0, 0, int(round(y)), int(round(x))] > 0.05


def test_bubbles_flow_in_and_out():
    cfg = SyntheticConfig(speed_range=(1.5, 2.0))
    s = synthetic_sequences(8, 8, 40, PSF_MB, cfg, rng=10)
    pos = s.positions
    first = {}
    last = {}
    for tid, f in zip(pos["track_id"], pos["frame"]):
        first[tid] = min(first.get(tid, 99), f)
        last[tid] = max(last.get(tid, -1), f)
    assert any(v > 0 for v in first.values())  # entered later
    assert any(v < 7 for v in last.values())  # left early
    # Density inside matches the patch model: 0..20 MBs per frame, about 10 on average.
    per_frame = np.bincount(pos["sequence"].astype(int) * 8 + pos["frame"], minlength=64)
    assert 4 < per_frame.mean() < 16


def test_trajectory_and_velocity_maps():
    cfg = SyntheticConfig(n_min=1, n_max=1, speed_range=(1.0, 1.5), speed_noise_std=0.0,
                          direction_noise_std=0.0, margin_px=0.0)
    s = synthetic_sequences(5, 6, 40, PSF(0.8, 0.8), cfg, rng=11, upsampling=4)
    assert s.trajectory.shape == (5, 160, 160) and s.velocity.shape == (5, 2, 160, 160)
    pos = s.positions
    for i in range(5):
        sel = pos.select(pos["sequence"] == i)
        if len(sel) < 2:
            continue
        on = s.trajectory[i] > 0
        # Every sampled point of the path between inside positions is on the map.
        for j in range(len(sel) - 1):
            for a in np.linspace(0, 1, 9):
                y = sel["y"][j] + a * sel["vy"][j]
                x = sel["x"][j] + a * sel["vx"][j]
                assert on[int(np.floor((y + 0.5) * 4)), int(np.floor((x + 0.5) * 4))]
        # A straight constant-speed track: velocity map equals the true velocity.
        np.testing.assert_allclose(s.velocity[i, 0][on], sel["vy"][0], atol=1e-5)
        np.testing.assert_allclose(s.velocity[i, 1][on], sel["vx"][0], atol=1e-5)
        assert np.all(s.velocity[i][:, ~on] == 0)
        # The map is a thin line: about 4 px per original pixel travelled (x up to sqrt(2)).
        length = np.hypot(sel["vy"][0], sel["vx"][0]) * (len(sel) - 1) * 4
        assert length * 0.8 <= on.sum() <= length * 2 + 8


def test_velocity_maps_follow_perturbed_tracks():
    s = synthetic_sequences(4, 8, 40, PSF_MB, SyntheticConfig(n_min=3, n_max=3), rng=12)
    pos = s.positions
    on = s.trajectory > 0
    assert on.any()
    # At each inside position the map holds a mean of velocities of nearby segments.
    errs = []
    for i, y, x, vy, vx, f in zip(pos["sequence"], pos["y"], pos["x"], pos["vy"], pos["vx"], pos["frame"]):
        if f == 7:
            continue
        yy, xx = int(np.floor((y + 0.5) * 4 + 0.5 * vy * 4)), int(np.floor((x + 0.5) * 4 + 0.5 * vx * 4))
        if 0 <= yy < 160 and 0 <= xx < 160 and on[int(i), yy, xx]:
            i = int(i)
            errs.append(np.hypot(s.velocity[i, 0, yy, xx] - vy, s.velocity[i, 1, yy, xx] - vx))
    assert len(errs) > 20
    assert np.median(errs) < 0.05


def test_speed_of_generation():
    synthetic_patches(64, 40, PSF_MB, rng=0)
    synthetic_sequences(16, 8, 40, PSF_MB, rng=0)
    t0 = time.perf_counter()
    synthetic_patches(64, 40, PSF_MB, rng=1)
    t1 = time.perf_counter()
    synthetic_sequences(16, 8, 40, PSF_MB, rng=1)
    t2 = time.perf_counter()
    assert t1 - t0 < 0.1
    assert t2 - t1 < 0.2


def test_bad_arguments():
    with pytest.raises(CycleULMError, match="n must"):
        synthetic_patches(0, 40, PSF_MB)
    with pytest.raises(CycleULMError, match="n_min"):
        synthetic_patches(2, 40, PSF_MB, SyntheticConfig(n_min=5, n_max=2))
    with pytest.raises(CycleULMError, match="intensity_range"):
        synthetic_patches(2, 40, PSF_MB, SyntheticConfig(intensity_range=(1.0, 0.1)))
    with pytest.raises(CycleULMError, match="upsampling"):
        synthetic_sequences(2, 4, 40, PSF_MB, upsampling=0)
    with pytest.raises(CycleULMError, match="n_frames"):
        synthetic_sequences(2, 0, 40, PSF_MB)
