"""Large tables in napari: windowed Points, thinned Tracks (``_napari/widgets/_display.py``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_cycleulm._napari.widgets._display import (  # noqa: E402
    DISPLAY_KEY,
    FrameWindow,
    full_table,
    show_localisations,
    show_tracks,
    thin_tracks,
)
from napari_cycleulm._napari.widgets._layers import GENERATED_KEY  # noqa: E402
from napari_cycleulm.errors import CycleULMError  # noqa: E402
from napari_cycleulm.io.tables import Localisations, Tracks  # noqa: E402

pytestmark = pytest.mark.gui

N_FRAMES, PER_FRAME = 1000, 50  # 50,000 localisations


def _locs(n_frames=N_FRAMES, per_frame=PER_FRAME, seed=0) -> Localisations:
    """``per_frame`` random bubbles in each frame; ``uid`` is the row number (to check alignment)."""
    rng = np.random.default_rng(seed)
    n = n_frames * per_frame
    return Localisations({
        "frame": np.repeat(np.arange(n_frames), per_frame),
        "y": rng.uniform(0, 63, n), "x": rng.uniform(0, 79, n),
        "score": rng.uniform(0.5, 1.0, n), "uid": np.arange(n, dtype=float),
    })


def _tracks(n_tracks=600, seed=0) -> Tracks:
    """Tracks of 2-20 vertices; ``uid`` numbers the rows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 21, n_tracks)
    tid = np.repeat(np.arange(n_tracks), lengths)
    start = rng.integers(0, 900, n_tracks)
    frame = start[tid] + np.concatenate([np.arange(k) for k in lengths])
    n = len(tid)
    return Tracks({"track_id": tid, "frame": frame, "y": rng.uniform(0, 63, n), "x": rng.uniform(0, 79, n),
                   "vy": rng.normal(size=n), "uid": np.arange(n, dtype=float)})


@pytest.fixture
def viewer_ref(make_napari_viewer):
    viewer = make_napari_viewer()
    ref = viewer.add_image(np.zeros((N_FRAMES, 64, 80), np.float32), name="CEUS", scale=(1.0, 2.0, 2.0),
                           translate=(0.0, 10.0, -4.0), contrast_limits=(0, 1))
    return viewer, ref


def _frames(layer) -> np.ndarray:
    return np.round(np.asarray(layer.data)[:, 0]).astype(int)


def _assert_rows_match_table(layer, locs):
    """Every layer row is the table row its ``uid`` feature names (data and features aligned)."""
    uid = np.asarray(layer.features["uid"]).astype(int)
    np.testing.assert_allclose(np.asarray(layer.data), locs.positions[uid])
    np.testing.assert_allclose(np.asarray(layer.features["score"]), locs["score"][uid])


def _n_controllers(viewer) -> int:
    """FrameWindow callbacks connected to the viewer's current_step."""
    n = 0
    for cb in viewer.dims.events.current_step.callbacks:
        obj = cb[0]() if isinstance(cb, tuple) else getattr(cb, "__self__", None)
        n += isinstance(obj, FrameWindow)
    return n


def test_small_table_gives_plain_layer_with_every_point(viewer_ref):
    viewer, ref = viewer_ref
    locs = _locs(n_frames=40)  # 2,000 rows
    layer = show_localisations(viewer, locs, "CEUS localisations", reference=ref, max_display=5000,
                               metadata={"cycleulm": {"stage": "localise"}}, visible=False)
    assert len(layer.data) == len(locs)
    _assert_rows_match_table(layer, locs)
    np.testing.assert_allclose(layer.scale, ref.scale)
    np.testing.assert_allclose(layer.translate, ref.translate)
    assert not layer.visible
    assert layer.metadata[GENERATED_KEY] and layer.metadata["cycleulm"] == {"stage": "localise"}
    assert layer.metadata[DISPLAY_KEY]["mode"] == "all"
    assert layer.metadata[DISPLAY_KEY]["n_total"] == 2000
    assert full_table(layer) is None  # the layer itself is the table
    assert _n_controllers(viewer) == 0


