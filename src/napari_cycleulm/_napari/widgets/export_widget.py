"""Export chosen layers: images to calibrated TIFF and colour PNG with a scale bar, points / tracks to CSV."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton, Select
from napari.layers import Image, Points, Tracks as TracksLayer
from napari.utils.notifications import show_warning

from ...errors import CycleULMError
from ...export import ExportReport
from ...io.tables import Localisations
from ._base import StageWidget
from ._layer_export import LayerExport, frame_rate_from_meta, iter_export_layers, pixel_size_from_meta
from ._layers import GENERATED_KEY, localisations_from_points, tracks_from_layer

EXPORTABLE = (Image, Points, TracksLayer)
PNG_CONTRAST = [("as displayed (colormap, contrast limits, gamma)", "display"),
                ("automatic (99.5th percentile, map gamma)", "auto")]


def _state(layer) -> dict:
    return {"metadata": layer.metadata, "scale": layer.scale, "units": layer.units}


def _colours(layer: Image):
    """The layer's colormap: its matplotlib name when matplotlib has it, else its colours."""
    cmap = layer.colormap
    if cmap.name in matplotlib.colormaps:
        return cmap.name
    return np.asarray(cmap.map(np.linspace(0.0, 1.0, 256)), dtype=float)


def layer_export(layer) -> LayerExport:
    """Snapshot a layer (on the UI thread) as plain data for :func:`._layer_export.iter_export_layers`."""
    if isinstance(layer, Image):
        if layer.rgb or layer.multiscale:
            raise CycleULMError(
                f"layer {layer.name!r} is RGB or multiscale; export takes grey-level images "
                "(use File > Save Screenshot for a picture)."
            )
        return LayerExport(
            name=layer.name, kind="image", data=layer.data,
            pixel_size_um=pixel_size_from_meta(_state(layer), "image"),
            frame_rate_hz=frame_rate_from_meta(_state(layer)),
            cmap=_colours(layer), contrast_limits=tuple(float(c) for c in layer.contrast_limits),
            gamma=float(layer.gamma),
        )
    if isinstance(layer, Points):
        table = Localisations() if len(layer.data) == 0 else localisations_from_points(layer)
        kind = "points"
    elif isinstance(layer, TracksLayer):
        table = tracks_from_layer(layer)
        kind = "tracks"
    else:
        raise CycleULMError(
            f"layer {layer.name!r} is a {type(layer).__name__}; export takes images, points and tracks."
        )
    return LayerExport(name=layer.name, kind=kind, data=table,
                       pixel_size_um=pixel_size_from_meta(_state(layer), kind),
                       frame_rate_hz=frame_rate_from_meta(_state(layer)))


class ExportWidget(StageWidget):
    """Chosen layers -> files in a folder.

    Images: ``<name>.tif`` (float32, pixel size in the TIFF resolution, ImageJ
    style) and ``<name>.png`` (colour-mapped, white scale bar in mm when the
    pixel size is known; a stack's PNG is its maximum-intensity projection,
    ``<name>_MIP.png``).  Points and Tracks: ``<name>.csv`` in pixels / frames,
    optionally with physical-unit columns.  An ``export.json`` lists what was
    written.  Existing files of the same name are replaced (atomically).
    """

    run_text = "Export"
    offers_rerun_mode = False  # writes files, adds no layers

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.layers = Select(label="layers", choices=self._layer_choices,
                             tooltip="images, points and tracks to export (Ctrl/Shift-click for several)")
        self.layers.native.setMinimumHeight(90)
        self._combos.append(self.layers)
        self.select_results = PushButton(text="Choose CycleULM results")
        self.select_results.changed.connect(self.guard(self.choose_results))
        self.folder = FileEdit(label="folder", mode="d")
        self.tiff = CheckBox(text="TIFF (float32, pixel size)", value=True)
        self.png = CheckBox(text="PNG (colour, scale bar)", value=True)
        self.csv = CheckBox(text="CSV (points, tracks)", value=True)
        self.png_contrast = ComboBox(label="PNG colours", choices=PNG_CONTRAST, value="display")
        self.scale_bar = CheckBox(text="scale bar on PNGs", value=True)
        self.scale_bar_mm = FloatSpinBox(label="scale bar (mm)", value=0.0, min=0.0, max=1000.0, step=0.5,
                                         tooltip="0 = a round length of about a fifth of the width")
        self.physical = CheckBox(text="CSV: add um, s and mm/s columns", value=False)
        self.written = Label(value="", label="written")
        self.extend([
            self.layers, self.select_results, self.folder,
            Container(widgets=[self.tiff, self.png, self.csv], layout="horizontal", labels=False,
                      label="formats"),
            self.png_contrast, self.scale_bar, self.scale_bar_mm, self.physical,
        ])
        self.finish_layout()
        self.append(self.written)
        self.report: ExportReport | None = None

    def _layer_choices(self, _widget=None):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, EXPORTABLE)]

    def choose_results(self, _=None) -> list:
        """Choose every layer CycleULM made (localisations, tracks, SR maps, MB-only...)."""
        chosen = [layer for _, layer in self._layer_choices() if layer.metadata.get(GENERATED_KEY)
                  or "cycleulm" in layer.metadata]
        self.layers.value = chosen
        return chosen

    def _formats(self) -> list[str]:
        return [f for f, box in (("tif", self.tiff), ("png", self.png), ("csv", self.csv)) if box.value]

    def work(self):
        folder = self.folder.value
        if folder is None or str(folder) in ("", "."):
            raise CycleULMError("choose an output folder first.")
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise CycleULMError(f"{str(folder)!r} is a file; choose a folder.")
        layers = list(self.layers.value or [])
        if not layers:
            raise CycleULMError("choose at least one layer to export (Ctrl/Shift-click for several).")
        formats = self._formats()
        if not formats:
            raise CycleULMError("tick at least one format (TIFF, PNG or CSV).")
        items = [layer_export(layer) for layer in layers]
        bar = None
        if self.scale_bar.value:
            bar = "auto" if self.scale_bar_mm.value == 0 else float(self.scale_bar_mm.value)
        return iter_export_layers(items, folder, formats=formats, png_contrast=self.png_contrast.value,
                                  scale_bar_mm=bar, physical=self.physical.value)

    def done(self, report: ExportReport) -> None:
        self.report = report
        n = len(report.files)
        self.written.value = f"{n} file(s) in {report.out_dir}"
        self.status.value = f"exported {n} file(s)"
        if report.notes:
            show_warning("; ".join(report.notes))
