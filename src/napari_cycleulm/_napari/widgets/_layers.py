"""Conversions between napari layers and the library's arrays and tables."""

from __future__ import annotations

import re

import numpy as np
import napari
from napari.layers import Image, Layer, Points, Shapes, Tracks as TracksLayer

from ... import __version__
from ..._json import jsonable
from ...arrays import as_frames
from ...errors import CycleULMError
from ...psf import PSF
from ...io.tables import Localisations, Tracks

PSF_METADATA_KEY = "cycleulm_psf"

#: Metadata flag of stacks already in the library's intensity units (see :mod:`napari_cycleulm.stages`):
#: a CycleULM denoised stack; later stages use them without rescaling.
NORMALISED_KEY = "cycleulm_normalised"

#: Result stacks larger than this are kept in a memory-mapped file instead of RAM.
IN_MEMORY_LIMIT_BYTES = 1 << 30


def _numeric_features(layer: Layer, skip) -> dict[str, np.ndarray]:
    """The layer's numeric feature columns, except those named in ``skip``."""
    out = {}
    for name in layer.features.columns:
        col = np.asarray(layer.features[name])
        if np.issubdtype(col.dtype, np.number) and name not in skip:
            out[str(name)] = col
    return out


def stack_from_layer(layer: Image | None, name: str = "CEUS layer"):
    """The (T, H, W) data of an Image layer *as it is*: a lazily opened stack stays lazy.

    The streaming core reads it block by block (``data[start:stop]``), so a
    25,000-frame acquisition opened from disk (a LazyStack, dask or zarr
    array, or a memory map) is never loaded whole.  Shape and dtype are
    checked here; values are checked block by block as they are read.

    Raises
    ------
    CycleULMError
        No layer, an RGB or multiscale layer, a non-numeric or complex dtype,
        or data that is not a (T, H, W) stack.
    """
    if layer is None:
        raise CycleULMError(f"no {name} selected: open a CEUS stack or load the sample data first.")
    if getattr(layer, "rgb", False):
        raise CycleULMError(f"layer {layer.name!r} is RGB; CEUS data must be a grey-level stack.")
    if getattr(layer, "multiscale", False):
        raise CycleULMError(f"layer {layer.name!r} is multiscale; open the full-resolution stack instead.")
    data = layer.data
    dtype = np.dtype(getattr(data, "dtype", np.float32))
    if np.issubdtype(dtype, np.complexfloating):
        raise CycleULMError(
            f"layer {layer.name!r} holds complex (IQ) data; run the SVD clutter filter "
            "(Denoise tool) or take its magnitude first."
        )
    if not (np.issubdtype(dtype, np.number) or dtype == bool):
        raise CycleULMError(f"layer {layer.name!r} must be numeric, got dtype {dtype}.")
    if data.ndim == 2:
        return np.asarray(data)[None]  # one image: small by nature
    if data.ndim != 3 or 0 in data.shape:
        raise CycleULMError(
            f"layer {layer.name!r} must be a (frames, height, width) stack, got shape {tuple(data.shape)}."
        )
    return data


