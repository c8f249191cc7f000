"""Layer helpers: result names, re-run modes, provenance metadata, coordinate mapping.

These use napari's ``ViewerModel`` (no Qt), so they run without a display.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402
from napari.layers import Image, Points  # noqa: E402

import napari_cycleulm  # noqa: E402
from napari_cycleulm.errors import CycleULMError  # noqa: E402
from napari_cycleulm._tests._gui import elide_middle  # noqa: E402
from napari_cycleulm.render import SRRenderer  # noqa: E402
from napari_cycleulm.io.tables import Tracks  # noqa: E402
from napari_cycleulm._napari.widgets._layers import (  # noqa: E402
    GENERATED_KEY, METHOD_RESULTS, RERUN_MODES, RESULT_KEY, SR_MAPS, add_result, add_sr_layers, geometry_of,
    is_sr_map, origin_of, parse_result_name, result_metadata, result_name, sr_layer_kwargs, to_layer_coords,
)
from napari_cycleulm.pipeline import PIPELINES  # noqa: E402
from napari_cycleulm.stages import LOCALISERS  # noqa: E402


def test_result_name_follows_the_convention():
    assert result_name("CEUS sample", "MB-only") == "CEUS sample MB-only"
    assert result_name("CEUS sample", "denoised") == "CEUS sample denoised"
    assert result_name("CEUS sample", "localisations", "ncc") == "[ncc] CEUS sample localisations"
    assert result_name("a b", "SR density", "cycleulm-loc") == "[cycleulm-loc] a b SR density"
    assert RERUN_MODES == ("replace", "add numbered")


def test_result_names_read_back_and_only_conventional_names_parse():
    for method in (*PIPELINES, *LOCALISERS):
        for what in METHOD_RESULTS:
            for source in ("CEUS sample", "a [b] localisations", "x"):
                name = result_name(source, what, method)
                assert parse_result_name(name) == (source, what, method)
                assert parse_result_name(f"{name} (12)") == (source, what, method)  # 'add numbered'
    for name in ("CEUS sample MB-only", "CEUS sample localisations [ncc]", "[ncc] CEUS sample MIP",
                 "[ncc] localisations", "[ncc]CEUS tracks", "[ncc] CEUS tracks (x)", "clicks"):
        assert parse_result_name(name) is None, name


def test_every_result_of_every_method_is_told_apart_in_the_elided_layer_list():
    """The layer list keeps a long name's start and end: pipeline first, what it holds last."""
    shown = {}
    for method in (*PIPELINES, *LOCALISERS):
        for what in METHOD_RESULTS:
            name = result_name("CEUS acquisition 2024-05-17 rat 3", what, method)
            text = elide_middle(name)
            assert text.startswith(f"[{method}"[:12]) and text.endswith(what[-12:]), text
            assert text not in shown, (name, shown.get(text))
            shown[text] = name


def test_sr_maps_are_known_by_their_record_else_by_their_name():
    viewer = ViewerModel()
    ref = viewer.add_image(np.zeros((2, 8, 10)), name="ceus")
    renderer = SRRenderer((8, 10), upsampling=2)
    maps = renderer.result()
    layers = add_sr_layers(viewer, maps, "ceus", "ncc", ref, result_metadata("render", ref), direction=True)
    layers[0].name = "my favourite map"  # renamed: the record still says what it is
    assert all(is_sr_map(layer) for layer in layers) and not is_sr_map(ref)
    assert is_sr_map(Image(np.zeros((4, 4)), name=result_name("ceus", SR_MAPS[1], "x")))
    assert not is_sr_map(Image(np.zeros((4, 4)), name="ceus SR density"))  # no method tag, no record
    assert not is_sr_map(Points(np.zeros((1, 2)), name=result_name("ceus", "SR density", "x")))


def test_replace_updates_our_layer_in_place_and_keeps_display_settings():
    viewer = ViewerModel()
    first = add_result(viewer, "image", np.zeros((4, 4)), "r", colormap="hot")
    first.opacity = 0.3  # the user's display setting
    second = add_result(viewer, "image", np.ones((4, 4)), "r", mode="replace", colormap="hot")
    assert second is first and len(viewer.layers) == 1
    assert second.data.sum() == 16 and second.opacity == pytest.approx(0.3)
    assert second.metadata[GENERATED_KEY]


def test_add_numbered_keeps_previous_results():
    viewer = ViewerModel()
    add_result(viewer, "image", np.zeros((4, 4)), "r")
    two = add_result(viewer, "image", np.ones((4, 4)), "r", mode="add numbered")
    three = add_result(viewer, "image", np.ones((4, 4)) * 2, "r", mode="add numbered")
    assert [layer.name for layer in viewer.layers] == ["r", "r (2)", "r (3)"]
    assert viewer.layers["r"].data.sum() == 0
    assert two.data.sum() == 16 and three.data.sum() == 32


def test_a_user_layer_with_the_same_name_is_never_replaced_or_removed():
    viewer = ViewerModel()
    mine = viewer.add_image(np.full((4, 4), 7.0), name="r")
    for mode in RERUN_MODES:
        add_result(viewer, "image", np.zeros((4, 4)), "r", mode=mode)
    assert viewer.layers["r"] is mine and mine.data.sum() == 7 * 16
    assert GENERATED_KEY not in mine.metadata
    assert len(viewer.layers) == 3


