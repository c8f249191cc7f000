"""Show very large localisation and track tables in napari without freezing it.

A million localisations (25,000 frames of 50 bubbles) in one napari Points
layer makes every frame step re-test every point (napari slices Points by a
full scan), and a million-vertex Tracks layer is redrawn in full on every pan
and frame step.  So, for tables above a size threshold:

- :func:`show_localisations` gives a *windowed* Points layer: it holds only the
  localisations of the frames around the current frame (plus the first and the
  last localisation, so the layer's extent still spans the whole acquisition),
  and reloads that window when the user scrolls near its edge.
- :func:`show_tracks` gives a *thinned* Tracks layer: whole tracks chosen by a
  stated, deterministic rule up to ``max_vertices`` vertices.

The full table stays in memory only once (the table object the caller passed
in, referenced by the layer; see :func:`full_table`) and on disk at
``source_path`` when the caller gives it; the layer's metadata records what is
shown under :data:`DISPLAY_KEY`.  The SR density map is the overview of the
whole acquisition.  Small tables give plain layers holding every row.

Measured with ``benchmarks/gui_large.py`` (see ``docs/guide/large_data.md``).
"""

from __future__ import annotations

import math
import weakref
from pathlib import Path

import napari
import numpy as np
from napari.layers import Layer, Points
from napari.layers import Tracks as TracksLayer

from ...errors import CycleULMError
from ...io.tables import Localisations, Tracks
from ._layers import RERUN_MODES, add_result, points_kwargs, tracks_kwargs

#: Tables with at most this many localisations become a plain Points layer;
#: larger ones are windowed so the layer never holds more.  Measured (software
#: OpenGL, 2 shared cores; docs/guide/large_data.md): a frame step with a plain
#: 100k-point layer costs what a windowed layer costs (41 vs 40 ms, image
#: included), 164 ms at 1.25M.
DEFAULT_MAX_DISPLAY = 100_000

#: Frames held by a windowed Points layer (centred on the current frame); it
#: reloads when the current frame comes within a quarter window of an edge, so
#: plain scrolling reloads once every ~50 frames.
DEFAULT_WINDOW_FRAMES = 200

#: Vertices drawn by a Tracks layer before it is thinned.  Every vertex is
#: redrawn on each pan and frame step (napari hides old ones in the shader):
#: about +1 ms per 1,000 vertices with software OpenGL, so 50k keeps a frame
#: step with image + Points + Tracks under 100 ms; raise it on a GPU.
DEFAULT_MAX_VERTICES = 50_000

#: Thinning rules for :func:`thin_tracks`.
THIN_RULES = ("random", "longest")

#: Metadata key describing what a layer made here shows (JSON-friendly dict).
DISPLAY_KEY = "cycleulm_display"

# Attribute holding the controller (and the full table) on the napari layer.  Not
# in ``metadata``: napari copies metadata when layers are duplicated or saved.
_CONTROLLER_ATTR = "_cycleulm_display"


# -- helpers -----------------------------------------------------------------------
def _geometry(reference: Layer | None, layer_kwargs: dict) -> dict:
    """``scale`` / ``translate`` copied from ``reference`` for a (frame, y, x) layer.

    The reference's trailing axes are used (a 2-D reference maps y, x only);
    explicit ``scale`` / ``translate`` in ``layer_kwargs`` win.
    """
    out = {}
    if reference is not None:
        k = min(3, reference.ndim)
        scale = np.ones(3)
        translate = np.zeros(3)
        scale[3 - k:] = np.asarray(reference.scale, float)[-k:]
        translate[3 - k:] = np.asarray(reference.translate, float)[-k:]
        out = {"scale": scale, "translate": translate}
    out.update({k: layer_kwargs.pop(k) for k in ("scale", "translate") if k in layer_kwargs})
    return out


def _check_common(viewer, table, cls, name: str, mode: str) -> None:
    if mode not in RERUN_MODES:
        raise CycleULMError(f"unknown re-run mode {mode!r}; choose one of {RERUN_MODES}.")
    if viewer is None:
        raise CycleULMError("no napari viewer to show the table in.")
    if not isinstance(table, cls):
        raise CycleULMError(f"expected a {cls.__name__} table; got {type(table).__name__}.")
    if not isinstance(name, str) or not name:
        raise CycleULMError("the layer needs a non-empty name.")


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CycleULMError(f"{what} must be a whole number >= 1; got {value!r}.")
    return int(value)