def result_buffer(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An output stack as large as its input: in memory when small, else a temporary memory map.

    A stage that turns a 25,000-frame acquisition into another stack (denoised,
    MB-only) writes it block by block into this buffer, so neither the input nor
    the output has to fit in memory.  The file lives in the system's temporary
    folder and is removed when the array is released.
    """
    import tempfile

    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes <= IN_MEMORY_LIMIT_BYTES:
        return np.empty(shape, dtype)
    handle = tempfile.NamedTemporaryFile(prefix="cycleulm_", suffix=".npy")
    arr = np.lib.format.open_memmap(handle.name, mode="w+", dtype=dtype, shape=tuple(shape))
    arr._cycleulm_file = handle  # noqa: SLF001 - keeps the file until the array is freed
    return arr


def frames_from_layer(layer: Image | None, name: str = "CEUS layer", frames=None) -> np.ndarray:
    """Some frames of an Image layer as a checked float32 (T, H, W) array.

    Only the frames asked for are read (``frames``: a slice or frame indices;
    default all of them, for stages that need the whole stack in memory).
    """
    data = stack_from_layer(layer, name)
    if frames is not None:
        data = data[frames] if isinstance(frames, slice) else data[np.asarray(frames, dtype=np.int64)]
    return as_frames(np.asarray(data), name=f"layer {layer.name!r}")


def localisations_from_points(layer: Points | None, reference: Layer | None = None) -> Localisations:
    """Localisations from a Points layer with (frame, y, x) coordinates and optional features.

    With ``reference`` (the CEUS Image layer), coordinates are mapped into its
    pixel grid through both layers' scale and translate.
    """
    if layer is None:
        raise CycleULMError("no Points layer selected.")
    from ._display import full_table  # _display builds on this module

    full = full_table(layer)
    if isinstance(full, Localisations):
        # A windowed layer holds only some frames: use all of them (in its source's pixel grid).
        return full
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
    from ._display import full_table  # _display builds on this module

    full = full_table(layer)
    if isinstance(full, Tracks):
        return full  # a thinned layer shows only some tracks: use all of them
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


def psf_or_auto(psf_layer: Layer | None, stack, source: Layer) -> tuple[PSF, str]:
    """The PSF of a PSF layer, else the pipelines' automatic estimate, and where it came from.

    The estimate is the pipelines' own (``psf="auto"``): isolated bubbles of
    the first :data:`~napari_cycleulm.stages.CALIBRATION_FRAMES` frames of
    ``stack``, with ``source``'s pixel size.

    Returns
    -------
    (PSF, str)
        The PSF and the PSF layer's name or ``"auto"``.

    Raises
    ------
    CycleULMError
        When too few isolated bubbles are found for the estimate.
    """
    from ...psf import estimate_psf_auto
    from ...stages import calibration_frames

    if psf_layer is not None and PSF_METADATA_KEY in psf_layer.metadata:
        return psf_from_layer(psf_layer), psf_layer.name
    est = estimate_psf_auto(calibration_frames(stack), pixel_size_um=source.metadata.get("pixel_size_um"))
    return est.psf, "auto"


def psf_params(psf: PSF | None) -> dict | None:
    """The numbers of a PSF worth recording in a result's parameters (no kernels)."""
    if psf is None:
        return None
    return jsonable({
        "sigma_y_px": psf.sigma_y_px, "sigma_x_px": psf.sigma_x_px, "theta_rad": psf.theta_rad,
        "fwhm_y_px": psf.fwhm_y_px, "fwhm_x_px": psf.fwhm_x_px, "n_bubbles": psf.n_bubbles,
        "pixel_size_um": psf.pixel_size_um,
    })


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


def add_sr_layers(viewer: napari.Viewer, maps, origin: str, method: str | None, reference: Layer | None,
                  metadata: dict, *, mode: str = "replace", direction: bool = False) -> list[Layer]:
    """Add the SR maps of a run as ``[method] <origin> SR density / velocity [/ direction]``.

    Parameters
    ----------
    maps : render.SRMaps
        The maps (upsampled grid).
    reference : Layer or None
        The CEUS layer the maps must overlay (:func:`sr_layer_kwargs`).
    metadata : dict
        The run's :func:`result_metadata`; ``upsampling``, ``sr_pixel_size_um``
        and (velocity, direction) ``unit`` are added.
    direction : bool
        Also add the flow direction map (hidden, ``twilight``).

    Returns
    -------
    list of Layer
        Density (``hot``, additive), velocity (``turbo``, hidden) and direction layers.
    """
    geo = sr_layer_kwargs(reference, maps.upsampling)
    meta = {**metadata, "upsampling": int(maps.upsampling), "sr_pixel_size_um": maps.pixel_size_um}
    layers = [
        add_result(viewer, "image", maps.density, result_name(origin, "SR density", method), mode=mode,
                   colormap="hot", blending="additive", metadata=meta, **geo),
        add_result(viewer, "image", maps.velocity, result_name(origin, "SR velocity", method), mode=mode,
                   colormap="turbo", visible=False, metadata={**meta, "unit": maps.velocity_unit}, **geo),
    ]
    if direction:
        layers.append(add_result(viewer, "image", maps.direction, result_name(origin, "SR direction", method),
                                 mode=mode, colormap="twilight", visible=False,
                                 metadata={**meta, "unit": "rad"}, **geo))
    return layers


GENERATED_KEY = "cycleulm_generated"
"""Metadata flag on every layer CycleULM makes; only such layers are ever replaced."""

RERUN_MODES = ("replace", "add numbered")
"""What running a stage again does to its previous result layer (a user choice)."""


#: The SR maps of a run (:func:`add_sr_layers`), by the words that name them.
SR_MAPS = ("SR density", "SR velocity", "SR direction")

#: Results made by a method (a localisation method or a pipeline): their names carry it as a tag.
METHOD_RESULTS = ("localisations", "tracks") + SR_MAPS


def result_name(source: str, what: str, method: str | None = None) -> str:
    """The conventional name of a result layer: ``"[<method>] <source> <what>"``.

    Without a method (same-grid stacks, PSFs) the name is ``"<source> <what>"``.
    Examples: ``"CEUS sample MB-only"``, ``"[ncc] CEUS sample localisations"``,
    ``"[cycleulm-loc] CEUS sample SR density"``; :func:`parse_result_name`
    reads them back.

    The method comes first and what the layer holds last because napari's
    layer list elides a long name in the middle, keeping its start and end:
    ``"[cycleulm-de…ple SR density"``.  After several runs every layer still
    shows its pipeline and what it is; only the source, the same for all of
    them, is hidden.
    """
    core = f"{source} {what}"
    return f"[{method}] {core}" if method else core


_RESULT_NAME = re.compile(
    r"^\[(?P<method>[^\]]+)\] (?P<source>.+) (?P<what>"
    + "|".join(re.escape(w) for w in METHOD_RESULTS)
    + r")(?: \(\d+\))?$"
)


def parse_result_name(name: str) -> tuple[str, str, str] | None:
    """``(source, what, method)`` of a :func:`result_name` with a method, else None.

    ``what`` is one of :data:`METHOD_RESULTS`; a ``" (2)"`` added by the
    *add numbered* re-run mode is ignored:
    ``"[ncc] CEUS tracks (2)"`` -> ``("CEUS", "tracks", "ncc")``.
    """
    m = _RESULT_NAME.match(str(name))
    return (m["source"], m["what"], m["method"]) if m else None


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
    """:func:`add_result` with ``mode="replace"`` (for layers with no re-run choice, e.g. live previews)."""
    return add_result(viewer, kind, data, name, mode="replace", **kwargs)


#: Metadata key of the provenance record on every result layer (see :func:`result_metadata`).
RESULT_KEY = "cycleulm"

#: Source-layer metadata copied onto every result so that units survive the chain of stages.
UNIT_KEYS = ("pixel_size_um", "frame_rate_hz")


def origin_of(layer: Layer | None) -> tuple[str | None, str | None]:
    """``(origin, method)``: the CEUS layer name a result derives from, and the method tag.

    Read from the provenance record (:func:`result_metadata`) when there is
    one, else from a conventional name (``"[<method>] <origin> localisations"``,
    :func:`parse_result_name`), else the layer is its own origin with no
    method.  Tracks made from a user's ``clicks`` Points layer are therefore
    ``"clicks tracks"``.
    """
    if layer is None:
        return None, None
    record = layer.metadata.get(RESULT_KEY)
    if isinstance(record, dict) and record.get("origin"):
        return str(record["origin"]), record.get("method")
    parsed = parse_result_name(layer.name)
    if parsed is not None:
        return parsed[0], parsed[2]
    return layer.name, None


def is_sr_map(layer: Layer) -> bool:
    """An SR map made by CycleULM: its metadata records the upsampling, else its name says so."""
    if not isinstance(layer, Image):
        return False
    if isinstance(layer.metadata.get(RESULT_KEY), dict) and "upsampling" in layer.metadata:
        return True
    parsed = parse_result_name(layer.name)
    return parsed is not None and parsed[1] in SR_MAPS


def result_metadata(stage: str, source: Layer | None, params: dict | None = None, *,
                    origin: str | None = None, method: str | None = None, **extra) -> dict:
    """Metadata of a result layer: provenance record plus the source's units.

    Parameters
    ----------
    stage : str
        What made the layer (``"localise"``, ``"pipeline"``...).
    source : Layer or None
        The layer the stage read.
    params : dict, optional
        Every parameter used (numpy values are converted to JSON types).
    origin, method : str, optional
        The CEUS layer at the start of the chain and the method tag; default:
        :func:`origin_of` ``(source)``.
    **extra
        More top-level keys (e.g. ``unit``, ``mb_only``).

    Returns
    -------
    dict
        ``{"cycleulm": {"stage", "source", "origin", "method", "params",
        "version"}, "pixel_size_um", "frame_rate_hz", **extra}`` (units only when
        the source knows them).
    """
    src_origin, src_method = origin_of(source)
    meta = {
        RESULT_KEY: {
            "stage": stage,
            "source": None if source is None else source.name,
            "origin": origin if origin is not None else src_origin,
            "method": method if method is not None else src_method,
            "params": jsonable(dict(params or {})),
            "version": __version__,
        }
    }
    if source is not None:
        for key in UNIT_KEYS:
            if source.metadata.get(key) is not None:
                meta[key] = jsonable(source.metadata[key])
    meta.update(extra)
    return meta


def geometry_of(source: Layer | None) -> dict:
    """``scale`` and ``translate`` of ``source``, for results on the same grid (Points, Tracks, stacks)."""
    if source is None:
        return {}
    return dict(scale=np.array(source.scale, float), translate=np.array(source.translate, float))


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
