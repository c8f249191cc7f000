"""The transient gate: moving bubbles pass, static or slowly evolving structures and noise do not."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.psf import PSF
from napari_cycleulm.preprocess.evidence_gate import transient_gate

from .conftest import draw_bubbles


def _scene(seed=0, t=120, h=48, w=48):
    """Static bright blobs (clutter) + a bubble crossing the frame + weak noise."""
    rng = np.random.default_rng(seed)
    static = draw_bubbles((1, h, w), [(0, 12, 12), (0, 36, 30)], sigma=(2.0, 2.5), amplitudes=[2.0, 1.5])[0]
    # Slow drift of the static structures' brightness (slowly evolving clutter).
    gain = 1.0 + 0.2 * np.sin(np.arange(t) / 40.0)
    bubble_y = 24.0
    bubble_x = np.linspace(4, w - 5, t)
    moving = draw_bubbles((t, h, w), [(f, bubble_y, bubble_x[f]) for f in range(t)], sigma=(1.5, 2.0))
    frames = gain[:, None, None] * static[None] + moving
    frames += rng.normal(0, 0.05, frames.shape)
    return np.abs(frames).astype(np.float32), bubble_x, bubble_y


def test_a_moving_bubble_passes_and_static_clutter_and_noise_do_not():
    frames, bx, by = _scene()
    gate = transient_gate(frames, 0, len(frames), psf=PSF(1.5, 2.0))
    for f in (20, 60, 100):
        assert gate[f, int(round(by)), int(round(bx[f]))], f"bubble of frame {f} was gated out"
    # The slowly brightening and dimming blobs are almost never transient, and noise passes rarely.
    temporal_only = transient_gate(frames, 0, len(frames), psf=PSF(1.5, 2.0), spatial_sensitivity=None)
    assert temporal_only[:, 12, 12].mean() < 0.05 and temporal_only[:, 36, 30].mean() < 0.05
    far = (slice(None), slice(0, 8), slice(30, None))  # background far from everything
    assert temporal_only[far].mean() < 0.1  # 3 robust SDs after the matched filter, one pixel of margin
    # The spatial (Bradley-Roth) test removes most of what noise lets through the temporal one.
    assert gate[far].mean() < 0.5 * temporal_only[far].mean()


def test_blocks_with_context_give_the_gate_of_the_whole_stack():
    frames, _, _ = _scene(seed=1)
    whole = transient_gate(frames, 0, len(frames), window_half_frames=20)
    # Frames 50-70 gated from a slice holding them plus 20 frames of context on each side.
    part = transient_gate(frames[30:90], 20, 40, first_frame=30, n_frames=len(frames), window_half_frames=20)
    np.testing.assert_array_equal(part, whole[50:70])


def test_missing_context_and_bad_parameters_are_refused():
    frames, _, _ = _scene(seed=2, t=60)
    with pytest.raises(CycleULMError, match="context"):
        transient_gate(frames[10:30], 0, 20, first_frame=10, n_frames=60, window_half_frames=20)
    with pytest.raises(CycleULMError, match="significance"):
        transient_gate(frames, 0, 10, significance=0)
    with pytest.raises(CycleULMError, match="start < stop"):
        transient_gate(frames, 5, 5)


def test_pipelines_gate_mb_dt_output_by_default_and_record_it():
    from napari_cycleulm.pipeline import PIPELINES, run_pipeline
    from napari_cycleulm.simulate import simulate
    from napari_cycleulm.preprocess.evidence_gate import DEFAULT_GATE

    sim = simulate(n_frames=30, height=64, width=64, density=8, seed=5)
    psf = PSF(sim.metadata["psf_sigma_y_px"], sim.metadata["psf_sigma_x_px"])
    assert PIPELINES["cycleulm-ncc"].gate == DEFAULT_GATE and PIPELINES["baseline1"].gate == "none"
    gated = run_pipeline(sim.frames, "cycleulm-ncc", psf, block_size=10)
    free = run_pipeline(sim.frames, "cycleulm-ncc", psf, block_size=10, gate="none")
    assert gated.params["gate"] == DEFAULT_GATE and free.params["gate"] == "none"
    # A gate only removes: never more localisations than MB-DT's output alone.
    assert 0 < gated.n_localisations <= free.n_localisations
    # The temporal gate reads context across blocks: its result does not depend on the block size.
    a = run_pipeline(sim.frames, "cycleulm-ncc", psf, block_size=7, gate="temporal").localisations
    b = run_pipeline(sim.frames, "cycleulm-ncc", psf, block_size=30, gate="temporal").localisations
    np.testing.assert_allclose(a.positions, b.positions, atol=1e-4)
    with pytest.raises(CycleULMError, match="unknown gate"):
        run_pipeline(sim.frames, "cycleulm-ncc", psf, gate="bogus")


def test_transient_count_counts_the_moving_bubble_not_the_static_blobs():
    from napari_cycleulm.preprocess.evidence_gate import transient_count

    frames, _, _ = _scene(seed=3)
    per_frame, amplitudes = transient_count(frames, PSF(1.5, 2.0))
    # One bubble crosses the frame; the two bright static blobs and the noise do not count.
    assert 0.4 <= per_frame <= 2.0
    # Noise peaks pass too (the negative ones cancel them in the count); the brightest are the bubble.
    assert np.sort(amplitudes)[-15:].min() > 0.5
    with pytest.raises(CycleULMError, match="at least 3 frames"):
        transient_count(frames[:2], PSF(1.5, 2.0))
