"""Specification of the conventional pre-processing stages."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.preprocess import (
    adaptive_threshold,
    box_mean,
    default_window,
    normalise_intensity,
    svd_clutter_filter,
    svd_knee,
)
from napari_cycleulm.psf import PSF

from .conftest import draw_bubbles


def brute_box_mean(img: np.ndarray, r: int) -> np.ndarray:
    h, w = img.shape
    out = np.empty_like(img, dtype=np.float64)
    for y in range(h):
        for x in range(w):
            out[y, x] = img[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1].mean()
    return out


def test_box_mean_is_exact_including_borders():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 10, (2, 23, 31)).astype(np.float32)
    got = box_mean(img, 7)
    for f in range(2):
        assert np.allclose(got[f], brute_box_mean(img[f], 3), atol=1e-5)
        # away from the borders this is the ordinary uniform filter
        ref = ndimage.uniform_filter(img[f].astype(np.float64), 7, mode="nearest")
        assert np.allclose(got[f, 3:-3, 3:-3], ref[3:-3, 3:-3], atol=1e-5)
    # even windows are rounded up to odd; rectangular windows work
    assert np.allclose(box_mean(img, 6), got, atol=1e-6)
    assert np.allclose(box_mean(img[0], (3, 5))[0], brute_box_mean_rect(img[0], 1, 2), atol=1e-5)


def brute_box_mean_rect(img, ry, rx):
    h, w = img.shape
    return np.array(
        [
            [img[max(0, y - ry) : y + ry + 1, max(0, x - rx) : x + rx + 1].mean() for x in range(w)]
            for y in range(h)
        ]
    )


def test_adaptive_threshold_zeros_flat_background_and_keeps_bubbles():
    pts = [(0, 20.0, 20.0), (0, 40.0, 45.0), (1, 30.0, 30.0)]
    frames = 0.3 + draw_bubbles((2, 64, 64), pts, (1.5, 2.0))
    out = adaptive_threshold(frames, window=15, sensitivity=0.15)
    assert out.shape == frames.shape and out.dtype == np.float32
    far = np.ones((64, 64), bool)
    far[10:55, 10:55] = False
    assert np.all(out[:, far] == 0)  # flat background is removed
    for f, y, x in pts:  # bubble peaks keep their original intensity
        assert out[f, int(y), int(x)] == pytest.approx(frames[f, int(y), int(x)])
    kept = out > 0
    assert np.all(out[kept] == frames[kept])
    # the pixel is kept exactly when I > (1 + s) * local mean
    mean = box_mean(frames, 15)
    assert np.mean(kept != (frames > 1.15 * mean)) < 1e-3  # float32 rounding only


def test_adaptive_threshold_sensitivity_and_default_window():
    frames = 1.0 + draw_bubbles((1, 80, 96), [(0, 40.0, 48.0)], (2.0, 2.0))
    loose = (adaptive_threshold(frames, 15, sensitivity=0.0) > 0).sum()
    strict = (adaptive_threshold(frames, 15, sensitivity=0.5) > 0).sum()
    assert loose > strict > 0
    assert default_window((80, 96)) == 11  # 80 / 8 = 10 -> odd
    psf = PSF(1.5, 2.0)
    assert default_window((512, 512), psf) == int(round(8 * psf.fwhm_x_px)) | 1
    assert default_window((20, 20), psf) <= 20


def test_adaptive_threshold_bad_input():
    with pytest.raises(CycleULMError, match="NaN"):
        adaptive_threshold(np.full((2, 8, 8), np.nan))
    with pytest.raises(CycleULMError, match="sensitivity"):
        adaptive_threshold(np.ones((2, 8, 8)), sensitivity=-1)
    with pytest.raises(CycleULMError, match="shape"):
        adaptive_threshold(np.ones((2, 2, 8, 8)))
    with pytest.raises(CycleULMError, match="window"):
        adaptive_threshold(np.ones((2, 8, 8)), window=0)


def _tissue_and_bubble(t=40, h=32, w=32, complex_=False, seed=0):
    rng = np.random.default_rng(seed)
    # Tissue: a bright static speckle pattern slowly breathing (rank 2).
    speckle = rng.uniform(5, 10, (h, w))
    speckle2 = rng.uniform(2, 4, (h, w))
    time = np.linspace(0, 1, t)
    tissue = speckle[None] * (1 + 0.05 * np.sin(2 * np.pi * time))[:, None, None]
    tissue = tissue + speckle2[None] * np.cos(np.pi * time)[:, None, None]
    pts = [(f, 16.0, 4.0 + 0.6 * f) for f in range(t)]  # moving bubble
    bubble = draw_bubbles((t, h, w), pts, (1.5, 1.5))
    data = tissue + bubble + rng.normal(0, 0.05, (t, h, w))  # receiver noise
    if complex_:
        data = data * np.exp(1j * rng.uniform(0, 2 * np.pi, (1, h, w)))
    return data.astype(np.complex64 if complex_ else np.float32), bubble, pts


@pytest.mark.parametrize("complex_", [False, True])
def test_svd_filter_removes_tissue_keeps_moving_bubble(complex_):
    data, bubble, pts = _tissue_and_bubble(complex_=complex_)
    out = svd_clutter_filter(data, cutoff=2)
    assert out.shape == data.shape and out.dtype == np.float32
    # Far from the bubble, tissue (intensity 5-10) is suppressed to a small residual.
    far = bubble < 1e-3
    assert np.abs(out[far]).mean() < 0.1  # the noise level (0.05 std) remains
    # The bubble stays the brightest feature, at the right place, in most frames.
    hits = 0
    for f, y, x in pts:
        yy, xx = np.unravel_index(np.argmax(out[f]), out[f].shape)
        hits += np.hypot(yy - y, xx - x) <= 1.5
    assert hits >= 0.9 * len(pts)
    if complex_:
        c = svd_clutter_filter(data, cutoff=2, return_complex=True)
        assert np.iscomplexobj(c) and np.allclose(np.abs(c), out, atol=1e-4)


def test_svd_automatic_cutoff_finds_the_tissue_rank():
    data, bubble, _ = _tissue_and_bubble()
    s = np.linalg.svd(data.reshape(len(data), -1), compute_uv=False)
    assert svd_knee(s) == 2
    auto = svd_clutter_filter(data)
    assert np.allclose(auto, svd_clutter_filter(data, cutoff=2), atol=1e-4)


def test_svd_high_cutoff_and_zero_cutoff():
    data, _, _ = _tissue_and_bubble(t=20)
    assert np.allclose(svd_clutter_filter(data, cutoff=0), np.abs(data), rtol=1e-4, atol=1e-3)
    assert np.allclose(svd_clutter_filter(data, cutoff=0, high_cutoff=20), np.abs(data), atol=1e-3)
    low = svd_clutter_filter(data, cutoff=2, high_cutoff=6)
    full = svd_clutter_filter(data, cutoff=2)
    assert np.linalg.norm(low) < np.linalg.norm(full)


def test_svd_bad_input():
    with pytest.raises(CycleULMError, match="stack"):
        svd_clutter_filter(np.ones((8, 8)))
    with pytest.raises(CycleULMError, match="empty"):
        svd_clutter_filter(np.ones((0, 8, 8)))
    with pytest.raises(CycleULMError, match="NaN"):
        svd_clutter_filter(np.full((4, 8, 8), np.nan))
    with pytest.raises(CycleULMError, match="at least 2"):
        svd_clutter_filter(np.ones((1, 8, 8)))
    with pytest.raises(CycleULMError, match="cutoff"):
        svd_clutter_filter(np.ones((4, 8, 8)), cutoff=4)
    with pytest.raises(CycleULMError, match="high_cutoff"):
        svd_clutter_filter(np.ones((4, 8, 8)), cutoff=2, high_cutoff=2)


def test_normalise_intensity():
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 50, (3, 40, 40)).astype(np.float32)
    out = normalise_intensity(frames, percentile=99.0)
    assert np.percentile(out, 99.0) == pytest.approx(1.0, rel=1e-5)
    assert np.allclose(out * np.percentile(frames, 99.0), frames, rtol=1e-5)
    # sparse bubbles on zeros: the percentile is 0, so the maximum is used
    sparse = np.zeros((2, 40, 40), np.float32)
    sparse[0, 5, 5] = 4.0
    assert normalise_intensity(sparse).max() == pytest.approx(1.0)
    zero = normalise_intensity(np.zeros((2, 8, 8)))
    assert zero.shape == (2, 8, 8) and not zero.any() and np.isfinite(zero).all()
    with pytest.raises(CycleULMError, match="percentile"):
        normalise_intensity(frames, percentile=0)
