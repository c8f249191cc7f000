"""Pipelines: streaming gives the same answer as one block, outputs are complete and atomic."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.evaluate.metrics import match_localisations
from napari_cycleulm.pipeline import PIPELINES, iter_pipeline, run_pipeline
from napari_cycleulm.progress import Cancelled
from napari_cycleulm.psf import PSF
from napari_cycleulm.simulate import simulate
from napari_cycleulm.io.tables import Localisations, Tracks


@pytest.fixture(scope="module")
def sim():
    return simulate(n_frames=60, height=64, width=80, density=8, seed=3)


@pytest.fixture(scope="module")
def true_psf(sim):
    m = sim.metadata
    return PSF(sigma_y_px=m["psf_sigma_y_px"], sigma_x_px=m["psf_sigma_x_px"], pixel_size_um=m["pixel_size_um"])


BASELINES = ["baseline1", "baseline2"]
CYCLEULM = ["cycleulm-ncc", "cycleulm-decon", "cycleulm-loc", "cycleulm-e2e", "cycleulm-tracks"]


def test_all_pipelines_are_named():
    assert sorted(PIPELINES) == sorted(BASELINES + CYCLEULM)


@pytest.mark.parametrize("name", BASELINES)
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


# -- CycleULM pipelines (tiny random networks: plumbing, streaming and errors) --
@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    from ._tiny_nets import tiny_checkpoints

    return tiny_checkpoints(tmp_path_factory.mktemp("nets"))


@pytest.fixture(scope="module")
def short(sim):
    return sim.frames[:20, :40, :48]


def _models(nets):
    return {"mbdt": nets["mbdt"], "mblnet": nets["mblnet"], "mbtnet": nets["mbtnet"]}


@pytest.mark.parametrize("name", CYCLEULM)
def test_cycleulm_pipelines_run_and_write_outputs(short, true_psf, nets, tmp_path, name):
    # Random networks: low thresholds so that localisation pipelines find something.
    thr = {"cycleulm-ncc": 0.2, "cycleulm-decon": 0.01, "cycleulm-loc": 0.1, "cycleulm-tracks": 0.1, "cycleulm-e2e": None}[name]
    res = run_pipeline(short, name, true_psf, block_size=7, threshold=thr, out_dir=tmp_path,
                       keep_tables=True, device="cpu", **_models(nets))
    for f in ("sr_density.tif", "sr_velocity.tif", "power_doppler.tif", "preview.png", "run.json"):
        assert (tmp_path / f).is_file(), f
    assert res.maps.density.shape == (160, 192)
    np.testing.assert_allclose(res.power_doppler, (short.astype(np.float64) ** 2).mean(0), rtol=1e-4)
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["params"]["models"]["mbdt"]["path"] == str(nets["mbdt"])
    assert summary["params"]["mbonly_psf"]["sigma_y_px"] == pytest.approx(true_psf.sigma_y_px / 2)
    assert "denoise" in res.timings_s
    if name == "cycleulm-e2e":
        assert len(res.localisations) == 0 and len(res.tracks) == 0 and res.n_tracks == 0
        assert "not produced" in res.outputs["localisations"]
        assert not (tmp_path / "localisations.csv").exists()
        assert res.maps.density.sum() > 0 and summary["params"]["e2e"]["windows"] == 3
    else:
        assert res.n_localisations > 0 and res.n_localisations == len(res.localisations)
        assert len(Localisations.from_csv(tmp_path / "localisations.csv")) == res.n_localisations
        assert (tmp_path / "tracks.csv").is_file()


@pytest.mark.parametrize("name", ["cycleulm-loc", "cycleulm-e2e"])
def test_cycleulm_block_size_does_not_change_the_result(short, true_psf, nets, name):
    kw = dict(threshold=0.1 if name == "cycleulm-loc" else None, device="cpu", **_models(nets))
    a = run_pipeline(short, name, true_psf, block_size=20, **kw)
    b = run_pipeline(short, name, true_psf, block_size=6, **kw)
    np.testing.assert_allclose(a.localisations.positions, b.localisations.positions, atol=1e-4)
    np.testing.assert_allclose(a.maps.density, b.maps.density, atol=1e-4)


@pytest.mark.parametrize("name", ["cycleulm-loc", "cycleulm-ncc"])
def test_cycleulm_target_count(short, true_psf, nets, name, monkeypatch):
    # The tiny random nets give nearly flat probability maps whose local maxima
    # bfloat16 rounding merges into plateaus; this test is about target_count.
    monkeypatch.setenv("CYCLEULM_PRECISION", "float32")
    res = run_pipeline(short, name, true_psf, block_size=10, threshold=0.05, target_count=25,
                       device="cpu", **_models(nets))
    assert res.n_localisations == 25


def test_missing_default_weights_are_explained(short, true_psf, nets, monkeypatch, tmp_path):
    from napari_cycleulm.dl import models

    monkeypatch.setitem(models.DEFAULT_WEIGHTS, "mblnet", tmp_path / "mblnet_default.pt")
    with pytest.raises(CycleULMError, match="no default weights shipped for MBL-Net"):
        run_pipeline(short, "cycleulm-loc", true_psf, mbdt=nets["mbdt"])
    with pytest.raises(CycleULMError, match="not a CycleULM checkpoint or corrupt"):
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"garbage")
        run_pipeline(short, "cycleulm-ncc", true_psf, mbdt=bad)
    with pytest.raises(CycleULMError, match="target_count"):
        run_pipeline(short, "cycleulm-e2e", true_psf, target_count=10, **_models(nets))


def test_mirror_averaging_is_checked_before_work_and_recorded(short, true_psf, nets, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CycleULMError, match="tta .*must be one of"):
        run_pipeline(short, "cycleulm-loc", true_psf, denoise_params={"tta": "both"}, out_dir=out,
                     device="cpu", **_models(nets))
    assert not out.exists()  # nothing was written
    res = run_pipeline(short, "cycleulm-ncc", true_psf, device="cpu", **_models(nets))
    assert res.params["denoise_params"]["tta"] == "lateral"
    assert "tta" not in run_pipeline(short, "baseline2", true_psf).params["denoise_params"]


def test_psf_outside_the_trained_range_warns(short, nets, tmp_path):
    from ._tiny_nets import tiny_checkpoints

    narrow = tiny_checkpoints(tmp_path, sigma_range_px=(0.2, 0.3))
    wide_psf = PSF(sigma_y_px=2.0, sigma_x_px=2.5)  # MB-only sigma 1.0 x 1.25 px
    with pytest.warns(UserWarning, match="outside the range the MBL-Net"):
        run_pipeline(short, "cycleulm-loc", wide_psf, mbdt=nets["mbdt"], mblnet=narrow["mblnet"],
                     device="cpu")


def test_cycleulm_tracks_links_the_loc_detections_with_mbtnet_prior(tmp_path):
    """cycleulm-tracks: CycleULM-Loc's localisations, linked with MBT-Net's velocity prior."""
    from napari_cycleulm.cli import main

    sim_small = simulate(n_frames=24, height=48, width=56, density=15, seed=4)
    loc = run_pipeline(sim_small.frames, "cycleulm-loc", "auto")
    trk = run_pipeline(sim_small.frames, "cycleulm-tracks", "auto")
    assert PIPELINES["cycleulm-tracks"].networks == ("mbdt", "mblnet", "mbtnet")
    for col in ("frame", "y", "x"):
        np.testing.assert_array_equal(trk.localisations[col], loc.localisations[col])
    prior = trk.params["motion_prior"]
    assert prior["network"] == "mbtnet" and prior["windows"] >= 1
    assert len(trk.tracks) > 0
    path = tmp_path / "frames.npy"
    np.save(path, sim_small.frames)
    assert main(["run", str(path), "--pipeline", "cycleulm-tracks", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "tracks.csv").stat().st_size > 0


def test_run_folder_maps_record_their_pixel_size_and_unit(tmp_path):
    """One map writer: the run folder's TIFFs are export.write_map_tiff's, calibrated."""
    import json

    import tifffile

    from napari_cycleulm.io import read_stack
    from napari_cycleulm.simulate import simulate

    sim = simulate(seed=1, n_frames=30, height=40, width=48)
    res = run_pipeline(sim.frames, "baseline1", "auto", out_dir=tmp_path / "run", pixel_size_um=50.0,
                       frame_rate_hz=500.0)
    np.testing.assert_array_equal(read_stack(tmp_path / "run" / "sr_density.tif")[0], res.maps.density)
    for name, px, unit in (("sr_velocity", 12.5, "mm/s"), ("power_doppler", 50.0, "mean squared intensity")):
        with tifffile.TiffFile(tmp_path / "run" / f"{name}.tif") as tif:
            info = json.loads(tif.imagej_metadata["Info"])
        assert info["pixel_size_um"] == px and info["unit"] == unit


def test_cycleulm_pipelines_hand_mbdt_a_background_no_brighter_than_it_was_trained_on(true_psf, nets):
    from napari_cycleulm.intensity import MBDT_BACKGROUND_FLOOR, MBDT_BACKGROUND_LEVEL, intensity_scale

    rng = np.random.default_rng(3)
    noisy = rng.rayleigh(1.0, (12, 40, 48)).astype(np.float32)  # a bright noise floor, no bubbles
    base = run_pipeline(noisy, "baseline2", true_psf, clutter_filter="none", device="cpu")
    loc = run_pipeline(noisy, "cycleulm-loc", true_psf, clutter_filter="none", device="cpu", **_models(nets))
    assert base.params["intensity_scale"] == pytest.approx(intensity_scale(noisy), rel=1e-6)
    assert np.median(noisy) * loc.params["intensity_scale"] == pytest.approx(MBDT_BACKGROUND_LEVEL, rel=1e-4)
    # A background in MB-DT's range keeps the percentile convention.
    sparse = np.zeros_like(noisy)
    sparse[:, 18:23, 22:27] = 5.0  # a bubble-sized bright spot: 1.3 % of the pixels
    sparse += 0.4 * noisy  # median ~0.47 against a 99.9th percentile of ~5.5: 0.08 after scaling
    res = run_pipeline(sparse, "cycleulm-loc", true_psf, clutter_filter="none", device="cpu", **_models(nets))
    assert MBDT_BACKGROUND_FLOOR < np.median(sparse) * intensity_scale(sparse) < MBDT_BACKGROUND_LEVEL
    assert res.params["intensity_scale"] == pytest.approx(intensity_scale(sparse), rel=1e-6)
    # A darker one (a rare bright bubble sets the percentile) is raised to the floor.
    dim = sparse.copy()
    dim[:, 1:3, 1:3] = 15.0  # 0.2 % of the pixels, 3x brighter: the percentile rises, the median stays
    res = run_pipeline(dim, "cycleulm-loc", true_psf, clutter_filter="none", device="cpu", **_models(nets))
    assert np.median(dim) * intensity_scale(dim) < MBDT_BACKGROUND_FLOOR
    assert np.median(dim) * res.params["intensity_scale"] == pytest.approx(MBDT_BACKGROUND_FLOOR, rel=1e-4)
