"""Export of maps and tables for papers and other software (headless).

* Maps (SR density / velocity / direction, power Doppler, MIPs) to **TIFF**:
  float32, with the pixel size in the TIFF resolution tags (ImageJ / Fiji
  convention: pixels per micrometre, unit ``um``) and a JSON ``Info`` record,
  so Fiji, napari and :func:`read_map_tiff` show physical sizes.
* Maps to **PNG**: colour-mapped with a scale bar in mm, either with
  :func:`render.to_png`'s automatic range (percentile + gamma) or "as
  displayed" in napari (colormap, contrast limits, gamma): :func:`write_png`.
* Localisations and tracks to **CSV** (:meth:`tables.PointTable.to_csv`),
  optionally with physical-unit columns (:func:`with_physical_units`).
* A whole ``cycleulm run`` folder (or loose files): :func:`export_run`, used by
  ``cycleulm export``.  napari layers are exported by the Export widget with
  these functions (``_napari/widgets/_layer_export.py``: reading a layer's state is
  napari's business, not the core's).

Every file is written atomically; each export also writes an ``export.json``
manifest (what was written from what, with pixel sizes and colormaps).
Nothing here imports Qt or napari.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._atomic import atomic_path, staged_dir, write_text_atomic
from ._outputs import check_writable_folder
from ._json import jsonable
from .errors import CycleULMError
from .evaluate import mip as _mip  # the one MIP (NaN ignored); `mip` is an export_run flag
from .render.sr_maps import SRMaps, colormap_from, to_png, write_normalised_png
from .io.tables import PointTable, Tracks

__all__ = [
    "ExportReport",
    "FORMATS",
    "MAP_STYLES",
    "MapFile",
    "export_maps",
    "export_run",
    "export_tables",
    "map_style",
    "nice_scale_bar_mm",
    "read_map_tiff",
    "safe_filename",
    "with_physical_units",
    "write_map_tiff",
    "write_png",
]

#: Output formats: calibrated float32 TIFF, colour PNG with scale bar, CSV tables.
FORMATS = ("tif", "png", "csv")

#: Colormap, display gamma and top percentile per kind of map (matched on the name).
MAP_STYLES: dict[str, tuple[str, float, float]] = {
    "density": ("hot", 0.5, 99.5),
    "count": ("hot", 0.5, 99.5),
    "axial": ("RdBu_r", 1.0, 99.5),  # signed: towards (+) / away from the probe
    "velocity": ("turbo", 1.0, 99.5),
    "direction": ("twilight", 1.0, 100.0),  # cyclic, -pi..pi
    "doppler": ("gray", 0.5, 99.5),
    "mb-only": ("magma", 1.0, 99.9),
}
_DEFAULT_STYLE = ("gray", 1.0, 99.9)

#: Micrometres per unit for the length units napari / pint may report.
_LENGTH_UM = {
    "micrometer": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0, "μm": 1.0,
    "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "cm": 1e4,
    "meter": 1e6, "m": 1e6, "nanometer": 1e-3, "nm": 1e-3,
}


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------
def _positive_or_none(name: str, value) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise CycleULMError(f"{name} must be a positive number, got {value!r}.") from None
    if not (math.isfinite(v) and v > 0):
        raise CycleULMError(f"{name} must be a positive number, got {value!r}.")
    return v


def _valid(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def nice_scale_bar_mm(width_px: int, pixel_size_um: float, fraction: float = 0.2) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k mm) of at most ``fraction`` of the width.

    Parameters
    ----------
    width_px : int
        Image width in pixels.
    pixel_size_um : float
        Size of one pixel, micrometres.
    fraction : float
        Largest bar length as a fraction of the image width.

    Returns
    -------
    float
        Bar length in millimetres.
    """
    px = _positive_or_none("pixel_size_um", pixel_size_um)
    target = width_px * px / 1000.0 * fraction
    if not target > 0:
        raise CycleULMError(f"width_px must be positive, got {width_px!r}.")
    k = math.floor(math.log10(target))
    best = 10.0**k
    for m in (2.0, 5.0, 10.0):
        if m * 10.0**k <= target * (1 + 1e-9):
            best = m * 10.0**k
    return float(f"{best:.6g}")