def _detach_previous(viewer: napari.Viewer, name: str, mode: str) -> None:
    """Stop the controller of the layer ``add_result`` may reuse, before it touches it."""
    if mode == "replace" and name in viewer.layers:
        _detach(viewer.layers[name])


def _detach(layer: Layer) -> None:
    old = getattr(layer, _CONTROLLER_ATTR, None)
    if old is not None:
        old.disconnect()
        setattr(layer, _CONTROLLER_ATTR, None)


def full_table(layer: Layer | None) -> Localisations | Tracks | None:
    """The complete table behind a windowed Points or thinned Tracks layer.

    Widgets that read a layer back (Track, Render) must use this instead of the
    layer's data, which holds only what is displayed.  Its coordinates are in
    the pixel grid of the table that was shown (the ``reference`` layer's data
    coordinates).

    Returns
    -------
    Localisations or Tracks or None
        The table given to :func:`show_localisations` (sorted by frame: the
        same object when it already was) or :func:`show_tracks`; ``None`` for
        any other layer (including plain layers made here, whose
        data is the full table and which the user may have edited).
    """
    ctl = getattr(layer, _CONTROLLER_ATTR, None)
    return None if ctl is None else ctl.table


def display_info(layer: Layer | None) -> dict | None:
    """What a layer made here shows: ``layer.metadata[DISPLAY_KEY]`` or ``None``."""
    if layer is None:
        return None
    return layer.metadata.get(DISPLAY_KEY)


# -- localisations -----------------------------------------------------------------
class _Holder:
    """Keeps the full table of a thinned layer; nothing to disconnect."""

    def __init__(self, table):
        self.table = table

    def disconnect(self) -> None:
        pass