def test_windowed_layer_holds_only_frames_around_the_current_one(viewer_ref):
    viewer, ref = viewer_ref
    locs = _locs()
    viewer.dims.current_step = (500, 0, 0)
    layer = show_localisations(viewer, locs, "locs", reference=ref, window_frames=40, max_display=10_000,
                               source_path="/data/run/localisations.csv")
    info = layer.metadata[DISPLAY_KEY]
    assert info["mode"] == "window" and info["n_total"] == 50_000 and info["window_frames"] == 40
    assert info["source_path"] == "/data/run/localisations.csv"
    assert full_table(layer) is locs
    frames = _frames(layer)
    inner = frames[(frames > 0) & (frames < N_FRAMES - 1)]  # the two anchors keep the slider's range
    assert inner.min() == 480 and inner.max() == 519
    assert len(layer.data) == 40 * PER_FRAME + 2
    assert info["loaded_frames"] == [480, 520]
    # Every localisation of the current frame is in the layer.
    assert np.sum(frames == 500) == PER_FRAME

    # Small steps inside the window's core do not reload.
    loads = layer._cycleulm_display.n_loads
    for f in range(501, 510):
        viewer.dims.current_step = (f, 0, 0)
    assert layer._cycleulm_display.n_loads == loads

    viewer.dims.current_step = (800, 0, 0)
    frames = _frames(layer)
    inner = frames[(frames > 0) & (frames < N_FRAMES - 1)]
    assert inner.min() == 780 and inner.max() == 819
    assert layer.metadata[DISPLAY_KEY]["loaded_frames"] == [780, 820]
    # napari shows the current frame's 50 points.
    assert len(layer._view_data) == PER_FRAME


def test_hidden_layer_reloads_only_when_shown(viewer_ref):
    viewer, ref = viewer_ref
    viewer.dims.current_step = (100, 0, 0)
    layer = show_localisations(viewer, _locs(), "locs", reference=ref, window_frames=40, max_display=5000,
                               visible=False)
    assert layer.metadata[DISPLAY_KEY]["loaded_frames"] == [80, 120]  # loaded once, hidden
    loads = layer._cycleulm_display.n_loads
    for f in (300, 600, 900):
        viewer.dims.current_step = (f, 0, 0)
    assert layer._cycleulm_display.n_loads == loads
    layer.visible = True
    assert layer.metadata[DISPLAY_KEY]["loaded_frames"] == [880, 920]
    assert np.sum(_frames(layer) == 900) == PER_FRAME


def test_features_stay_aligned_with_data_after_reloads(viewer_ref):
    viewer, ref = viewer_ref
    ordered = _locs()
    # Shuffled input: the layer sorts by frame and keeps features with their rows.
    shuffled = ordered.select(np.random.default_rng(3).permutation(len(ordered)))
    layer = show_localisations(viewer, shuffled, "locs", reference=ref, window_frames=30, max_display=5000,
                               face_color="score")
    for f in (10, 300, 301, 999, 0, 640):
        viewer.dims.current_step = (f, 0, 0)
        _assert_rows_match_table(layer, ordered)  # uid numbers the rows of the unshuffled table
        assert len(layer.face_color) == len(layer.data)
        assert np.sum(_frames(layer) == f) == PER_FRAME
    # A colour means the same score in every window: limits come from the full table.
    assert layer.face_color_mode == "colormap"
    lo, hi = ordered["score"].min(), ordered["score"].max()
    np.testing.assert_allclose(layer.face_contrast_limits, (lo, hi))
    score = np.asarray(layer.features["score"])
    np.testing.assert_allclose(layer.face_color, layer.face_colormap.map((score - lo) / (hi - lo)), atol=1e-6)


def test_window_narrows_to_fit_max_display_and_covers_a_thick_slice(viewer_ref):
    viewer, ref = viewer_ref
    layer = show_localisations(viewer, _locs(), "locs", reference=ref, window_frames=1000, max_display=1000)
    assert layer.metadata[DISPLAY_KEY]["window_frames"] == 20  # 1000 points / 50 per frame
    assert len(layer.data) <= 1000 + 2

    layer2 = show_localisations(viewer, _locs(), "wide", reference=ref, window_frames=20, max_display=20_000)
    viewer.dims.current_step = (500, 0, 0)
    viewer.dims.margin_left = (30.0, 0.0, 0.0)
    viewer.dims.margin_right = (30.0, 0.0, 0.0)
    frames = _frames(layer2)
    inner = frames[(frames > 0) & (frames < N_FRAMES - 1)]
    assert inner.min() <= 470 and inner.max() >= 530  # the projected frames are all loaded


