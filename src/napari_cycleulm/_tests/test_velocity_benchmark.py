"""benchmarks/velocity_maps.py: the ground-truth velocity map and the map metrics."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from napari_cycleulm import Localisations


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "velocity_maps.py"
    if not path.is_file():
        pytest.skip("benchmarks/ is not beside the package (installed without the repository)")
    spec = importlib.util.spec_from_file_location("_velocity_maps_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _straight_track(vy, vx, n=60, y0=20.3, x0=40.2, track_id=3):
    t = np.arange(n, dtype=np.float64)
    return Localisations({"frame": t, "y": y0 + vy * t, "x": x0 + vx * t, "track_id": np.full(n, track_id),
                          "vy": np.full(n, vy), "vx": np.full(n, vx), "amplitude": np.ones(n)})


@pytest.mark.parametrize("vy, vx", [(0.0, 0.5), (0.3, -0.4)])
def test_truth_of_a_straight_track_is_its_speed_in_mm_s(bench, vy, vx):
    """A straight track at constant speed gives that speed (mm/s) on every SR pixel it crosses."""
    gt = _straight_track(vy, vx)
    maps = bench.ground_truth_velocity(bench.ground_truth_tracks(gt), (64, 80), pixel_size_um=50.0,
                                       frame_rate_hz=500.0)
    speed = np.hypot(vy, vx) * 50.0 * 500.0 / 1000.0  # px/frame -> mm/s
    assert maps.velocity_unit == "mm/s"
    fin = np.isfinite(maps.velocity)
    assert fin.sum() > 4 * 60 * np.hypot(vy, vx) * 0.9  # the whole path, about 4 SR px per px
    np.testing.assert_allclose(maps.velocity[fin], speed, rtol=1e-5)
    # signed by the axial direction (sign(0) = 0: purely lateral flow has no axial speed)
    np.testing.assert_allclose(maps.axial_velocity[fin], np.sign(vy) * speed, rtol=1e-5)
    assert np.all(maps.density[fin] == 1)  # one passage per pixel


def test_metrics_of_the_truth_against_itself(bench):
    gt = _straight_track(0.3, -0.4)
    truth = bench.ground_truth_velocity(bench.ground_truth_tracks(gt), (64, 80), 50.0, 500.0)
    vessels = np.isfinite(truth.velocity)
    m = bench.velocity_metrics(truth, truth, vessels)
    assert m["mae_mm_s"] == m["median_ae_mm_s"] == m["axial_mae_mm_s"] == m["bias_mm_s"] == 0.0
    assert m["coverage_gt"] == m["coverage_vessels"] == 1.0 and m["spill"] == m["spill_1px"] == 0.0
    assert m["rel_mae"] == 0.0 and m["n_compared"] == vessels.sum()
    # An up-sampled (H, W) mask puts original pixel (i, j) on SR pixels 4i..4i+3, 4j..4j+3.
    small = np.zeros((3, 4), bool)
    small[1, 2] = True
    big = bench.vessel_mask_sr(small)
    assert big.shape == (12, 16) and big.sum() == 16 and big[4:8, 8:12].all()
