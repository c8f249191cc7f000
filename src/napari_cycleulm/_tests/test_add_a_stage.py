"""Adding a localiser is one function plus one registry entry (docs/dev/architecture.md)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_cycleulm import stages
from napari_cycleulm.pipeline import PipelineSpec, run_pipeline
from napari_cycleulm.simulate import simulate
from napari_cycleulm.io.tables import Localisations


def brightest_pixels(frames, psf, *, threshold, absolute_threshold=True, **_):
    """A toy localiser: local maxima of each frame above ``threshold`` (normalised units)."""
    peaks = (frames == ndimage.maximum_filter(frames, size=(1, 5, 5))) & (frames > threshold)
    f, y, x = np.nonzero(peaks)
    return Localisations({"frame": f, "y": y.astype(float), "x": x.astype(float),
                          "intensity": frames[f, y, x], "score": frames[f, y, x]})


@pytest.fixture
def toy_registered():
    entry = stages.Localiser("brightest", brightest_pixels, "brightest pixels (test)",
                             threshold_ceus=0.3, threshold_mbonly=0.3, threshold_unit="intensity",
                             absolute=True)
    stages.register_localiser(entry)
    yield entry
    del stages.LOCALISERS["brightest"]


def test_a_registered_localiser_runs_in_a_pipeline_and_streams(toy_registered):
    sim = simulate(n_frames=30, height=48, width=56, density=6, seed=2)
    spec = PipelineSpec("toy", "threshold", "brightest", "Bradley-Roth + brightest pixels",
                        threshold=toy_registered.threshold_ceus)
    whole = run_pipeline(sim.frames, spec, "auto", clutter_filter="none")
    blocks = run_pipeline(sim.frames, spec, "auto", clutter_filter="none", block_size=7)
    assert whole.n_localisations > 0
    np.testing.assert_array_equal(whole.localisations["x"], blocks.localisations["x"])
    assert whole.params["pipeline"] == "toy"


@pytest.mark.gui
def test_a_registered_localiser_appears_in_the_localise_dock(toy_registered, make_napari_viewer):
    from napari_cycleulm._napari.widgets.workflow_widget import PLUGIN_NAME

    viewer = make_napari_viewer()
    dock = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Localise")[1]
    assert "brightest" in dock.method.choices