def test_window_follows_world_coordinates_and_keeps_the_slider_range(make_napari_viewer):
    viewer = make_napari_viewer()
    locs = _locs()
    # No image layer: the windowed layer alone must keep the frame slider spanning the acquisition.
    layer = show_localisations(viewer, locs, "locs", window_frames=40, max_display=5000,
                               scale=(2.0, 1.0, 1.0), translate=(10.0, 0.0, 0.0))
    assert viewer.dims.range[0].start == pytest.approx(10.0)
    assert viewer.dims.range[0].stop == pytest.approx(10.0 + 2 * (N_FRAMES - 1))
    viewer.dims.set_point(0, 10.0 + 2 * 700)  # world -> frame 700
    frames = _frames(layer)
    inner = frames[(frames > 0) & (frames < N_FRAMES - 1)]
    assert inner.min() == 680 and inner.max() == 719
    assert np.sum(frames == 700) == PER_FRAME


def test_removing_the_layer_disconnects_it(viewer_ref):
    viewer, ref = viewer_ref
    layer = show_localisations(viewer, _locs(), "locs", reference=ref, window_frames=40, max_display=5000)
    assert _n_controllers(viewer) == 1
    ctl = layer._cycleulm_display
    viewer.layers.remove(layer)
    assert _n_controllers(viewer) == 0
    before = np.asarray(layer.data).copy()
    loads = ctl.n_loads
    for f in (100, 900, 300):
        viewer.dims.current_step = (f, 0, 0)  # must not raise nor touch the removed layer
    assert ctl.n_loads == loads
    np.testing.assert_array_equal(np.asarray(layer.data), before)


def test_replace_reuses_the_layer_and_its_single_controller(viewer_ref):
    viewer, ref = viewer_ref
    first = show_localisations(viewer, _locs(seed=0), "locs", reference=ref, window_frames=40, max_display=5000)
    first.size = 4  # a display setting the user chose
    new = _locs(seed=1)
    second = show_localisations(viewer, new, "locs", reference=ref, window_frames=40, max_display=5000)
    assert second is first and len(viewer.layers) == 2
    assert _n_controllers(viewer) == 1
    assert full_table(second) is new
    viewer.dims.current_step = (200, 0, 0)
    _assert_rows_match_table(second, new)

    # Re-run with a small table: a plain layer, no controller left behind.
    small = _locs(n_frames=20, seed=2)
    third = show_localisations(viewer, small, "locs", reference=ref, window_frames=40, max_display=5000)
    assert third is first and _n_controllers(viewer) == 0 and full_table(third) is None
    viewer.dims.current_step = (600, 0, 0)
    assert len(third.data) == len(small)
    _assert_rows_match_table(third, small)

    numbered = show_localisations(viewer, small, "locs", reference=ref, mode="add numbered")
    assert numbered is not first and numbered.name == "locs (2)"


def test_a_user_layer_of_the_same_name_is_left_alone(viewer_ref):
    viewer, ref = viewer_ref
    user = viewer.add_points(np.array([[1.0, 2.0, 3.0]]), name="locs")
    layer = show_localisations(viewer, _locs(), "locs", reference=ref, window_frames=40, max_display=5000)
    assert layer is not user and layer.name == "locs (2)"
    np.testing.assert_array_equal(user.data, [[1.0, 2.0, 3.0]])
    assert not hasattr(user, "_cycleulm_display")