def map_style(name: str) -> tuple[str, float, float]:
    """``(colormap, gamma, vmax_percentile)`` for a map, chosen from its name.

    ``sr_density`` / ``count`` -> ``hot`` with gamma 0.5, ``velocity`` ->
    ``turbo``, ``axial_velocity`` -> ``RdBu_r``, ``direction`` -> ``twilight``,
    ``power_doppler`` -> ``gray`` (see :data:`MAP_STYLES`); anything else
    ``gray``.
    """
    low = str(name).lower()
    for key, style in MAP_STYLES.items():
        if key in low:
            return style
    return _DEFAULT_STYLE


def safe_filename(name: str) -> str:
    """A file-name stem from a layer name: ``"[ncc] CEUS SR density"`` -> ``"ncc_CEUS_SR_density"``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._")
    return stem or "layer"


# --------------------------------------------------------------------------
# TIFF
# --------------------------------------------------------------------------
@dataclass
class MapFile:
    """A map read back by :func:`read_map_tiff`."""

    data: np.ndarray
    pixel_size_um: float | None
    info: dict = field(default_factory=dict)


def write_map_tiff(path: str | os.PathLike, image, pixel_size_um: float | None = None, *,
                   info: Mapping | None = None) -> Path:
    """Write a 2-D map (or a ``(T, H, W)`` stack) as float32 TIFF with its pixel size.

    The file follows the ImageJ hyperstack convention (``resolution`` in
    pixels per micrometre, unit ``um``; Fiji and tifffile read it), with a
    JSON ``Info`` record holding ``pixel_size_um`` and ``info``.  Stacks of
    2 GiB or more are written as BigTIFF with standard resolution tags (pixels
    per centimetre) instead.  NaN values are kept.

    Parameters
    ----------
    path : str or PathLike
        Destination ``.tif`` / ``.tiff``; written atomically.
    image : array_like, shape (H, W) or (T, H, W)
        Map or stack (converted to float32).
    pixel_size_um : float, optional
        Size of one pixel of ``image``, micrometres.
    info : mapping, optional
        Extra JSON-able facts (unit, colormap, source...).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    CycleULMError
        On a bad extension, non-numeric / complex data, a shape that is not
        2-D / 3-D, or a non-positive pixel size.
    """
    import tifffile

    p = Path(path)
    if p.suffix.lower() not in (".tif", ".tiff"):
        raise CycleULMError(f"cannot write a TIFF to {str(p)!r}; use a .tif or .tiff file name.")
    arr = np.asarray(image)
    if np.iscomplexobj(arr) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise CycleULMError(f"the map must be real numbers, got dtype {arr.dtype}.")
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise CycleULMError(f"the map must be a non-empty 2-D image or 3-D stack, got shape {arr.shape}.")
    px = _positive_or_none("pixel_size_um", pixel_size_um)
    arr = arr.astype(np.float32, copy=False)
    record = jsonable({"pixel_size_um": px, **dict(info or {})})
    kw: dict = {"photometric": "minisblack"}
    with atomic_path(p) as tmp:
        if arr.nbytes < 2**31:
            meta = {"axes": "YX" if arr.ndim == 2 else "TYX", "Info": json.dumps(record)}
            if px is not None:
                meta["unit"] = "um"
                kw["resolution"] = (1.0 / px, 1.0 / px)
            tifffile.imwrite(tmp, arr, imagej=True, metadata=meta, **kw)
        else:
            if px is not None:
                kw["resolution"] = (1e4 / px, 1e4 / px)
                kw["resolutionunit"] = "CENTIMETER"
            tifffile.imwrite(tmp, arr, bigtiff=True, description=json.dumps(record),
                             metadata=None, **kw)
    return p


def read_map_tiff(path: str | os.PathLike) -> MapFile:
    """Read a TIFF map with its pixel size (from :func:`write_map_tiff`, ImageJ or resolution tags).

    Returns
    -------
    MapFile
        ``data`` (float32, as stored: ``(H, W)`` or ``(T, H, W)``),
        ``pixel_size_um`` (None when the file holds none) and ``info``.

    Raises
    ------
    CycleULMError
        When the file is missing or not a TIFF.
    """
    import tifffile

    p = Path(path)
    if not p.is_file():
        raise CycleULMError(f"map file {str(p)!r} does not exist.")
    try:
        with tifffile.TiffFile(p) as tif:
            data = tif.asarray().astype(np.float32, copy=False)
            page = tif.pages[0]
            ij = tif.imagej_metadata or {}
            info: dict = {}
            text = ij.get("Info") if ij else page.description
            if text:
                try:
                    parsed = json.loads(text)
                    info = parsed if isinstance(parsed, dict) else {}
                except (TypeError, ValueError):
                    info = {}
            px = None
            xres = page.tags.get("XResolution")
            if xres is not None:
                num, den = xres.value
                ppu = num / den if den else 0.0  # pixels per unit
                if ppu > 0:
                    unit = page.tags.get("ResolutionUnit")
                    unit = int(unit.value) if unit is not None else 2
                    if ij and str(ij.get("unit", "")).lower() in _LENGTH_UM:
                        px = _LENGTH_UM[str(ij["unit"]).lower()] / ppu
                    elif unit == 3:  # centimetre
                        px = 1e4 / ppu
                    elif unit == 4:  # millimetre
                        px = 1e3 / ppu
                    elif unit == 5:  # micrometre
                        px = 1.0 / ppu
            if px is None and _valid(info.get("pixel_size_um")):
                px = float(info["pixel_size_um"])
    except tifffile.TiffFileError as exc:
        raise CycleULMError(f"{str(p)!r} is not a readable TIFF ({exc}).") from None
    return MapFile(data=data, pixel_size_um=px, info=info)


# --------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------
def _scale_bar_length_px(scale_bar_mm, pixel_size_um, width) -> tuple[float | None, float | None]:
    """Resolve ``"auto"`` / number / None into (bar mm, pixel size) or (None, None)."""
    if scale_bar_mm is None or scale_bar_mm == 0:
        return None, None
    if pixel_size_um is None:
        if scale_bar_mm == "auto":
            return None, None
        raise CycleULMError(
            "a scale bar needs the pixel size; give pixel_size_um (micrometres per pixel)."
        )
    if scale_bar_mm == "auto":
        return nice_scale_bar_mm(width, pixel_size_um), float(pixel_size_um)
    from .render.sr_maps import SCALE_BAR_MAX_FRACTION

    bar = _positive_or_none("scale_bar_mm", scale_bar_mm)
    width_mm = width * float(pixel_size_um) / 1000.0
    if bar > SCALE_BAR_MAX_FRACTION * width_mm:
        raise CycleULMError(
            f"a scale bar of {bar:g} mm is longer than the image ({width} px x {float(pixel_size_um):.4g} um "
            f"= {width_mm:.3g} mm wide, bars up to {SCALE_BAR_MAX_FRACTION * width_mm:.3g} mm fit); "
            "choose a shorter --scale-bar-mm (0: no bar)."
        )
    return bar, float(pixel_size_um)


def write_png(
    image,
    path: str | os.PathLike,
    *,
    cmap="hot",
    gamma: float = 0.5,
    contrast_limits: tuple[float, float] | None = None,
    vmax_percentile: float = 99.5,
    scale_bar_mm: float | str | None = "auto",
    pixel_size_um: float | None = None,
) -> Path:
    """Write a colour-mapped PNG of a 2-D map, one PNG pixel per map pixel, with a scale bar.

    The PNG writer of the exports, the Export widget and the napari writer
    hook (one path).  It draws with :func:`render.sr_maps.write_normalised_png`, like
    :func:`render.to_png` (the quick-look PNG of pipelines and benchmarks),
    and differs from it only in its defaults and in what it accepts:

    * scale bar: ``"auto"`` (a round length when the pixel size is known)
      here; none unless ``scale_bar_mm`` is given in ``to_png``;
    * colormap: a name, a Colormap or a colour array here; a name there;
    * range: ``contrast_limits`` (as napari shows the layer) or automatic
      here; automatic only there;
    * returns the path written (``to_png``: None).

    The automatic range (no ``contrast_limits``) is ``to_png``'s: the
    ``vmax_percentile`` of the finite non-zero ``|values|`` is the top of the
    colormap, then ``gamma``; maps with negative values span
    ``(-vmax, vmax)`` (with a colormap name ``to_png`` draws them, keeping
    the sign under ``gamma``).

    Parameters
    ----------
    image : array_like, shape (H, W)
        Map; NaN pixels are drawn black.
    path : str or PathLike
        Destination ``.png``; written atomically.
    cmap : str, matplotlib Colormap or (N, 3|4) array
        Colormap (a napari layer's colours can be passed as an array).
    gamma : float
        Display exponent after normalisation.
    contrast_limits : (float, float), optional
        ``(low, high)`` mapped to the ends of the colormap, as napari displays
        a layer.  Without it the range is automatic (see above).
    vmax_percentile : float
        See above.
    scale_bar_mm : float, "auto" or None
        White scale bar (bottom right) in mm; ``"auto"`` picks a round length
        of about a fifth of the width when the pixel size is known (no bar
        otherwise); None or 0: no bar.
    pixel_size_um : float, optional
        Size of one pixel of ``image``, micrometres.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    CycleULMError
        On a non-2-D image, an unknown colormap, bad numbers, or an explicit
        scale bar without pixel size.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.size == 0:
        raise CycleULMError(
            f"a PNG holds one 2-D image, got shape {img.shape}; export a stack's "
            "maximum-intensity projection, or save the stack as TIFF."
        )
    px = _positive_or_none("pixel_size_um", pixel_size_um)
    bar_mm, bar_px = _scale_bar_length_px(scale_bar_mm, px, img.shape[1])
    p = Path(path)
    if contrast_limits is None and isinstance(cmap, str):
        to_png(img, p, cmap=cmap, gamma=gamma, vmax_percentile=vmax_percentile,
               scale_bar_mm=bar_mm, pixel_size_um=bar_px)
        return p
    colormap = colormap_from(cmap)
    if contrast_limits is None:
        # render.to_png's automatic range; to_png itself takes colormap names only.
        finite = img[np.isfinite(img)]
        vals = np.abs(finite[finite != 0])
        vmax = float(np.percentile(vals, vmax_percentile)) if vals.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
        contrast_limits = (-vmax, vmax) if finite.size and finite.min() < 0 else (0.0, vmax)
    lo, hi = (float(c) for c in contrast_limits)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise CycleULMError(f"contrast_limits must be finite, got {contrast_limits!r}.")
    _positive_or_none("gamma", gamma)
    with np.errstate(invalid="ignore", divide="ignore"):
        shown = np.clip((img - lo) / (hi - lo), 0, 1) if hi > lo else (img > lo).astype(float)
        shown = shown**gamma
    write_normalised_png(shown, p, colormap, bar_mm, bar_px)
    return p


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------
@dataclass
class ExportReport:
    """What an export wrote.

    Attributes
    ----------
    out_dir : pathlib.Path
        Output folder.
    files : list of dict
        One entry per file: ``path``, ``source``, ``format`` and facts such as
        ``pixel_size_um``, ``colormap``, ``scale_bar_mm``, ``rows``.
    notes : list of str
        Things the user should know (no pixel size, skipped files...).
    manifest : pathlib.Path or None
        The ``export.json`` written.
    """

    out_dir: Path
    files: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    manifest: Path | None = None

    @property
    def paths(self) -> list[Path]:
        return [Path(f["path"]) for f in self.files]

    def to_dict(self) -> dict:
        from . import __version__

        return jsonable({"version": __version__, "out_dir": str(self.out_dir),
                         "files": self.files, "notes": self.notes})

    def write_manifest(self, name: str = "export.json") -> Path:
        """Write :meth:`to_dict` as JSON into the output folder (atomically)."""
        self.manifest = self.out_dir / name
        write_text_atomic(self.manifest, json.dumps(self.to_dict(), indent=2) + "\n")
        return self.manifest


def _check_formats(formats) -> tuple[str, ...]:
    fmts = tuple(str(f).lower().lstrip(".").replace("tiff", "tif") for f in formats)
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise CycleULMError(f"unknown export format(s) {bad or list(formats)}; choose from {list(FORMATS)}.")
    return fmts


# --------------------------------------------------------------------------
# Maps and tables
# --------------------------------------------------------------------------
def _maps_dict(maps) -> tuple[dict[str, np.ndarray], float | None, dict]:
    if isinstance(maps, SRMaps):
        d = {"sr_density": maps.density, "sr_count": maps.count, "sr_velocity": maps.velocity,
             "sr_axial_velocity": maps.axial_velocity, "sr_direction": maps.direction}
        units = {"sr_velocity": maps.velocity_unit, "sr_axial_velocity": maps.velocity_unit,
                 "sr_direction": "rad", "sr_density": "passages", "sr_count": "localisations"}
        return d, maps.pixel_size_um, units
    if isinstance(maps, Mapping):
        return dict(maps), None, {}
    raise CycleULMError(f"maps must be SRMaps or a {{name: array}} mapping, got {type(maps).__name__}.")


def export_maps(
    maps,
    out_dir: str | os.PathLike,
    pixel_size_um: float | None = None,
    *,
    formats: Sequence[str] = ("tif", "png"),
    colormap: str | None = None,
    gamma: float | None = None,
    scale_bar_mm: float | str | None = "auto",
    prefix: str = "",
    manifest: bool = True,
) -> ExportReport:
    """Write maps as calibrated float32 TIFF and / or colour PNG with a scale bar.

    Parameters
    ----------
    maps : SRMaps or mapping of str to array_like (H, W)
        Maps by name; an :class:`render.SRMaps` gives ``sr_density``,
        ``sr_count``, ``sr_velocity``, ``sr_axial_velocity`` and
        ``sr_direction``.
    out_dir : str or PathLike
        Output folder (created).  Files are ``<prefix><name>.tif`` / ``.png``.
    pixel_size_um : float, optional
        Size of one map pixel, micrometres (for SR maps: CEUS pixel /
        upsampling); default ``maps.pixel_size_um`` for SRMaps.
    formats : sequence of {"tif", "png"}
        What to write.
    colormap, gamma : optional
        Override the per-map style of :func:`map_style`.
    scale_bar_mm : float, "auto" or None
        Scale bar of the PNGs (see :func:`write_png`).
    prefix : str
        Prefix of every file name.
    manifest : bool
        Also write ``export.json``.

    Returns
    -------
    ExportReport
    """
    d, px_default, units = _maps_dict(maps)
    px = _positive_or_none("pixel_size_um", pixel_size_um if pixel_size_um is not None else px_default)
    fmts = [f for f in _check_formats(formats) if f != "csv"]
    report = ExportReport(Path(out_dir))
    if px is None and "png" in fmts and scale_bar_mm == "auto":
        report.notes.append("no pixel size known: PNGs have no scale bar and TIFFs no calibration.")
    for name, arr in d.items():
        img = np.asarray(arr)
        style = map_style(name)
        cmap = colormap or style[0]
        g = style[1] if gamma is None else gamma
        info = {"map": name, "unit": units.get(name), "colormap": cmap}
        if "tif" in fmts:
            path = write_map_tiff(report.out_dir / f"{prefix}{name}.tif", img, px, info=info)
            report.files.append({"path": str(path), "source": name, "format": "tif", "pixel_size_um": px,
                                 "unit": units.get(name)})
        if "png" in fmts:
            path = report.out_dir / f"{prefix}{name}.png"
            bar, _ = _scale_bar_length_px(scale_bar_mm, px, img.shape[-1])
            write_png(img, path, cmap=cmap, gamma=g, vmax_percentile=style[2],
                      scale_bar_mm=bar, pixel_size_um=px)
            report.files.append({"path": str(path), "source": name, "format": "png", "pixel_size_um": px,
                                 "colormap": cmap, "gamma": g, "scale_bar_mm": bar})
    if manifest:
        report.write_manifest()
    return report


def with_physical_units(table: PointTable, pixel_size_um: float | None = None,
                        frame_rate_hz: float | None = None) -> PointTable:
    """Add physical-unit columns to a localisation or track table (pixels stay as they are).

    Adds ``y_um, x_um`` (with a pixel size), ``t_s`` (with a frame rate) and,
    for tables with ``vy, vx`` (pixels / frame) and both, ``vy_mm_s, vx_mm_s,
    speed_mm_s``.

    Raises
    ------
    CycleULMError
        On a non-positive pixel size or frame rate.
    """
    px = _positive_or_none("pixel_size_um", pixel_size_um)
    fr = _positive_or_none("frame_rate_hz", frame_rate_hz)
    extra = {}
    if px is not None:
        extra["y_um"] = table["y"] * px
        extra["x_um"] = table["x"] * px
    if fr is not None:
        extra["t_s"] = table["frame"] / fr
    if px is not None and fr is not None and "vy" in table and "vx" in table:
        k = px * fr / 1000.0
        extra["vy_mm_s"] = table["vy"] * k
        extra["vx_mm_s"] = table["vx"] * k
        extra["speed_mm_s"] = np.hypot(table["vy"], table["vx"]) * k
    return table.with_columns(**extra) if extra else table


def export_tables(
    tables: Mapping[str, PointTable],
    out_dir: str | os.PathLike,
    *,
    pixel_size_um: float | None = None,
    frame_rate_hz: float | None = None,
    physical: bool = False,
    manifest: bool = True,
) -> ExportReport:
    """Write localisation / track tables as CSV (``<name>.csv``), atomically.

    Parameters
    ----------
    tables : mapping of str to Localisations or Tracks
        Tables by file stem.
    out_dir : str or PathLike
        Output folder.
    pixel_size_um, frame_rate_hz : float, optional
        Used with ``physical``.
    physical : bool
        Add physical-unit columns (:func:`with_physical_units`).
    manifest : bool
        Also write ``export.json``.
    """
    report = ExportReport(Path(out_dir))
    for name, table in tables.items():
        if not isinstance(table, PointTable):
            raise CycleULMError(f"{name!r} is not a Localisations or Tracks table.")
        report.files.append(_write_table(table, report.out_dir / f"{name}.csv", name,
                                         pixel_size_um, frame_rate_hz, physical, report.notes))
    if manifest:
        report.write_manifest()
    return report


def _write_table(table, path, source, px, fr, physical, notes) -> dict:
    if physical:
        if px is None and fr is None:
            notes.append(f"{source}: no pixel size or frame rate known; CSV written in pixels/frames only.")
        table = with_physical_units(table, px, fr)
    table.to_csv(path)
    entry = {"path": str(path), "source": str(source), "format": "csv", "rows": len(table),
             "columns": table.names}
    if isinstance(table, Tracks):
        entry["tracks"] = table.n_tracks
    return entry


# --------------------------------------------------------------------------
# A `cycleulm run` folder or loose files
# --------------------------------------------------------------------------
_MAP_EXT = (".tif", ".tiff")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _folder_facts(folder: Path) -> dict:
    """Pixel size, frame rate and upsampling from ``run.json`` / ``metadata.json`` in a folder."""
    run = _read_json(folder / "run.json")
    params = run.get("params") if isinstance(run.get("params"), dict) else {}
    meta = _read_json(folder / "metadata.json")
    facts = {
        "pixel_size_um": _valid(params.get("pixel_size_um")) or _valid(meta.get("pixel_size_um")),
        "frame_rate_hz": _valid(params.get("frame_rate_hz")) or _valid(meta.get("frame_rate_hz")),
        "upsampling": _valid(params.get("upsampling")),
        "run": bool(run),
    }
    return facts


def _collect(sources: Sequence[str | os.PathLike]) -> list[tuple[Path, Path, bool]]:
    """(file, output sub-folder, explicit) for every map / table to export."""
    paths = [Path(s) for s in sources]
    if not paths:
        raise CycleULMError("give at least one run folder or file to export.")
    dirs = [p for p in paths if p.is_dir()]
    out = []
    for p in paths:
        if p.is_dir():
            sub = Path(p.resolve().name) if len(dirs) > 1 else Path()
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in (*_MAP_EXT, ".csv"))
            if not found:
                raise CycleULMError(
                    f"{str(p)!r} holds no .tif maps or .csv tables; give a folder written by "
                    "`cycleulm run` or the files themselves."
                )
            out += [(q, sub, False) for q in found]
        elif p.is_file():
            if p.suffix.lower() not in (*_MAP_EXT, ".csv"):
                raise CycleULMError(
                    f"{str(p)!r} is neither a TIFF map nor a CSV table; export takes .tif/.tiff and .csv."
                )
            out.append((p, Path(), True))
        else:
            raise CycleULMError(f"{str(p)!r} does not exist.")
    return out


