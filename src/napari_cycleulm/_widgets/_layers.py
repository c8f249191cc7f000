"""Conversions between napari layers and the library's arrays and tables."""

from __future__ import annotations

import numpy as np
import napari
from napari.layers import Image, Layer, Points, Shapes, Tracks as TracksLayer

from ..arrays import as_frames
from ..errors import CycleULMError
from ..psf import PSF
from ..tables import Localisations, Tracks

PSF_METADATA_KEY = "cycleulm_psf"


def _numeric_features(layer: Layer, skip) -> dict[str, np.ndarray]:
    """The layer's numeric feature columns, except those named in ``skip``."""
    out = {}
    for name in layer.features.columns:
        col = np.asarray(layer.features[name])
        if np.issubdtype(col.dtype, np.number) and name not in skip:
            out[str(name)] = col
    return out


def frames_from_layer(layer: Image | None, name: str = "CEUS layer") -> np.ndarray:
    """The (T, H, W) float32 frames of an Image layer, with clear errors."""
    if layer is None:
        raise CycleULMError(f"no {name} selected: open a CEUS stack or load the sample data first.")
    if getattr(layer, "rgb", False):
        raise CycleULMError(f"layer {layer.name!r} is RGB; CEUS data must be a grey-level stack.")
    if getattr(layer, "multiscale", False):
        raise CycleULMError(f"layer {layer.name!r} is multiscale; open the full-resolution stack instead.")
    return as_frames(np.asarray(layer.data), name=f"layer {layer.name!r}")


def localisations_from_points(layer: Points | None, reference: Layer | None = None) -> Localisations:
    """Localisations from a Points layer with (frame, y, x) coordinates and optional features.

    With ``reference`` (the CEUS Image layer), coordinates are mapped into its
    pixel grid through both layers' scale and translate.
    """
    if layer is None:
        raise CycleULMError("no Points layer selected.")
    data = np.asarray(layer.data, dtype=float)
    if len(data) == 0:
        raise CycleULMError(f"Points layer {layer.name!r} is empty: add points first.")
    if reference is not None and data.shape[1] in (2, 3):
        data = to_layer_coords(data, layer, reference)
    if data.shape[1] == 2:
        data = np.column_stack([np.zeros(len(data)), data])
    if data.shape[1] != 3:
        raise CycleULMError(
            f"Points layer {layer.name!r} has {data.shape[1]}-D points; expected (frame, y, x)."
        )
    cols = {"frame": np.round(data[:, 0]), "y": data[:, 1], "x": data[:, 2]}
    cols.update(_numeric_features(layer, skip=cols))
    return Localisations(cols)


def points_kwargs(locs: Localisations, name: str, **kwargs) -> tuple[np.ndarray, dict]:
    """Layer data and keyword arguments for a Points layer of localisations."""
    features = {n: locs[n] for n in locs.names if n not in ("frame", "y", "x")}
    kw = dict(name=name, features=features, size=1.5, face_color="cyan", border_width=0)
    kw.update(kwargs)
    return locs.positions, kw


def tracks_from_layer(layer: TracksLayer | None) -> Tracks:
    """Tracks from a napari Tracks layer (track_id, frame, y, x) with features."""
    if layer is None:
        raise CycleULMError("no Tracks layer selected: run the Track widget first.")
    data = np.asarray(layer.data, dtype=float)
    if len(data) == 0 or data.shape[1] != 4:
        raise CycleULMError(f"Tracks layer {layer.name!r} must hold (track_id, frame, y, x) rows.")
    cols = {"track_id": data[:, 0], "frame": data[:, 1], "y": data[:, 2], "x": data[:, 3]}
    cols.update(_numeric_features(layer, skip=cols))
    return Tracks(cols)


def tracks_kwargs(tracks: Tracks, name: str, **kwargs) -> tuple[np.ndarray, dict]:
    """Layer data and keyword arguments for a napari Tracks layer."""
    data = np.column_stack([tracks["track_id"], tracks["frame"], tracks["y"], tracks["x"]])
    features = {n: tracks[n] for n in tracks.names if n not in ("track_id", "frame", "y", "x")}
    kw = dict(name=name, features=features, tail_length=20, tail_width=1.5)
    kw.update(kwargs)
    return data, kw


def psf_from_layer(layer: Layer | None) -> PSF:
    """The PSF stored in a layer's metadata by the PSF widget."""
    if layer is None:
        raise CycleULMError(
            "no PSF: estimate one with the 'Estimate PSF' widget (or choose 'auto')."
        )
    payload = layer.metadata.get(PSF_METADATA_KEY)
    if payload is None:
        raise CycleULMError(
            f"layer {layer.name!r} holds no PSF; choose the layer made by the 'Estimate PSF' widget."
        )
    return PSF.from_dict(payload)


