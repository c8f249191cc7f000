"""CycleULM-E2E accumulation: windows of 8 frames, block-independent, probability-weighted velocities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_cycleulm.render.e2e import E2EAccumulator, render_e2e
from napari_cycleulm.errors import CycleULMError

from ._tiny_nets import tiny_checkpoints


class FakeMBTNet(nn.Module):
    """p = mean of the window (per pixel), vy = 4 p, vx = -2 p; outputs at 4x (nearest)."""

    def __init__(self, n_frames=8):
        super().__init__()
        self.config = {"n_frames": n_frames}
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        m = x.mean(1, keepdim=True).clamp(1e-6, 1 - 1e-6)
        maps = torch.cat([torch.log(m / (1 - m)), 4 * m, -2 * m], dim=1)
        return maps.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)


def _constant_windows(values, h=3, w=5, extra=0):
    """Frames whose window k (8 frames) is constant values[k]; then ``extra`` frames of values[-1]."""
    frames = [np.full((8, h, w), v, np.float32) for v in values]
    if extra:
        frames.append(np.full((extra, h, w), values[-1], np.float32))
    return np.concatenate(frames)


def test_velocity_is_the_probability_weighted_mean():
    frames = _constant_windows([0.75, 0.25])
    acc = E2EAccumulator((3, 5), prob_threshold=None)
    assert acc.add(frames, FakeMBTNet()) == 2
    maps = acc.result()
    assert maps.density.shape == (12, 20) and maps.velocity_unit == "px/frame"
    np.testing.assert_allclose(maps.density, 1.0, rtol=1e-6)  # 0.75 + 0.25
    vy, vx = acc.mean_velocity()
    np.testing.assert_allclose(vy, 0.75 * 3.0 + 0.25 * 1.0, rtol=1e-6)
    np.testing.assert_allclose(vx, 0.75 * -1.5 + 0.25 * -0.5, rtol=1e-6)
    speed = np.hypot(3.0, 1.5) * 0.75 + np.hypot(1.0, 0.5) * 0.25
    np.testing.assert_allclose(maps.velocity, speed, rtol=1e-6)
    np.testing.assert_allclose(maps.axial_velocity, speed, rtol=1e-6)  # vy > 0: away from the probe
    np.testing.assert_allclose(maps.direction, np.arctan2(2.0, -1.0), rtol=1e-6)
    assert (maps.count == 0).all()


def test_threshold_makes_binary_weights_and_units_convert():
    frames = _constant_windows([0.75, 0.25])
    maps = render_e2e(frames, FakeMBTNet(), prob_threshold=0.5, pixel_size_um=50.0, frame_rate_hz=500.0)
    np.testing.assert_allclose(maps.density, 1.0)  # only the p = 0.75 window counts
    factor = 50.0 * 500.0 / 1000.0
    np.testing.assert_allclose(maps.velocity, np.hypot(3.0, 1.5) * factor, rtol=1e-6)
    assert maps.velocity_unit == "mm/s" and maps.pixel_size_um == pytest.approx(12.5)
    # No window reaches p = 0.9: no density, velocities undefined.
    empty = render_e2e(frames, FakeMBTNet(), prob_threshold=0.9)
    assert (empty.density == 0).all() and np.isnan(empty.velocity).all()


@pytest.mark.parametrize("threshold", [None, 0.5])
@pytest.mark.parametrize("stride", [None, 3])
def test_block_boundaries_do_not_change_the_maps(threshold, stride):
    rng = np.random.default_rng(4)
    frames = rng.uniform(0, 1, (37, 6, 7)).astype(np.float32)
    ref = E2EAccumulator((6, 7), prob_threshold=threshold, stride=stride)
    ref.add(frames, FakeMBTNet(), batch_size=8)
    a = ref.result()
    for cuts in ([5, 6, 20], [1, 2, 3, 4, 30], [36]):
        acc = E2EAccumulator((6, 7), prob_threshold=threshold, stride=stride)
        for lo, hi in zip([0, *cuts], [*cuts, 37]):
            acc.add(frames[lo:hi], FakeMBTNet(), batch_size=2)
        b = acc.result()
        assert acc.n_windows == ref.n_windows
        for name in ("density", "velocity", "axial_velocity", "direction"):
            np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-6, equal_nan=True)


def test_leftover_frames_form_a_zero_padded_window():
    frames = _constant_windows([0.5, 0.5], extra=4)  # 20 frames: 2 full windows + 4
    acc = E2EAccumulator((3, 5), prob_threshold=None)
    acc.add(frames, FakeMBTNet())
    maps = acc.result()
    assert acc.n_windows == 3
    np.testing.assert_allclose(maps.density, 0.5 + 0.5 + 0.25, rtol=1e-6)  # last: 4 of 8 frames
    dropped = E2EAccumulator((3, 5), prob_threshold=None, pad_last=False)
    dropped.add(frames, FakeMBTNet())
    np.testing.assert_allclose(dropped.result().density, 1.0, rtol=1e-6)
    # A stack shorter than one window still gives a map.
    short = render_e2e(frames[:3], FakeMBTNet(), prob_threshold=None)
    np.testing.assert_allclose(short.density, 0.5 * 3 / 8, rtol=1e-6)


def test_other_upsampling_factors_are_resampled():
    frames = _constant_windows([0.75, 0.25])
    maps = render_e2e(frames, FakeMBTNet(), upsampling=2, prob_threshold=None)
    assert maps.density.shape == (6, 10) and maps.upsampling == 2
    np.testing.assert_allclose(maps.density, 1.0, rtol=1e-5)
    np.testing.assert_allclose(maps.direction, np.arctan2(2.0, -1.0), rtol=1e-5)


def test_tiny_checkpoint_runs(tmp_path):
    paths = tiny_checkpoints(tmp_path)
    frames = np.random.default_rng(0).uniform(0, 1, (10, 9, 11)).astype(np.float32)
    maps = render_e2e(frames, paths["mbtnet"], device="cpu")
    assert maps.density.shape == (36, 44)
    assert np.isfinite(maps.density).all() and (maps.density >= 0).all() and maps.density.max() <= 2


def test_bad_inputs_are_explained(tmp_path):
    with pytest.raises(CycleULMError, match="prob_threshold"):
        E2EAccumulator((4, 4), prob_threshold=2)
    with pytest.raises(CycleULMError, match="upsampling"):
        E2EAccumulator((4, 4), upsampling=0)
    acc = E2EAccumulator((4, 4))
    with pytest.raises(CycleULMError, match="do not match"):
        acc.add(np.zeros((8, 5, 5)), FakeMBTNet())
    acc.add(np.zeros((8, 4, 4)), FakeMBTNet())
    with pytest.raises(CycleULMError, match="window changed"):
        acc.add(np.zeros((8, 4, 4)), FakeMBTNet(n_frames=4))
    acc.result()
    with pytest.raises(CycleULMError, match="already called"):
        acc.add(np.zeros((8, 4, 4)), FakeMBTNet())