def test_replace_with_points_of_another_length_updates_features():
    viewer = ViewerModel()
    add_result(viewer, "points", np.zeros((3, 3)), "p", features={"score": np.ones(3)})
    layer = add_result(viewer, "points", np.ones((5, 3)), "p", features={"score": np.arange(5.0)})
    assert len(layer.data) == 5
    np.testing.assert_allclose(layer.features["score"], np.arange(5.0))
    tracks = np.array([[0, 0, 1, 1], [0, 1, 2, 2], [1, 0, 5, 5], [1, 1, 6, 6]], float)
    first = add_result(viewer, "tracks", tracks, "t", features={"vy": np.arange(4.0)})
    again = add_result(viewer, "tracks", tracks[:3], "t", features={"vy": np.arange(3.0)})
    assert again is first and first.data.shape == (3, 4)
    np.testing.assert_allclose(first.features["vy"], np.arange(3.0))


def test_unknown_rerun_mode_is_a_clear_error():
    with pytest.raises(CycleULMError, match="re-run mode"):
        add_result(ViewerModel(), "image", np.zeros((2, 2)), "r", mode="overwrite")


def test_result_metadata_records_provenance_params_and_units():
    src = Image(np.zeros((3, 4, 4)), name="ceus", metadata={"pixel_size_um": 50.0, "frame_rate_hz": 500.0})
    meta = result_metadata("localise", src, {"threshold": np.float32(0.5), "sizes": np.arange(2)},
                           method="ncc", unit="mm/s")
    record = meta[RESULT_KEY]
    assert record == {"stage": "localise", "source": "ceus", "origin": "ceus", "method": "ncc",
                      "params": {"threshold": 0.5, "sizes": [0, 1]}, "version": napari_cycleulm.__version__}
    assert meta["pixel_size_um"] == 50.0 and meta["frame_rate_hz"] == 500.0 and meta["unit"] == "mm/s"
    json.dumps(meta)  # reproducible: everything is plain JSON


def test_origin_follows_the_chain_of_results():
    ceus = Image(np.zeros((3, 4, 4)), name="ceus")
    locs = Points(np.zeros((1, 3)), name="whatever I renamed it",
                  metadata=result_metadata("localise", ceus, method="decon"))
    assert origin_of(locs) == ("ceus", "decon")
    tracks_meta = result_metadata("track", locs)
    assert tracks_meta[RESULT_KEY]["origin"] == "ceus" and tracks_meta[RESULT_KEY]["method"] == "decon"
    assert tracks_meta[RESULT_KEY]["source"] == "whatever I renamed it"
    # Without a record: the conventional name, else the layer itself.
    assert origin_of(Points(np.zeros((1, 3)), name="[ncc] a b localisations (2)")) == ("a b", "ncc")
    assert origin_of(Points(np.zeros((1, 3)), name="[decon] a b tracks")) == ("a b", "decon")
    assert origin_of(Points(np.zeros((1, 3)), name="clicks")) == ("clicks", None)
    assert origin_of(None) == (None, None)


def test_geometry_of_copies_scale_and_translate():
    src = Image(np.zeros((3, 4, 4)), scale=(1, 2, 3), translate=(0, 5, -4))
    geo = geometry_of(src)
    np.testing.assert_allclose(geo["scale"], [1, 2, 3])
    np.testing.assert_allclose(geo["translate"], [0, 5, -4])
    assert geometry_of(None) == {}


def test_sr_layers_overlay_the_reference_pixel_centres():
    viewer = ViewerModel()
    ref = viewer.add_image(np.zeros((2, 8, 10)), name="ceus", scale=(1, 2, 3), translate=(0, 5, -4))
    renderer = SRRenderer((8, 10), upsampling=4)
    renderer.add_tracks(Tracks({"track_id": [0, 0, 0], "frame": [0, 1, 2], "y": [2.0, 3, 4], "x": [5.0, 5, 5]}))
    maps = renderer.result()
    meta = result_metadata("render", ref, {"upsampling": 4})
    layers = add_sr_layers(viewer, maps, "ceus", "ncc", ref, meta, direction=True)
    assert [layer.name for layer in layers] == ["[ncc] ceus SR density", "[ncc] ceus SR velocity",
                                                "[ncc] ceus SR direction"]
    assert [layer.colormap.name for layer in layers] == ["hot", "turbo", "twilight"]
    density = layers[0]
    np.testing.assert_allclose(density.scale, [0.5, 0.75])
    # The centre of SR pixel (u-1)/2 = 1.5 is the centre of CEUS pixel 0, in world coordinates.
    np.testing.assert_allclose(np.asarray(density.data_to_world([1.5, 1.5]))[-2:], [5.0, -4.0])
    np.testing.assert_allclose(np.asarray(density.data_to_world([4 * 7 + 1.5, 4 * 9 + 1.5]))[-2:],
                               np.asarray(ref.data_to_world([0, 7, 9]))[-2:])
    assert density.metadata["upsampling"] == 4 and layers[1].metadata["unit"] == "px/frame"
    geo = sr_layer_kwargs(ref, 4)
    np.testing.assert_allclose(density.translate, geo["translate"])


def test_to_layer_coords_maps_through_world_coordinates():
    ceus = Image(np.zeros((3, 10, 10)), scale=(1, 2, 2), translate=(0, 10, 0))
    clicks = Points(np.zeros((0, 3)), scale=(1, 1, 1))
    # World (0, 14, 6) is CEUS pixel (0, 2, 3).
    np.testing.assert_allclose(to_layer_coords(np.array([[0.0, 14.0, 6.0]]), clicks, ceus), [[0, 2, 3]])
    # 2-D points on a 3-D image: trailing axes aligned.
    flat = Points(np.zeros((0, 2)), scale=(4, 4))
    np.testing.assert_allclose(to_layer_coords(np.array([[6.0, 1.0]]), flat, ceus), [[7.0, 2.0]])
    # No target or nothing to map: unchanged.
    pts = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(to_layer_coords(pts, clicks, None), pts)
    assert to_layer_coords(np.zeros((0, 3)), clicks, ceus).shape == (0, 3)
