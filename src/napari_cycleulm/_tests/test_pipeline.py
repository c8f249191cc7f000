"""Pipelines: streaming gives the same answer as one block, outputs are complete and atomic."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.metrics import match_localisations
from napari_cycleulm.pipeline import PIPELINES, iter_pipeline, run_pipeline
from napari_cycleulm.progress import Cancelled
from napari_cycleulm.psf import PSF
from napari_cycleulm.simulate import simulate
from napari_cycleulm.tables import Localisations, Tracks


@pytest.fixture(scope="module")
def sim():
    return simulate(n_frames=60, height=64, width=80, density=8, seed=3)


@pytest.fixture(scope="module")
def true_psf(sim):
    m = sim.metadata
    return PSF(sigma_y_px=m["psf_sigma_y_px"], sigma_x_px=m["psf_sigma_x_px"], pixel_size_um=m["pixel_size_um"])


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_finds_most_bubbles(sim, true_psf, name):
    res = run_pipeline(sim.frames, name, true_psf, block_size=25)
    m = match_localisations(sim.ground_truth, res.localisations, tolerance=1.0)
    assert m.recall > 0.4 and m.precision > 0.5, (m.recall, m.precision)
    assert res.n_localisations == len(res.localisations)
    assert res.maps.density.shape == (64 * 4, 80 * 4)
    assert res.maps.density.sum() > 0
    assert set(res.tracks.lengths().values()) and min(res.tracks.lengths().values()) >= 4


def test_block_size_does_not_change_the_result(sim, true_psf):
    a = run_pipeline(sim.frames, "baseline1", true_psf, block_size=60)
    b = run_pipeline(sim.frames, "baseline1", true_psf, block_size=7)
    np.testing.assert_allclose(a.localisations.positions, b.localisations.positions, atol=1e-6)
    assert a.n_tracks == b.n_tracks
    np.testing.assert_allclose(a.maps.density, b.maps.density)


def test_target_count_matches_exactly(sim, true_psf):
    res = run_pipeline(sim.frames, "baseline1", true_psf, block_size=20, threshold=0.2, target_count=150)
    assert res.n_localisations == 150
    full = run_pipeline(sim.frames, "baseline1", true_psf, block_size=20, threshold=0.2)
    # The kept localisations are the best-scoring ones.
    assert res.localisations["score"].min() >= np.sort(full.localisations["score"])[-150] - 1e-9


def test_outputs_are_written(sim, true_psf, tmp_path):
    res = run_pipeline(sim.frames, "baseline2", true_psf, block_size=30, out_dir=tmp_path,
                       pixel_size_um=50.0, frame_rate_hz=500.0)
    for name in ("localisations.csv", "tracks.csv", "sr_density.tif", "sr_velocity.tif",
                 "power_doppler.tif", "preview.png", "run.json"):
        assert (tmp_path / name).is_file(), name
    assert res.localisations is None  # streamed to disk, not kept
    locs = Localisations.from_csv(tmp_path / "localisations.csv")
    tracks = Tracks.from_csv(tmp_path / "tracks.csv")
    assert len(locs) == res.n_localisations
    assert tracks.n_tracks == res.n_tracks
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["params"]["pipeline"] == "baseline2"
    assert res.maps.velocity_unit == "mm/s"


def test_cancelling_leaves_previous_outputs(sim, true_psf, tmp_path):
    run_pipeline(sim.frames, "baseline1", true_psf, block_size=30, out_dir=tmp_path)
    before = (tmp_path / "localisations.csv").read_text()
    with pytest.raises(Cancelled):
        run_pipeline(sim.frames[:30], "baseline1", true_psf, block_size=10, out_dir=tmp_path,
                     progress=lambda p: p.done < 10)
    assert (tmp_path / "localisations.csv").read_text() == before
    assert not list(tmp_path.glob(".*.part"))


def test_automatic_psf(sim):
    res = run_pipeline(sim.frames, "baseline1", "auto", block_size=60)
    assert res.params["psf"]["fwhm_y_px"] > 0


def test_bad_input_is_explained(sim, true_psf):
    with pytest.raises(CycleULMError, match="unknown pipeline"):
        run_pipeline(sim.frames, "nope", true_psf)
    with pytest.raises(CycleULMError, match="PSF"):
        run_pipeline(sim.frames, "baseline1", None)
    with pytest.raises(CycleULMError, match="frames, height, width"):
        run_pipeline(np.zeros((4, 4)), "baseline1", true_psf)
    with pytest.raises(CycleULMError, match="block_size"):
        next(iter_pipeline(sim.frames, "baseline1", true_psf, block_size=0))
