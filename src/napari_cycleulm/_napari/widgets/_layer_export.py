"""napari layers -> files: a layer's state read as plain data, exported with the core's writers.

What the Export widget, the Evaluate widget and the writer hook need to know
about napari layers lives here, not in the headless core:

* :func:`pixel_size_from_meta` / :func:`frame_rate_from_meta`: a layer's
  physical pixel size and frame rate from its state (``units``, ``scale``,
  ``metadata`` as in ``layer.as_layer_data_tuple()[1]``);
* :class:`LayerExport`: one layer snapshotted as plain data (on the UI thread);
* :func:`iter_export_layers` / :func:`export_layers`: those snapshots written
  with :mod:`napari_cycleulm.export` (calibrated TIFF, PNG with a scale bar,
  CSV) and an ``export.json`` manifest.

Nothing here imports Qt or napari itself, so it runs in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CycleULMError
from ...evaluate import mip
from ...export import (
    FORMATS,
    ExportReport,
    _check_formats,
    _LENGTH_UM,
    _scale_bar_length_px,
    _valid,
    _write_table,
    map_style,
    safe_filename,
    write_map_tiff,
    write_png,
)
from ...progress import Progress, drive

__all__ = ["LayerExport", "export_layers", "frame_rate_from_meta", "iter_export_layers", "pixel_size_from_meta"]


# --------------------------------------------------------------------------
# A layer's physical units
# --------------------------------------------------------------------------
def _meta_value(meta: Mapping, key: str):
    """``meta[key]``, else ``meta["cycleulm"]["params"][key]``, else ``meta["cycleulm"][key]``."""
    if meta.get(key) is not None:
        return meta[key]
    cyc = meta.get("cycleulm")
    if isinstance(cyc, Mapping):
        params = cyc.get("params")
        if isinstance(params, Mapping) and params.get(key) is not None:
            return params[key]
        if cyc.get(key) is not None:
            return cyc[key]
    return None


def pixel_size_from_meta(layer_state: Mapping, kind: str = "image") -> float | None:
    """Size of one data pixel in micrometres, from a napari layer's state, or None.

    Rules, in order:

    1. The layer's ``units`` name a length (e.g. ``micrometer``): the pixel
       size is ``scale[-1]`` in that unit.
    2. An ``"image"`` with ``metadata["sr_pixel_size_um"]`` (an SR map made
       by the widgets): that value.
    3. ``metadata["pixel_size_um"]`` (or ``metadata["cycleulm"]["params"]
       ["pixel_size_um"]``) is the CEUS pixel size; for an ``"image"`` whose
       metadata also holds an ``upsampling`` (an SR map) it is divided by it.

    Parameters
    ----------
    layer_state : mapping
        ``layer.as_layer_data_tuple()[1]`` (keys ``metadata``, ``scale``,
        ``units``) or just ``{"metadata": ...}``.
    kind : {"image", "points", "tracks"}
        Layer type; only images are SR maps.
    """
    units = layer_state.get("units")
    scale = layer_state.get("scale")
    if units is not None and scale is not None and len(units) and len(scale):
        factor = _LENGTH_UM.get(str(units[-1]).strip().lower())
        if factor is not None and _valid(scale[-1]):
            return float(scale[-1]) * factor
    meta = layer_state.get("metadata") or {}
    if kind == "image" and _valid(meta.get("sr_pixel_size_um")):
        return float(meta["sr_pixel_size_um"])
    px = _valid(_meta_value(meta, "pixel_size_um"))
    if px is None:
        return None
    if kind == "image":
        u = _valid(_meta_value(meta, "upsampling"))
        if u is not None:
            return px / u
    return px


def frame_rate_from_meta(layer_state: Mapping) -> float | None:
    """Frame rate (Hz) from ``metadata["frame_rate_hz"]`` (or the CycleULM params), or None."""
    return _valid(_meta_value(layer_state.get("metadata") or {}, "frame_rate_hz"))


# --------------------------------------------------------------------------
# Layers as plain data (the widget snapshots them on the UI thread)
# --------------------------------------------------------------------------
@dataclass
class LayerExport:
    """One layer to export, as plain data.

    Attributes
    ----------
    name : str
        Layer name (file stem via :func:`safe_filename`).
    kind : {"image", "points", "tracks"}
        Layer type.
    data : numpy.ndarray or PointTable
        Image data ``(H, W)`` / ``(T, H, W)``, or a Localisations / Tracks table.
    pixel_size_um : float, optional
        Size of one data pixel, micrometres (:func:`pixel_size_from_meta`).
    frame_rate_hz : float, optional
        For physical CSV columns.
    cmap : str, Colormap or (N, 4) array
        Display colormap (images).
    contrast_limits : (float, float), optional
        Display range (images); None: automatic.
    gamma : float
        Display gamma (images).
    """

    name: str
    kind: str
    data: object
    pixel_size_um: float | None = None
    frame_rate_hz: float | None = None
    cmap: object = "gray"
    contrast_limits: tuple[float, float] | None = None
    gamma: float = 1.0


def iter_export_layers(
    items: Sequence[LayerExport],
    out_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = FORMATS,
    png_contrast: str = "display",
    scale_bar_mm: float | str | None = "auto",
    physical: bool = False,
) -> Generator[Progress, None, ExportReport]:
    """Export layers one by one (a progress generator; see :func:`export_layers`).

    Images become ``<name>.tif`` (float32, calibrated; stacks stay stacks)
    and ``<name>.png`` (a stack's PNG is its maximum-intensity projection,
    ``<name> MIP.png``); Points and Tracks become ``<name>.csv``.  Formats
    that do not apply to a layer are skipped.

    Parameters
    ----------
    items : sequence of LayerExport
        What to export.
    out_dir : str or PathLike
        Output folder (created).
    formats : sequence of {"tif", "png", "csv"}
        Formats to write.
    png_contrast : {"display", "auto"}
        ``"display"``: the layer's colormap, contrast limits and gamma (what
        napari shows); ``"auto"``: :func:`napari_cycleulm.render.to_png`'s percentile range
        and the map-type gamma of :func:`map_style`, with the layer's colormap.
    scale_bar_mm : float, "auto" or None
        PNG scale bar (see :func:`napari_cycleulm.export.write_png`).
    physical : bool
        Add physical-unit columns to CSVs.
    """
    fmts = _check_formats(formats)
    if png_contrast not in ("display", "auto"):
        raise CycleULMError(f"png_contrast must be 'display' or 'auto', got {png_contrast!r}.")
    if not items:
        raise CycleULMError("nothing to export: choose at least one layer.")
    report = ExportReport(Path(out_dir))
    stems: dict[str, str] = {}
    for it in items:
        stem = safe_filename(it.name)
        if stem in stems:
            raise CycleULMError(
                f"layers {stems[stem]!r} and {it.name!r} give the same file name {stem!r}; rename one."
            )
        stems[stem] = it.name
    total = len(items)
    yield Progress(0, total, "export")
    for i, it in enumerate(items):
        stem = safe_filename(it.name)
        if it.kind == "image":
            _export_image(it, stem, fmts, png_contrast, scale_bar_mm, report)
        elif it.kind in ("points", "tracks"):
            if "csv" in fmts:
                report.files.append(_write_table(it.data, report.out_dir / f"{stem}.csv", it.name,
                                                 it.pixel_size_um, it.frame_rate_hz, physical,
                                                 report.notes))
        else:
            raise CycleULMError(f"layer {it.name!r} is a {it.kind}; export takes image, points and tracks.")
        yield Progress(i + 1, total, "export")
    if not report.files:
        raise CycleULMError(
            "no file was written: the chosen formats do not apply to the chosen layers "
            "(TIFF / PNG for images, CSV for points and tracks)."
        )
    report.write_manifest()
    return report


def _export_image(it: LayerExport, stem, fmts, png_contrast, scale_bar_mm, report) -> None:
    arr = np.asarray(it.data)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise CycleULMError(f"layer {it.name!r} has shape {arr.shape}; only 2-D maps and (T, H, W) stacks export.")
    px = it.pixel_size_um
    info = {"layer": it.name}
    if "tif" in fmts:
        path = write_map_tiff(report.out_dir / f"{stem}.tif", arr, px, info=info)
        report.files.append({"path": str(path), "source": it.name, "format": "tif", "pixel_size_um": px})
    if "png" in fmts:
        img, suffix = (arr, "") if arr.ndim == 2 else (mip(arr), " MIP")
        path = report.out_dir / (f"{stem}.png" if arr.ndim == 2 else f"{stem}_MIP.png")
        if px is None:  # a layer without pixel size still exports, without a bar
            bar = None
            if scale_bar_mm not in (None, 0):
                report.notes.append(f"{it.name}: no pixel size known, PNG written without a scale bar.")
        else:
            bar, _ = _scale_bar_length_px(scale_bar_mm, px, img.shape[-1])
        if png_contrast == "display":
            write_png(img, path, cmap=it.cmap, gamma=it.gamma, contrast_limits=it.contrast_limits,
                      scale_bar_mm=bar, pixel_size_um=px)
            g = it.gamma
        else:
            _, g, pct = map_style(it.name)
            write_png(img, path, cmap=it.cmap, gamma=g, vmax_percentile=pct, scale_bar_mm=bar,
                      pixel_size_um=px)
        report.files.append({"path": str(path), "source": it.name + suffix, "format": "png",
                             "pixel_size_um": px, "scale_bar_mm": bar, "gamma": g})


def export_layers(items: Sequence[LayerExport], out_dir: str | os.PathLike, **kwargs) -> ExportReport:
    """Export layers at once (see :func:`iter_export_layers` for the parameters)."""
    return drive(iter_export_layers(items, out_dir, **kwargs))
