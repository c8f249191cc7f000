"""Shared fixtures: small synthetic stacks with exactly known bubbles."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cycleulm.psf import gaussian_kernel
from napari_cycleulm.io.tables import Localisations


def draw_bubbles(shape, points, sigma=(1.5, 2.0), amplitudes=None):
    """Render Gaussian bubbles at sub-pixel ``(frame, y, x)`` points into a stack."""
    t, h, w = shape
    frames = np.zeros(shape, np.float32)
    amplitudes = np.ones(len(points)) if amplitudes is None else amplitudes
    yy, xx = np.mgrid[0:h, 0:w]
    for (f, y, x), a in zip(points, amplitudes):
        frames[int(f)] += a * np.exp(
            -0.5 * (((yy - y) / sigma[0]) ** 2 + ((xx - x) / sigma[1]) ** 2)
        )
    return frames


@pytest.fixture
def isolated_bubbles():
    """10 frames of 64x64 with 4 well-separated bubbles each plus weak noise.

    Returns (frames, ground_truth Localisations, sigma (y, x) in pixels).
    """
    rng = np.random.default_rng(0)
    sigma = (1.5, 2.0)
    pts = []
    for f in range(10):
        for cy, cx in [(16, 16), (16, 46), (46, 16), (46, 46)]:
            pts.append((f, cy + rng.uniform(-3, 3), cx + rng.uniform(-3, 3)))
    pts = np.array(pts)
    amps = rng.uniform(0.6, 1.0, len(pts))
    frames = draw_bubbles((10, 64, 64), pts, sigma, amps)
    frames += rng.normal(0, 0.01, frames.shape).astype(np.float32)
    gt = Localisations({"frame": pts[:, 0], "y": pts[:, 1], "x": pts[:, 2], "amplitude": amps})
    return frames, gt, sigma


@pytest.fixture
def gaussian_psf_kernel():
    return gaussian_kernel(1.5, 2.0)