def test_thin_tracks_keeps_whole_tracks_deterministically():
    tracks = _tracks()
    full_counts = tracks.lengths()
    shown, info = thin_tracks(tracks, 2000, rule="random", seed=0)
    assert info["thinned"] and len(shown) <= 2000 and info["shown_vertices"] == len(shown)
    # Close to the cap: the next track in the order no longer fitted.
    assert len(shown) > 2000 - 20
    for tid, n in shown.lengths().items():
        assert n == full_counts[tid]  # whole tracks only
    assert info["total_tracks"] == 600 and info["total_vertices"] == len(tracks)
    assert info["shown_tracks"] == shown.n_tracks < 600
    # Rows are the table's own rows, sorted by track then frame.
    uid = shown["uid"].astype(int)
    np.testing.assert_array_equal(shown["frame"], tracks["frame"][uid])
    assert np.all(np.diff(shown["track_id"]) >= 0)
    again, _ = thin_tracks(tracks, 2000, rule="random", seed=0)
    np.testing.assert_array_equal(again["uid"], shown["uid"])
    other, _ = thin_tracks(tracks, 2000, rule="random", seed=1)
    assert set(other["track_id"]) != set(shown["track_id"])

    longest, info = thin_tracks(tracks, 2000, rule="longest")
    kept = set(longest.lengths().values())
    dropped = [n for t, n in full_counts.items() if t not in longest.lengths()]
    assert min(kept) >= max(dropped)
    assert info["rule"] == "longest"

    same, info = thin_tracks(tracks, len(tracks))
    assert not info["thinned"] and len(same) == len(tracks)


def test_show_tracks_thins_large_tables_and_reports_counts(viewer_ref):
    viewer, ref = viewer_ref
    tracks = _tracks()
    layer = show_tracks(viewer, tracks, "CEUS tracks", reference=ref, max_vertices=2000,
                        source_path="tracks.csv", metadata={"cycleulm": {"stage": "track"}})
    info = layer.metadata[DISPLAY_KEY]
    assert info["mode"] == "thinned" and info["rule"] == "random" and info["seed"] == 0
    assert info["shown_vertices"] == len(layer.data) <= 2000
    assert info["total_vertices"] == len(tracks) and info["total_tracks"] == 600
    assert info["source_path"] == "tracks.csv"
    np.testing.assert_allclose(layer.scale, ref.scale)
    ids, counts = np.unique(np.asarray(layer.data)[:, 0].astype(int), return_counts=True)
    full = tracks.lengths()
    assert all(full[i] == c for i, c in zip(ids.tolist(), counts.tolist()))
    uid = np.asarray(layer.features["uid"]).astype(int)
    np.testing.assert_allclose(np.asarray(layer.data)[:, 1:], tracks.positions[uid])
    assert full_table(layer) is tracks

    # Replace with a small table: same layer, everything shown, no full table kept.
    small = tracks.select(tracks["track_id"] < 20)
    again = show_tracks(viewer, small, "CEUS tracks", reference=ref, max_vertices=2000)
    assert again is layer and len(again.data) == len(small)
    assert again.metadata[DISPLAY_KEY]["mode"] == "all" and full_table(again) is None


def test_bad_input_is_refused_with_clear_errors(viewer_ref):
    viewer, ref = viewer_ref
    with pytest.raises(CycleULMError, match="thinning rule"):
        thin_tracks(_tracks(), 100, rule="shortest")
    with pytest.raises(CycleULMError, match="max_vertices"):
        thin_tracks(_tracks(), 0)
    with pytest.raises(CycleULMError, match="window_frames"):
        show_localisations(viewer, _locs(n_frames=2), "a", window_frames=0)
    with pytest.raises(CycleULMError, match="Localisations"):
        show_localisations(viewer, _tracks(), "a")
    with pytest.raises(CycleULMError, match="re-run mode"):
        show_localisations(viewer, _locs(n_frames=2), "a", mode="overwrite")
    with pytest.raises(CycleULMError, match="empty"):
        show_tracks(viewer, Tracks(), "t")
    assert [layer.name for layer in viewer.layers] == ["CEUS"]


def test_the_next_stages_read_the_full_tables_not_the_displayed_part(viewer_ref):
    """Track and Render read layers through ``_layers``: a windowed / thinned layer gives its full table."""
    from napari_cycleulm._napari.widgets._layers import localisations_from_points, tracks_from_layer

    viewer, ref = viewer_ref
    locs = _locs()
    layer = show_localisations(viewer, locs, "big localisations", reference=ref, max_display=5_000,
                               window_frames=50)
    assert len(layer.data) < len(locs)
    assert len(localisations_from_points(layer)) == len(locs)
    tracks = _tracks()
    tl = show_tracks(viewer, tracks, "big tracks", reference=ref, max_vertices=1_000)
    assert len(tl.data) <= 1_000 < len(tracks)
    assert len(tracks_from_layer(tl)) == len(tracks)