def sr_layer_kwargs(reference: Layer | None, upsampling: int) -> dict:
    """Scale and translate that make an SR map (upsampled x ``upsampling``) overlay ``reference``.

    SR pixel ``k`` sits at original coordinate ``(k - (u - 1) / 2) / u`` because
    pixel centres are at integer coordinates.
    """
    u = float(upsampling)
    scale = np.ones(2)
    translate = np.zeros(2)
    if reference is not None:
        scale = np.asarray(reference.scale[-2:], float)
        translate = np.asarray(reference.translate[-2:], float)
    return dict(scale=scale / u, translate=translate - scale * (u - 1) / (2 * u))


GENERATED_KEY = "cycleulm_generated"
"""Metadata flag on every layer CycleULM makes; only such layers are ever replaced."""

RERUN_MODES = ("replace", "add numbered")
"""What running a stage again does to its previous result layer (a user choice)."""


def result_name(source: str, what: str, method: str | None = None) -> str:
    """The conventional name of a result layer: ``"<source> <what> [<method>]"``.

    Examples: ``"CEUS sample MB-only"``, ``"CEUS sample localisations [ncc]"``,
    ``"CEUS sample SR density [cycleulm-loc]"``.
    """
    return f"{source} {what}" + (f" [{method}]" if method else "")


def _numbered(viewer: napari.Viewer, name: str) -> str:
    k = 2
    while f"{name} ({k})" in viewer.layers:
        k += 1
    return f"{name} ({k})"


def add_result(viewer: napari.Viewer, kind: str, data, name: str, *, mode: str = "replace",
               **kwargs) -> Layer:
    """Add a result layer, or update the previous result of the same name.

    Parameters
    ----------
    kind : {"image", "points", "tracks", "shapes"}
    name : str
        The conventional name (see :func:`result_name`).
    mode : {"replace", "add numbered"}
        ``"replace"`` updates a layer of that name and type in place when
        CycleULM made it (its metadata holds :data:`GENERATED_KEY`), keeping
        the user's display settings; ``"add numbered"`` always adds a new layer
        named ``"<name> (2)"``, ``"<name> (3)"``, ...  A layer the user made is
        never changed or removed: a clash with one adds a numbered layer.
    **kwargs
        Layer keyword arguments; ``metadata`` is stored with the flag added.
    """
    if mode not in RERUN_MODES:
        raise CycleULMError(f"unknown re-run mode {mode!r}; choose one of {RERUN_MODES}.")
    cls = {"image": Image, "points": Points, "tracks": TracksLayer, "shapes": Shapes}[kind]
    kwargs.pop("name", None)
    kwargs["metadata"] = {**kwargs.get("metadata", {}), GENERATED_KEY: True}
    if name in viewer.layers:
        layer = viewer.layers[name]
        ours = isinstance(layer, cls) and layer.metadata.get(GENERATED_KEY, False)
        if mode == "replace" and ours:
            if "features" in kwargs and kind in ("points", "tracks"):
                # Data and features must change together or napari complains about lengths.
                layer.data = data
                layer.features = kwargs["features"]
            else:
                layer.data = data
            for key in ("scale", "translate", "metadata"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            return layer
        name = _numbered(viewer, name)
    return getattr(viewer, f"add_{kind}")(data, name=name, **kwargs)


def add_or_replace(viewer: napari.Viewer, kind: str, data, name: str, **kwargs) -> Layer:
    """:func:`add_result` with ``mode="replace"`` (kept for the stage widgets)."""
    return add_result(viewer, kind, data, name, mode="replace", **kwargs)


def to_layer_coords(points: np.ndarray, source: Layer, target: Layer | None) -> np.ndarray:
    """Map (..., y, x) data coordinates of ``source`` into ``target``'s data coordinates.

    Uses each layer's scale and translate (world = data * scale + translate),
    so points clicked on a layer with another scale land on the right pixels of
    the CEUS image.  Trailing axes are aligned, as napari does.
    """
    pts = np.asarray(points, dtype=float)
    if target is None or len(pts) == 0:
        return pts
    d = pts.shape[1]
    s_src = np.asarray(source.scale, float)[-d:]
    t_src = np.asarray(source.translate, float)[-d:]
    s_dst = np.asarray(target.scale, float)[-d:]
    t_dst = np.asarray(target.translate, float)[-d:]
    if len(s_dst) < d:  # the target has fewer axes: keep the leading source axes as they are
        pad = d - len(s_dst)
        s_dst = np.concatenate([s_src[:pad], s_dst])
        t_dst = np.concatenate([t_src[:pad], t_dst])
    return (pts * s_src + t_src - t_dst) / s_dst
