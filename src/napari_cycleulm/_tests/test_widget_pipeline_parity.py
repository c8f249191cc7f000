"""A stage widget and the pipeline give the same result for the same input and settings.

Each test opens the widgets as the Plugins menu does, chains them as a user
would (Denoise -> Localise, Translate -> Localise, E2E) on the first frames of
the sample, and compares the layer with ``run_pipeline`` on the same frames
and PSF: identical tables (and maps), not merely similar ones.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_cycleulm._napari.sample_data import make_sample  # noqa: E402
from napari_cycleulm._tests._gui import run_widget  # noqa: E402
from napari_cycleulm._napari.widgets._layers import PSF_METADATA_KEY  # noqa: E402
from napari_cycleulm._napari.widgets.workflow_widget import PLUGIN_NAME  # noqa: E402
from napari_cycleulm.pipeline import run_pipeline  # noqa: E402
from napari_cycleulm.psf import estimate_psf_auto  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.slow]

N_FRAMES = 24


@pytest.fixture(scope="module")
def sample():
    (frames, img_kw, _), _gt = make_sample()
    frames = frames[:N_FRAMES].copy()
    psf = estimate_psf_auto(frames, pixel_size_um=img_kw["metadata"]["pixel_size_um"]).psf
    return frames, img_kw, psf


@pytest.fixture
def viewer_with_sample(make_napari_viewer, sample):
    frames, img_kw, psf = sample
    viewer = make_napari_viewer()
    image = viewer.add_image(frames, **img_kw)
    psf_layer = viewer.add_image(psf.kernel, name="CEUS sample PSF", metadata={PSF_METADATA_KEY: psf.to_dict()})
    return viewer, image, psf_layer, psf


def _open(viewer, name):
    return viewer.window.add_plugin_dock_widget(PLUGIN_NAME, name)[1]


def _table(layer):
    return np.asarray(layer.data, dtype=np.float64)


def _pipeline_table(locs):
    return np.column_stack([locs["frame"], locs["y"], locs["x"]]).astype(np.float64)


@pytest.mark.parametrize(("method", "pipeline"), [("ncc", "baseline1"), ("decon", "baseline2")])
def test_denoise_then_localise_widgets_give_the_baseline_pipeline_localisations(
    viewer_with_sample, qtbot, method, pipeline
):
    viewer, image, psf_layer, psf = viewer_with_sample
    den = _open(viewer, "Denoise")
    den.image.value = image
    den.psf_layer.value = psf_layer
    den.method.value = "adaptive threshold"
    run_widget(qtbot, den)
    denoised = viewer.layers["CEUS sample denoised"]

    loc = _open(viewer, "Localise")
    loc.image.value = denoised
    loc.psf_layer.value = psf_layer
    loc.method.value = method
    run_widget(qtbot, loc)
    got = _table(viewer.layers[f"[{method}] CEUS sample denoised localisations"])

    want = run_pipeline(image.data, pipeline, psf).localisations
    assert len(want) > 20
    np.testing.assert_array_equal(got, _pipeline_table(want))


def test_translate_then_localise_widgets_give_cycleulm_loc(viewer_with_sample, qtbot):
    viewer, image, psf_layer, psf = viewer_with_sample
    tr = _open(viewer, "Translate to MB-only (MB-DT)")
    tr.image.value = image
    tr.block_size.value = 10  # other blocks than the pipeline's: results must not depend on it
    run_widget(qtbot, tr)
    mb = viewer.layers["CEUS sample MB-only"]

    loc = _open(viewer, "Localise")
    loc.image.value = mb
    loc.psf_layer.value = psf_layer
    loc.method.value = "mblnet"
    run_widget(qtbot, loc)
    got = _table(viewer.layers["[mblnet] CEUS sample MB-only localisations"])

    want = run_pipeline(image.data, "cycleulm-loc", psf).localisations
    assert len(want) > 20
    np.testing.assert_allclose(got, _pipeline_table(want), atol=1e-5)


def test_e2e_widget_gives_the_cycleulm_e2e_maps(viewer_with_sample, qtbot):
    viewer, image, _psf_layer, psf = viewer_with_sample
    e2e = _open(viewer, "End-to-end SR (MBT-Net)")
    e2e.image.value = image
    e2e.block_size.value = 16
    run_widget(qtbot, e2e)
    got = viewer.layers["[cycleulm-e2e] CEUS sample SR density"].data

    want = run_pipeline(image.data, "cycleulm-e2e", psf, pixel_size_um=50.0, frame_rate_hz=500.0).maps
    assert want.density.max() > 0
    np.testing.assert_allclose(got, want.density, rtol=1e-5, atol=1e-6)
