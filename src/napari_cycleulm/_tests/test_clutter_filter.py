"""The clutter-filter stage: SVD in blocks, automatic cut-off, pipelines and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cycleulm.cli import main
from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.evaluate.metrics import match_localisations
from napari_cycleulm.pipeline import run_pipeline
from napari_cycleulm.psf import PSF
from napari_cycleulm.preprocess import (
    ClutterFilter,
    clutter_filtered,
    parse_clutter_filter,
    auto_cutoff,
    static_texture_ratio,
    svd_clutter_filter,
)
from napari_cycleulm.simulate import simulate

from .test_preprocess import _tissue_and_bubble


def test_auto_cutoff_filters_static_clutter_and_leaves_decorrelating_clutter():
    rng = np.random.default_rng(0)
    t, h, w = 100, 40, 40
    bubbles = (rng.random((t, h, w)) > 0.995) * 1.0
    speckle = rng.rayleigh(1.0, (h, w))
    static = speckle[None] * (1 + 0.02 * rng.normal(size=(t, 1, 1))) + bubbles
    assert static_texture_ratio(static) > 3
    assert 1 <= auto_cutoff(static) <= 10
    # Clutter that decorrelates from frame to frame: filtering would only rectify it.
    fast = rng.rayleigh(1.0, (t, h, w)) + bubbles
    assert static_texture_ratio(fast) < 0.3
    assert auto_cutoff(fast) == 0
    assert static_texture_ratio(np.ones((4, 8, 8))) == 0.0


def test_blocks_cover_every_frame_and_short_tails_join():
    assert ClutterFilter("svd", 3, 100).blocks(240) == [(0, 100), (100, 240)]
    assert ClutterFilter("svd", 3, 100).blocks(260) == [(0, 100), (100, 200), (200, 260)]
    assert ClutterFilter("svd", 3, 100).blocks(40) == [(0, 40)]


@pytest.mark.parametrize("text, expected", [
    ("none", ClutterFilter("none")), ("svd", ClutterFilter("svd", "auto")),
    ("svd:auto", ClutterFilter("svd", "auto")), ("SVD:7", ClutterFilter("svd", 7)),
])
def test_parse_spellings(text, expected):
    assert parse_clutter_filter(text) == expected
    assert parse_clutter_filter(expected.describe()) == expected


@pytest.mark.parametrize("bad", ["svd:x", "svd:-1", "highpass", "svd:2.5"])
def test_parse_rejects_bad_spellings_with_a_clear_message(bad):
    with pytest.raises(CycleULMError, match="(?i)svd"):
        parse_clutter_filter(bad)


def test_lazy_filter_equals_the_filter_of_each_block_and_reads_each_block_once():
    rng = np.random.default_rng(1)
    x = rng.random((130, 12, 14)).astype(np.float32)
    reads = []

    class Counting:
        shape, dtype = x.shape, x.dtype

        def __len__(self):
            return len(x)

        def __getitem__(self, key):
            reads.append(key)
            return x[key]

    lazy = clutter_filtered(Counting(), ClutterFilter("svd", 2, 50))
    got = np.concatenate([lazy[a:a + 20] for a in range(0, 130, 20)])
    ref = np.concatenate([
        np.clip(svd_clutter_filter(x[a:b], 2, return_complex=True).real, 0, None) for a, b in ((0, 50), (50, 100), (100, 130))
    ])
    assert np.allclose(got, ref, atol=1e-5)
    assert len(reads) == 3  # each SVD block is read (and filtered) once when streamed
    assert lazy.cutoffs == {0: 2, 50: 2, 100: 2}


def test_complex_iq_is_filtered_and_its_envelope_returned():
    data, _, _ = _tissue_and_bubble(complex_=True)
    got = np.asarray(clutter_filtered(data, ClutterFilter("svd", 2, 40)))
    assert got.dtype == np.float32
    assert np.allclose(got, svd_clutter_filter(data, cutoff=2), atol=1e-4)
    # "none" on IQ input: the envelope, unfiltered.
    assert np.allclose(np.asarray(clutter_filtered(data, "none")), np.abs(data), atol=1e-6)


def test_none_on_envelope_data_is_the_input_itself():
    x = np.ones((5, 8, 8), np.float32)
    assert clutter_filtered(x, "none") is x


def test_automatic_filter_recovers_bubbles_under_static_clutter():
    """Clutter as bright as the bubbles, nearly static: without the filter no pipeline finds them."""
    sim = simulate(n_frames=120, height=64, width=80, density=15.0, seed=5, clutter_db=0.0,
                   clutter_correlation=0.999, psf_fwhm_um=(200.0, 300.0))
    psf = PSF(sim.metadata["psf_sigma_y_px"], sim.metadata["psf_sigma_x_px"])
    f1 = {}
    for cf in ("none", "svd:auto"):
        res = run_pipeline(sim.frames, "cycleulm-loc", psf, clutter_filter=cf)
        f1[cf] = match_localisations(sim.ground_truth, res.localisations, tolerance=1.0).f1
        if cf != "none":
            assert res.params["clutter_filter"]["method"] == "svd:auto"
            assert all(k >= 1 for k in res.params["clutter_filter"]["cutoffs"].values())
    assert f1["svd:auto"] > 1.5 * f1["none"], f1


def test_cli_runs_the_filter_and_records_it(tmp_path, capsys):
    sim = simulate(n_frames=60, height=48, width=56, density=8.0, seed=3)
    path = tmp_path / "frames.npy"
    np.save(path, sim.frames)
    out = tmp_path / "run"
    assert main(["run", str(path), "--pipeline", "baseline1", "--out", str(out), "--quiet",
                 "--clutter-filter", "svd:3", "--svd-block", "30"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["params"]["clutter_filter"] == {"method": "svd:3", "block_frames": 30,
                                               "cutoffs": {"0": 3, "30": 3}}
    capsys.readouterr()
    assert main(["run", str(path), "--pipeline", "baseline1", "--out", str(tmp_path / "r2"), "--quiet",
                 "--clutter-filter", "svd:many"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "svd:many" in err[0]
    assert main(["run", str(path), "--pipeline", "baseline1", "--out", str(tmp_path / "r3"), "--quiet",
                 "--svd-block", "1"]) == 2


@pytest.mark.gui
def test_pipeline_dock_runs_the_chosen_clutter_filter_like_the_core(make_napari_viewer, qtbot):
    pytest.importorskip("napari")
    from napari_cycleulm._napari.sample_data import make_sample
    from napari_cycleulm._tests._gui import run_widget
    from napari_cycleulm._napari.widgets.workflow_widget import PLUGIN_NAME

    (frames, img_kw, _), _ = make_sample()
    frames = frames[:40].copy()
    viewer = make_napari_viewer()
    image = viewer.add_image(frames, **img_kw)
    dock = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Run a ULM pipeline")[1]
    assert dock.clutter_filter.value == "svd:auto"  # the core's default
    dock.image.value = image
    dock.pipeline.value = "baseline1"
    dock.clutter_filter.value = "svd:3"
    dock.svd_block.value = 20
    run_widget(qtbot, dock)
    layer = viewer.layers[f"[baseline1] {image.name} SR density"]
    want = run_pipeline(frames, "baseline1", "auto", clutter_filter=ClutterFilter("svd", 3, 20),
                        pixel_size_um=img_kw["metadata"].get("pixel_size_um"),
                        frame_rate_hz=img_kw["metadata"].get("frame_rate_hz"))
    np.testing.assert_array_equal(np.asarray(layer.data), want.maps.density)
    assert layer.metadata["cycleulm"]["params"]["clutter_filter"]["method"] == "svd:3"