def export_run(
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = FORMATS,
    colormap: str | None = None,
    gamma: float | None = None,
    scale_bar_mm: float | str | None = "auto",
    pixel_size_um: float | None = None,
    frame_rate_hz: float | None = None,
    upsampling: int | None = None,
    mip: bool = False,
    physical: bool = False,
    overwrite: bool = True,
) -> ExportReport:
    """Export the maps and tables of ``cycleulm run`` folders (or loose files).

    For every TIFF map: a calibrated float32 TIFF (``tif``) and a colour PNG
    with a scale bar (``png``, style from :func:`map_style` unless
    ``colormap`` / ``gamma`` are given).  For every CSV: the table validated
    (required columns, numbers) and rewritten (``csv``), optionally with
    physical-unit columns.  An ``export.json`` manifest lists everything.

    The pixel size of a map is, in order: ``pixel_size_um`` (the CEUS pixel
    size; SR maps ``sr_*`` are divided by the upsampling), the TIFF's own
    resolution tags, or ``run.json`` / ``metadata.json`` in the map's folder.

    Parameters
    ----------
    sources : sequence of path
        Run folders and / or ``.tif`` / ``.csv`` files.  With several
        folders, each one's files go to a sub-folder named after it.
    out_dir : path
        Output folder (created); must not be where the inputs are when a
        TIFF or CSV would overwrite its own source.
    formats : sequence of {"tif", "png", "csv"}
        What to write.
    colormap, gamma : optional
        Override the per-map colormap / gamma.
    scale_bar_mm : float, "auto" or None
        PNG scale bar in mm (``"auto"``: a round length; None / 0: none).
    pixel_size_um, frame_rate_hz : float, optional
        CEUS pixel size and frame rate (override the folder's files).
    upsampling : int, optional
        SR upsampling of ``sr_*`` maps (default: ``run.json``).
    mip : bool
        Export a stack (T > 1) as its maximum-intensity projection; without
        it, a stack given as a file is an error and one found in a folder is
        skipped with a note.
    physical : bool
        Add ``y_um, x_um, t_s`` (and velocities in mm/s) to the CSVs.
    overwrite : bool
        Allow replacing files of an earlier export in ``out_dir`` (then the
        files that export listed in its ``export.json`` and this one does not
        rewrite are removed, so the folder never mixes two exports).  False
        refuses, before any work, when ``out_dir`` holds an ``export.json``
        or a file this export would write.

    Returns
    -------
    ExportReport

    Raises
    ------
    CycleULMError
        On missing inputs, unreadable or invalid files, clashing output
        names, an unknown colormap or a gamma <= 0, an explicit scale bar
        for a map without pixel size or longer than the map, an output that
        would overwrite its source, or existing outputs without
        ``overwrite``.  Nothing is written then: files are made in a hidden
        sibling folder and moved into ``out_dir`` only when all succeeded.
    """
    from .io import read_table

    fmts = _check_formats(formats)
    px_cli = _positive_or_none("pixel_size_um", pixel_size_um)
    fr_cli = _positive_or_none("frame_rate_hz", frame_rate_hz)
    if upsampling is not None and (int(upsampling) != upsampling or upsampling < 1):
        raise CycleULMError(f"upsampling must be an integer >= 1, got {upsampling!r}.")
    if scale_bar_mm not in (None, 0, "auto"):
        _positive_or_none("scale_bar_mm", scale_bar_mm)
    if gamma is not None:
        _positive_or_none("gamma", gamma)
    if colormap is not None:
        colormap_from(colormap)
    files = _collect(sources)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CycleULMError(f"--out {str(out)!r} is a file; give a folder for the exported files.")
    check_writable_folder(out)
    report = ExportReport(out)

    # Plan every output first, so a clash is reported before anything is written.
    planned: dict[Path, Path] = {}
    for src, sub, _ in files:
        exts = ([".tif", ".png"] if src.suffix.lower() in _MAP_EXT else [".csv"])
        for ext in exts:
            if (ext == ".tif" and "tif" not in fmts) or (ext == ".png" and "png" not in fmts) or (
                    ext == ".csv" and "csv" not in fmts):
                continue
            target = out / sub / (src.stem + ext)
            key = target.resolve()
            if key == src.resolve():
                raise CycleULMError(
                    f"exporting {str(src)!r} to {str(out)!r} would overwrite it; choose another --out folder."
                )
            if key in planned:
                raise CycleULMError(
                    f"{str(planned[key])!r} and {str(src)!r} would both be written to {str(target)!r}; "
                    "export them separately or give their folders instead."
                )
            planned[key] = src
    if not overwrite:
        existing = [str(p) for p in [out / "export.json", *planned] if p.exists()]
        if existing:
            raise CycleULMError(
                f"{str(out)!r} already holds an export ({existing[0]}"
                + (f" and {len(existing) - 1} more" if len(existing) > 1 else "")
                + "); pass --overwrite to replace it, or choose another --out folder."
            )

    old_manifest = _read_json(out / "export.json") if out.is_dir() else {}
    with staged_dir(out, merge=True, last=("export.json",)) as stage:
        report.out_dir = stage
        facts_cache: dict[Path, dict] = {}
        for src, sub, explicit in files:
            facts = facts_cache.setdefault(src.parent.resolve(), _folder_facts(src.parent))
            fr = fr_cli or facts["frame_rate_hz"]
            if src.suffix.lower() == ".csv":
                if "csv" not in fmts:
                    continue
                table = read_table(src)
                px_table = px_cli or facts["pixel_size_um"]
                entry = _write_table(table, stage / sub / f"{src.stem}.csv", str(src), px_table, fr,
                                     physical, report.notes)
                report.files.append(entry)
                continue
            if not ({"tif", "png"} & set(fmts)):
                continue
            mf = read_map_tiff(src)
            data = mf.data
            if data.ndim == 3 and data.shape[0] == 1:
                data = data[0]
            source_name, stem = str(src), src.stem
            if data.ndim == 3:
                if not mip:
                    msg = (f"{str(src)!r} is a stack of {data.shape[0]} frames, not a 2-D map; "
                           "use --mip to export its maximum-intensity projection")
                    if explicit:
                        raise CycleULMError(msg + ".")
                    report.notes.append(msg + "; skipped.")
                    continue
                data = _mip(data)
                source_name += " (MIP)"
                stem += "_MIP"
            is_sr = src.stem.lower().startswith("sr_") or bool(mf.info.get("upsampling"))
            u = upsampling or facts["upsampling"] or _valid(mf.info.get("upsampling"))
            if px_cli is not None:
                if is_sr and u is None:
                    raise CycleULMError(
                        f"{str(src)!r} is an SR map but its upsampling is unknown (no run.json beside it); "
                        "give --upsampling."
                    )
                px = px_cli / (u if is_sr else 1)
            elif mf.pixel_size_um is not None:
                px = mf.pixel_size_um
            elif facts["pixel_size_um"] is not None and (not is_sr or u is not None):
                px = facts["pixel_size_um"] / (u if is_sr else 1)
            else:
                px = None
            style = map_style(src.stem)
            cmap = colormap or style[0]
            g = style[1] if gamma is None else gamma
            if px is None:
                if scale_bar_mm not in (None, 0, "auto") and "png" in fmts:
                    raise CycleULMError(
                        f"no pixel size for {str(src)!r}, so no scale bar can be drawn; give "
                        "--pixel-size-um (the CEUS pixel size) or leave out --scale-bar-mm."
                    )
                report.notes.append(f"{src.name}: no pixel size known (give --pixel-size-um); "
                                    "written without calibration or scale bar.")
            info = {"map": stem, "source": source_name, "colormap": cmap}
            if is_sr and u:
                info["upsampling"] = u
            if "tif" in fmts:
                path = write_map_tiff(stage / sub / f"{stem}.tif", data, px, info=info)
                report.files.append({"path": str(path), "source": source_name, "format": "tif",
                                     "pixel_size_um": px})
            if "png" in fmts:
                bar, _ = _scale_bar_length_px(scale_bar_mm if px is not None else None, px, data.shape[-1])
                path = write_png(data, stage / sub / f"{stem}.png", cmap=cmap, gamma=g,
                                 vmax_percentile=style[2], scale_bar_mm=bar, pixel_size_um=px)
                report.files.append({"path": str(path), "source": source_name, "format": "png",
                                     "pixel_size_um": px, "colormap": cmap, "gamma": g, "scale_bar_mm": bar})
        if not report.files:
            raise CycleULMError(
                "nothing was exported: the inputs hold no file of the chosen formats "
                "(maps need --tiff or --png, tables --csv)."
            )
        report.out_dir = out
        for f in report.files:
            f["path"] = str(out / Path(f["path"]).relative_to(stage))
        write_text_atomic(stage / "export.json", json.dumps(report.to_dict(), indent=2) + "\n")
    report.manifest = out / "export.json"
    _remove_stale(old_manifest, out, {Path(f["path"]) for f in report.files})
    return report


def _remove_stale(old_manifest: dict, out: Path, written: set[Path]) -> None:
    """Delete the files an earlier export into ``out`` listed and this one did not rewrite."""
    files = old_manifest.get("files") if isinstance(old_manifest.get("files"), list) else []
    root = out.resolve()
    for f in files:
        p = Path(f.get("path", "")) if isinstance(f, dict) else None
        if p is None or not str(p) or p in written:
            continue
        try:
            inside = root in p.resolve().parents
        except OSError:
            continue
        if inside and p.is_file() and p.suffix.lower() in (".tif", ".tiff", ".png", ".csv"):
            p.unlink()