class FrameWindow:
    """Keeps a Points layer loaded with the localisations near the current frame.

    Holds the full (frame-sorted) table and reloads the layer's data and
    features together when the viewer's current frame (or the slice thickness)
    moves close to the edge of the loaded frames.  Connected to
    ``viewer.dims.events.current_step`` / ``margin_left`` / ``margin_right``;
    disconnects itself when the layer leaves the viewer.  A hidden layer is
    reloaded when it is shown, not while scrolling.  The viewer and layer
    are held weakly, so a forgotten controller keeps neither alive.

    Parameters
    ----------
    viewer : napari.Viewer
    layer : napari.layers.Points
        A 3-D (frame, y, x) Points layer.
    locs : Localisations
        The full table, sorted by frame.
    window_frames : int
        Frames held around the current frame.
    max_display : int
        Most localisations the layer holds (the window narrows to fit the
        densest frames).
    """

    def __init__(self, viewer: napari.Viewer, layer: Points, locs: Localisations, *,
                 window_frames: int, max_display: int):
        self.table = locs
        self._frames = locs["frame"]
        #: Most localisations in one frame; bounds how many frames fit in ``max_display``.
        self.per_frame_max = _max_run(self._frames)
        self.max_display = int(max_display)
        self._cap_frames = max(1, self.max_display // self.per_frame_max)
        #: Frames held: ``window_frames`` unless the densest frames would exceed ``max_display``.
        self.window_frames = max(1, min(int(window_frames), self._cap_frames))
        self.loaded = (0, 0)  # [start, stop) frames currently in the layer
        self.n_loads = 0
        self._anchors = np.unique([0, len(locs) - 1]) if len(locs) else np.zeros(0, int)
        self._viewer = weakref.ref(viewer)
        self._layer = weakref.ref(layer)
        self._busy = False
        self._connected = False
        dims = viewer.dims.events
        for ev in (dims.current_step, dims.margin_left, dims.margin_right):
            ev.connect(self._on_dims)
        viewer.layers.events.removed.connect(self._on_removed)
        layer.events.visible.connect(self._on_dims)
        self._connected = True

    # -- public -------------------------------------------------------------------
    def disconnect(self) -> None:
        """Stop following the viewer (called when the layer is removed or replaced)."""
        if not self._connected:
            return
        self._connected = False
        viewer = self._viewer()
        if viewer is None:
            return
        dims = viewer.dims.events
        for ev in (dims.current_step, dims.margin_left, dims.margin_right):
            ev.disconnect(self._on_dims)
        viewer.layers.events.removed.disconnect(self._on_removed)
        layer = self._layer()
        if layer is not None:
            layer.events.visible.disconnect(self._on_dims)

    def wanted(self) -> tuple[int, int, int, int]:
        """Frames that must be loaded now, and the window to load around them.

        Returns ``(need_start, need_stop, load_start, load_stop)``, all
        half-open frame ranges in the table's frame numbers.
        """
        viewer, layer = self._viewer(), self._layer()
        centre, left, right = 0.0, 0.0, 0.0
        if viewer is not None and layer is not None:
            dims = viewer.dims
            axis = dims.ndim - layer.ndim  # napari aligns a layer's axes with the trailing world axes
            if axis >= 0 and len(dims.point) == dims.ndim:
                centre = float(layer.world_to_data(dims.point)[0])
                frame_scale = abs(float(layer.scale[0])) or 1.0
                left = float(dims.margin_left[axis]) / frame_scale
                right = float(dims.margin_right[axis]) / frame_scale
        c = int(math.floor(centre + 0.5))
        w = self.window_frames
        half, guard = w // 2, w // 4
        # A thick slice (napari's projection over frames) must be covered too, within the cap.
        spare = self._cap_frames - w
        ml = min(int(math.ceil(left)), spare // 2)
        mr = min(int(math.ceil(right)), spare - ml)
        return c - guard - ml, c + guard + 1 + mr, c - half - ml, c + w - half + mr

    def update(self, force: bool = False) -> bool:
        """Reload the layer when the current frame left the loaded window's core.

        A hidden layer is not reloaded until it is shown (or ``force``).
        Returns True when the layer's data changed.
        """
        layer = self._layer()
        if layer is None or self._busy or not (force or layer.visible):
            return False
        need0, need1, load0, load1 = self.wanted()
        if not force and self.loaded[0] <= need0 and need1 <= self.loaded[1]:
            return False
        self._busy = True
        try:
            self._load(layer, load0, load1)
        finally:
            self._busy = False
        return True

    # -- internals ---------------------------------------------------------------
    def rows(self, start: int, stop: int) -> np.ndarray:
        """Row indices shown for the window ``[start, stop)``: the window plus the anchors."""
        i0, i1 = np.searchsorted(self._frames, [start, stop], side="left")
        idx = np.arange(i0, i1)
        extra = self._anchors[(self._anchors < i0) | (self._anchors >= i1)]
        return np.concatenate([extra[extra < i0], idx, extra[extra >= i1]])

    def _load(self, layer: Points, start: int, stop: int) -> None:
        sub = self.table.select(self.rows(start, stop))
        data, kw = points_kwargs(sub, layer.name)
        layer.selected_data = set()  # indices into the old window would point at other rows
        # Data then features, as add_result does: napari resizes features with the data.
        layer.data = data
        layer.features = kw["features"]
        self.loaded = (start, stop)
        self.n_loads += 1
        info = layer.metadata.get(DISPLAY_KEY)
        if isinstance(info, dict):
            info["loaded_frames"] = [int(start), int(stop)]
            info["n_loaded"] = int(len(sub))

    def _on_dims(self, event=None) -> None:
        self.update()

    def _on_removed(self, event) -> None:
        if event.value is self._layer() or self._layer() is None:
            self.disconnect()


def _max_run(sorted_values: np.ndarray) -> int:
    """Length of the longest run of equal values in a sorted array (at least 1)."""
    if len(sorted_values) == 0:
        return 1
    edges = np.flatnonzero(np.diff(sorted_values)) + 1
    return int(np.diff(np.concatenate([[0], edges, [len(sorted_values)]])).max())


def _colour_limits_from_table(layer: Points, table: Localisations, explicit: dict) -> None:
    """Colour a feature-coloured windowed layer on the full table's range.

    napari fixes a colormap's contrast limits from the data present when the
    colouring is set up (here, two anchor points) and keeps them on reloads, so
    a colour would not mean the same value everywhere.  Explicit
    ``face_contrast_limits`` / ``border_contrast_limits`` are kept.
    """
    for which in ("face", "border"):
        if f"{which}_contrast_limits" in explicit or str(getattr(layer, f"{which}_color_mode")) != "colormap":
            continue
        prop = getattr(layer, f"_{which}").color_properties
        if prop is None or prop.name not in table:
            continue
        col = np.asarray(table[prop.name], float)
        col = col[np.isfinite(col)]
        if col.size and col.max() > col.min():
            setattr(layer, f"{which}_contrast_limits", (float(col.min()), float(col.max())))


def _sorted_by_frame(locs: Localisations) -> Localisations:
    f = locs["frame"]
    if len(f) < 2 or bool(np.all(f[1:] >= f[:-1])):
        return locs  # no copy: the pipeline writes tables in frame order
    return locs.select(np.argsort(f, kind="stable"))


def show_localisations(viewer: napari.Viewer, locs: Localisations, name: str, *,
                       reference: Layer | None = None, mode: str = "replace",
                       window_frames: int = DEFAULT_WINDOW_FRAMES,
                       max_display: int = DEFAULT_MAX_DISPLAY,
                       source_path: str | Path | None = None,
                       metadata: dict | None = None, **layer_kwargs) -> Points:
    """Show localisations as a Points layer that stays fast at millions of rows.

    Tables with at most ``max_display`` rows become a plain Points layer with
    every row.  Larger tables give a *windowed* layer holding only the
    localisations of ``window_frames`` frames around the viewer's current frame
    (plus the first and last localisation, so the frame slider still spans the
    acquisition); scrolling near the window's edge reloads it.  The full table is
    available from :func:`full_table`.  Editing a windowed layer is not kept
    across reloads.

    Parameters
    ----------
    viewer : napari.Viewer
    locs : Localisations
        ``frame, y, x`` in pixels of the ``reference`` grid; other columns become features.
    name : str
        Layer name (see ``_layers.result_name``).
    reference : napari layer, optional
        The CEUS Image layer: its ``scale`` and ``translate`` are copied.
    mode : {"replace", "add numbered"}
        Passed to ``_layers.add_result``; ``"replace"`` reuses the previous layer.
    window_frames : int
        Frames held by a windowed layer (default 200); narrowed so the layer
        never holds more than ``max_display`` localisations.
    max_display : int
        Largest table shown whole, and most localisations a windowed layer holds
        (default 100,000).
    source_path : path, optional
        Where the full table lives on disk (e.g. ``localisations.csv`` of a
        pipeline run); recorded in the metadata.
    metadata : dict, optional
        Layer metadata (e.g. ``{"cycleulm": summary}``); ``metadata[DISPLAY_KEY]``
        is added.
    **layer_kwargs
        Other Points keyword arguments (``visible``, ``size``, ``face_color``...).
        Per-point styles must come from features (e.g. ``face_color="score"``)
        to follow the window.

    Returns
    -------
    napari.layers.Points

    Raises
    ------
    CycleULMError
        For a missing viewer or name, a table of the wrong type, or a
        ``window_frames`` / ``max_display`` below 1.
    """
    _check_common(viewer, locs, Localisations, name, mode)
    window_frames = _positive_int(window_frames, "window_frames")
    max_display = _positive_int(max_display, "max_display")
    geo = _geometry(reference, layer_kwargs)
    n_total = len(locs)
    windowed = n_total > max_display
    info = {
        "kind": "localisations",
        "mode": "window" if windowed else "all",
        "n_total": int(n_total),
        "max_display": max_display,
        "source_path": None if source_path is None else str(source_path),
    }
    if windowed:
        locs = _sorted_by_frame(locs)
        info["window_frames"] = window_frames
        # The first window is loaded by the controller below; start with the anchors only.
        first = locs.select(np.unique([0, n_total - 1]))
    else:
        first = locs
    meta = {**(metadata or {}), DISPLAY_KEY: info}
    data, kw = points_kwargs(first, name, metadata=meta, **geo, **layer_kwargs)
    kw.pop("name", None)
    _detach_previous(viewer, name, mode)
    layer = add_result(viewer, "points", data, name, mode=mode, **kw)
    _detach(layer)
    if windowed:
        _colour_limits_from_table(layer, locs, explicit=kw)
        ctl = FrameWindow(viewer, layer, locs, window_frames=window_frames, max_display=max_display)
        info["window_frames"] = ctl.window_frames
        setattr(layer, _CONTROLLER_ATTR, ctl)
        ctl.update(force=True)
    else:
        info["n_loaded"] = int(n_total)
    return layer


# -- tracks ------------------------------------------------------------------------
def thin_tracks(tracks: Tracks, max_vertices: int = DEFAULT_MAX_VERTICES, *, rule: str = "random",
                seed: int = 0) -> tuple[Tracks, dict]:
    """Whole tracks, chosen by ``rule``, with at most ``max_vertices`` rows in all.

    Parameters
    ----------
    tracks : Tracks
    max_vertices : int
        Most rows (vertices) kept.  At least one track is always kept.
    rule : {"random", "longest"}
        ``"random"``: a uniformly random subset of tracks (``seed``), so the
        shown density is representative; ``"longest"``: longest tracks first
        (ties by track id), the most reliable ones.  Tracks are taken in that
        order until the next one would exceed ``max_vertices``.
    seed : int
        Seed of the random order (the result is deterministic).

    Returns
    -------
    shown : Tracks
        The kept rows, sorted by ``track_id`` then ``frame``.
    info : dict
        ``rule, seed, max_vertices, shown_tracks, total_tracks, shown_vertices,
        total_vertices, thinned``.

    Raises
    ------
    CycleULMError
        For an unknown rule or ``max_vertices`` below 1.
    """
    if rule not in THIN_RULES:
        raise CycleULMError(f"unknown thinning rule {rule!r}; choose one of {THIN_RULES}.")
    max_vertices = _positive_int(max_vertices, "max_vertices")
    ids, inverse, counts = np.unique(tracks["track_id"], return_inverse=True, return_counts=True)
    info = {"rule": rule, "seed": int(seed), "max_vertices": max_vertices,
            "total_tracks": int(len(ids)), "total_vertices": int(len(tracks))}
    if len(tracks) <= max_vertices:
        keep = np.ones(len(tracks), bool)
        info["thinned"] = False
    else:
        if rule == "random":
            order = np.random.default_rng(seed).permutation(len(ids))
        else:
            order = np.lexsort((ids, -counts))
        fits = np.cumsum(counts[order]) <= max_vertices
        n_keep = max(1, int(np.argmin(fits)) if not fits.all() else len(order))
        chosen = np.zeros(len(ids), bool)
        chosen[order[:n_keep]] = True
        keep = chosen[inverse]
        info["thinned"] = True
    shown = tracks.select(np.flatnonzero(keep))
    shown = shown.select(np.lexsort((shown["frame"], shown["track_id"])))
    info["shown_tracks"] = int(np.unique(shown["track_id"]).size)
    info["shown_vertices"] = int(len(shown))
    return shown, info


def show_tracks(viewer: napari.Viewer, tracks: Tracks, name: str, *,
                reference: Layer | None = None, mode: str = "replace",
                max_vertices: int = DEFAULT_MAX_VERTICES, rule: str = "random", seed: int = 0,
                source_path: str | Path | None = None,
                metadata: dict | None = None, **layer_kwargs) -> TracksLayer:
    """Show tracks as a Tracks layer, thinned to whole tracks when large.

    Above ``max_vertices`` rows, a deterministic subset of whole tracks is
    shown (see :func:`thin_tracks`); ``metadata[DISPLAY_KEY]`` records the
    rule and ``shown_tracks / total_tracks``, and :func:`full_table` returns
    the complete table (use it, not the layer, to render SR maps).

    Parameters
    ----------
    viewer : napari.Viewer
    tracks : Tracks
        ``track_id, frame, y, x`` in pixels of the ``reference`` grid.
    name : str
    reference : napari layer, optional
        The CEUS Image layer whose ``scale`` / ``translate`` are copied.
    mode : {"replace", "add numbered"}
    max_vertices : int
        Most vertices drawn (default 50,000).
    rule : {"random", "longest"}
    seed : int
    source_path : path, optional
        Where the full table lives on disk; recorded in the metadata.
    metadata : dict, optional
    **layer_kwargs
        Other Tracks keyword arguments (``visible``, ``tail_length``, ...).

    Returns
    -------
    napari.layers.Tracks

    Raises
    ------
    CycleULMError
        For a missing viewer or name, a table of the wrong type, an empty table
        (napari cannot show an empty Tracks layer), or bad thinning arguments.
    """
    _check_common(viewer, tracks, Tracks, name, mode)
    if len(tracks) == 0:
        raise CycleULMError("no tracks to show: the table is empty (lower 'min length'?).")
    shown, info = thin_tracks(tracks, max_vertices, rule=rule, seed=seed)
    info = {"kind": "tracks", "mode": "thinned" if info["thinned"] else "all", **info,
            "source_path": None if source_path is None else str(source_path)}
    geo = _geometry(reference, layer_kwargs)
    meta = {**(metadata or {}), DISPLAY_KEY: info}
    data, kw = tracks_kwargs(shown, name, metadata=meta, **geo, **layer_kwargs)
    kw.pop("name", None)
    _detach_previous(viewer, name, mode)
    layer = add_result(viewer, "tracks", data, name, mode=mode, **kw)
    _detach(layer)
    if info["thinned"]:
        setattr(layer, _CONTROLLER_ATTR, _Holder(tracks))
    return layer
