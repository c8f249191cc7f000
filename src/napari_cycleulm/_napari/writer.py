"""napari writer hooks: Image -> TIFF/NPY/zarr/PNG, Points and Tracks -> CSV.

All files are written atomically.  Coordinates are written in pixels as
``(frame, y, x)`` (points) and ``(track_id, frame, y, x)`` (tracks).  An
image's pixel size (see :func:`.widgets._layer_export.pixel_size_from_meta`) goes into the
TIFF resolution tags and sets the length of a PNG's scale bar.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import CycleULMError
from ..io import write_stack
from ..io.tables import Localisations, Tracks

log = logging.getLogger(__name__)


def write_image(path: str, data, meta: dict) -> list[str]:
    """Write an Image layer as a float32 stack or a colour PNG.

    Parameters
    ----------
    path : str
        Destination: ``.npy`` writes NPY; ``.zarr`` a zarr store chunked
        along time (:func:`io.write_stack`; a dask layer is written block by
        block); ``.tif``/``.tiff`` a float32 TIFF,
        calibrated (resolution tags in micrometres, ImageJ style) when the
        layer's pixel size is known; ``.png`` the 2-D image colour-mapped as
        napari shows it (the layer's colormap, contrast limits and gamma) with
        a white scale bar in mm when the pixel size is known.  Any other name
        gets ``.tif`` appended.
    data : array_like, shape (T, H, W) or (H, W)
        Layer data (pixel values as displayed; NaN is kept in TIFF / NPY and
        drawn black in PNG).
    meta : dict
        Layer attributes (``metadata``, ``scale``, ``units``, ``colormap``,
        ``contrast_limits``, ``gamma``, ``rgb``).

    Returns
    -------
    list of str
        The path written.

    Raises
    ------
    CycleULMError
        For a PNG of a stack of several frames or of an RGB layer.
    """
    from .widgets._layer_export import pixel_size_from_meta
    from ..export import write_map_tiff

    p = Path(path)
    ext = p.suffix.lower()
    if ext == ".png":
        return [str(_write_png(p, data, meta))]
    if ext not in (".tif", ".tiff", ".npy", ".zarr"):
        p = p.with_name(p.name + ".tif")
        ext = ".tif"
    px = pixel_size_from_meta(meta or {}, "image")
    plain = (
        isinstance(data, np.ndarray) and data.ndim in (2, 3) and data.nbytes < 2**31
        and not np.iscomplexobj(data) and (np.issubdtype(data.dtype, np.number) or data.dtype == bool)
    )
    if ext in (".tif", ".tiff") and px is not None and plain:
        write_map_tiff(p, data, px, info={"layer": (meta or {}).get("name")})
        return [str(p)]
    write_stack(p, data)
    return [str(p)]


def _colormap_colours(cmap):
    """The layer's colormap as a matplotlib name (when matplotlib has it) or an (N, 4) colour array."""
    import matplotlib

    if cmap is None:
        return "gray"
    if isinstance(cmap, str):
        name = cmap
        colormap = None
    else:
        from napari.utils.colormaps import Colormap

        colormap = Colormap(**cmap) if isinstance(cmap, dict) else cmap
        name = getattr(colormap, "name", None)
    if colormap is None:
        if name in matplotlib.colormaps:
            return name
        from napari.utils.colormaps import ensure_colormap

        colormap = ensure_colormap(name)
    return np.asarray(colormap.map(np.linspace(0.0, 1.0, 256)), dtype=float)


def _write_png(p: Path, data, meta: dict) -> Path:
    from .widgets._layer_export import pixel_size_from_meta
    from ..export import write_png

    meta = meta or {}
    name = meta.get("name") or p.stem
    if meta.get("rgb"):
        raise CycleULMError(
            f"layer {name!r} is RGB; save it as TIFF, or use File > Save Screenshot for a picture."
        )
    arr = np.asarray(data)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise CycleULMError(
            f"a PNG holds one 2-D image but layer {name!r} has shape {arr.shape}; save the stack "
            "as .tif, or make its maximum-intensity projection (Evaluate widget: Show MIPs) and "
            "save that layer as .png."
        )
    limits = meta.get("contrast_limits")
    return write_png(
        arr, p,
        cmap=_colormap_colours(meta.get("colormap")),
        gamma=float(meta.get("gamma", 1.0) or 1.0),
        contrast_limits=None if limits is None else tuple(float(v) for v in limits),
        scale_bar_mm="auto",
        pixel_size_um=pixel_size_from_meta(meta, "image"),
    )


def _features(meta: dict, n: int, skip) -> dict[str, np.ndarray]:
    """Numeric feature columns of length ``n`` from layer ``features``/``properties``."""
    source = meta.get("features")
    if source is None or len(source) == 0:
        source = meta.get("properties") or {}
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas DataFrame
        source = {c: np.asarray(source[c]) for c in source.columns}
    out = {}
    for name, values in dict(source).items():
        name = str(name)
        arr = np.asarray(values)
        if name in skip:
            log.warning("feature %r clashes with a coordinate column; not written", name)
            continue
        if arr.shape != (n,) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            log.warning("feature %r is not a numeric column of length %d; not written", name, n)
            continue
        out[name] = arr
    return out


def _csv_path(path: str) -> Path:
    p = Path(path)
    return p if p.suffix.lower() == ".csv" else p.with_name(p.name + ".csv")


def write_points(path: str, data, meta: dict) -> list[str]:
    """Write a Points layer as a CSV of localisations.

    Columns are ``frame, y, x`` (pixels) followed by the numeric columns of
    ``meta["features"]`` (or ``meta["properties"]``); non-numeric features are
    skipped.  2-D points ``(y, x)`` are written with ``frame = 0``; a
    fractional frame coordinate is rounded to the nearest frame.

    Parameters
    ----------
    path : str
        Destination CSV (``.csv`` is appended when missing).
    data : array_like, shape (N, 3) or (N, 2)
        Point coordinates ``(frame, y, x)`` or ``(y, x)``.
    meta : dict
        Layer attributes.

    Returns
    -------
    list of str
        The path written.

    Raises
    ------
    CycleULMError
        If the points are not 2-D or 3-D.
    """
    pts = np.asarray(data, dtype=np.float64)
    if pts.size == 0:
        pts = pts.reshape(0, 3)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise CycleULMError(
            f"points must have (frame, y, x) or (y, x) coordinates, got shape {pts.shape}."
        )
    if pts.shape[1] == 2:
        pts = np.column_stack([np.zeros(len(pts)), pts])
    cols = {"frame": np.rint(pts[:, 0]), "y": pts[:, 1], "x": pts[:, 2]}
    cols.update(_features(meta, len(pts), skip=cols))
    p = _csv_path(path)
    Localisations(cols).to_csv(p)
    return [str(p)]


def write_tracks(path: str, data, meta: dict) -> list[str]:
    """Write a Tracks layer as a CSV ``track_id, frame, y, x`` plus features.

    Parameters
    ----------
    path : str
        Destination CSV (``.csv`` is appended when missing).
    data : array_like, shape (N, 4)
        napari tracks data ``(track_id, frame, y, x)`` in pixels.
    meta : dict
        Layer attributes; numeric ``features`` / ``properties`` are written.

    Returns
    -------
    list of str
        The path written.

    Raises
    ------
    CycleULMError
        If the data are not ``(N, 4)``.
    """
    arr = np.asarray(data, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise CycleULMError(
            f"tracks must be (N, 4) rows of (track_id, frame, y, x), got shape {arr.shape}."
        )
    cols = {
        "track_id": np.rint(arr[:, 0]),
        "frame": np.rint(arr[:, 1]),
        "y": arr[:, 2],
        "x": arr[:, 3],
    }
    cols.update(_features(meta, len(arr), skip=cols))
    p = _csv_path(path)
    Tracks(cols).to_csv(p)
    return [str(p)]
