"""Evaluate: CNR and FWHM on the MIP of raw and MB-only frames, localisation accuracy vs ground truth.

Three tabs share the choice of frames ("raw" CEUS and, optionally,
"MB-only" from the Translate widget):

* **CNR** - regions come from Shapes layers.  *New ROI layers* adds two
  Shapes layers, ``CNR signal`` and ``CNR background``; draw a rectangle
  (or polygon / ellipse) over a vessel in the first and one beside it in the
  second.  Each layer's area shapes are united.  One Shapes layer may also
  serve both (choose it twice, or leave "background" at "(2nd shape of the
  signal layer)"): its first area shape is the signal, the others the
  background.  Background pixels inside the signal region are dropped.
* **FWHM** - the last line (or path) of a Shapes layer (*New line layer*
  adds ``FWHM line`` in line mode); the profile along it on each MIP is
  plotted and its FWHM reported in pixels and micrometres.
* **Localisations** - precision, recall, F1 and mean error of the chosen
  localisation Points layers against a ground-truth Points layer (tolerance
  in pixels), as a copyable table, and optionally a precision-recall plot
  over the ``score`` feature.

All measurements run off the UI thread; mistakes become notifications.
"""

from __future__ import annotations

import math

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton, Select
from napari.layers import Image, Points, Shapes
from napari.utils.notifications import show_error, show_info, show_warning

from ...errors import CycleULMError
from ...evaluate import (
    CNRResult,
    Profile,
    cnr_on_mip,
    format_value,
    fwhm_on_mip,
    mip,
    plot_precision_recall,
    plot_profiles,
    rows_to_text,
    score_localisations,
    sweep_localisations,
    write_rows_csv,
)
from ...progress import Progress
from ...roi import AREA_SHAPE_TYPES, rois_to_mask
from ...io.tables import Localisations
from ._base import StageWidget, layer_choices, unproxied
from ._layers import (
    GENERATED_KEY,
    add_result,
    localisations_from_points,
    result_metadata,
    result_name,
    to_layer_coords,
)
from ._layer_export import pixel_size_from_meta
from ._plot import PlotPanel
from .translate_widget import MB_ONLY_KEY

SIGNAL_LAYER = "CNR signal"
BACKGROUND_LAYER = "CNR background"
LINE_LAYER = "FWHM line"
LINE_TYPES = ("line", "path")
SAME_LAYER = "(2nd shape of the signal layer)"


def layer_pixel_size_um(layer) -> float | None:
    """Pixel size of an Image / Points layer's data, micrometres (None when unknown)."""
    if layer is None:
        return None
    kind = "image" if isinstance(layer, Image) else "points"
    return pixel_size_from_meta(
        {"metadata": layer.metadata, "scale": layer.scale, "units": layer.units}, kind
    )


def _is_mb_only(layer) -> bool:
    return bool(layer.metadata.get(MB_ONLY_KEY)) or layer.name.endswith("MB-only")


def _fmt(v, digits: int = 3) -> str:
    return format_value(v, f".{digits}f", missing="-", nan="n/a")


# ------------------------------------------------------------------------------
# A copyable table
# ------------------------------------------------------------------------------
class ResultsTable(Container):
    """A read-only QTableWidget with Copy (TSV, Ctrl+C copies the selection) and Save CSV."""

    def __init__(self, columns: list[tuple[str, str]], label: str = "results"):
        super().__init__(labels=False)
        from qtpy.QtWidgets import QAbstractItemView, QTableWidget

        self.keys = [k for k, _ in columns]
        self.headers = [h for _, h in columns]
        self.rows: list[dict] = []
        self.label = label
        self.table = QTableWidget(0, len(columns))
        self.table.setHorizontalHeaderLabels(self.headers)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setMinimumHeight(90)
        self.table.keyPressEvent = self._key_press
        self.copy_button = PushButton(text="Copy table")
        self.save_button = PushButton(text="Save CSV...")
        self.copy_button.changed.connect(self.copy)
        self.save_button.changed.connect(self._on_save)
        self.native.layout().addWidget(self.table)
        self.append(Container(widgets=[self.copy_button, self.save_button], layout="horizontal",
                              labels=False))

    def set_rows(self, rows: list[dict]) -> None:
        from qtpy.QtWidgets import QTableWidgetItem

        self.rows = list(rows)
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, key in enumerate(self.keys):
                self.table.setItem(i, j, QTableWidgetItem(_fmt(row.get(key))))
        self.table.resizeColumnsToContents()

    def cell(self, row: int, key: str) -> str:
        """The text shown in a cell (by row index and column key)."""
        item = self.table.item(row, self.keys.index(key))
        return "" if item is None else item.text()

    def text(self) -> str:
        """The whole table as tab-separated text with a header (full precision)."""
        return rows_to_text(self.rows, self.keys)

    def copy(self, _=None) -> str:
        from qtpy.QtWidgets import QApplication

        text = self.text()
        QApplication.clipboard().setText(text)
        return text

    def _selection_text(self) -> str:
        idx = self.table.selectedIndexes()
        if not idx:
            return self.text()
        rows = sorted({i.row() for i in idx})
        cols = sorted({i.column() for i in idx})
        lines = ["\t".join(self.headers[c] for c in cols)]
        for r in rows:
            lines.append("\t".join(self.table.item(r, c).text() if self.table.item(r, c) else ""
                                   for c in cols))
        return "\n".join(lines) + "\n"

    def _key_press(self, event) -> None:
        from qtpy.QtGui import QKeySequence
        from qtpy.QtWidgets import QApplication, QTableWidget

        if event.matches(QKeySequence.StandardKey.Copy):
            QApplication.clipboard().setText(self._selection_text())
            return
        QTableWidget.keyPressEvent(self.table, event)

    def save_csv(self, path) -> None:
        write_rows_csv(self.rows, path, self.keys)

    def ask_path(self) -> str | None:
        """Ask where to save (a file dialog); tests replace this method."""
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self.native, "Save table as CSV", f"{self.label}.csv",
                                              "CSV (*.csv)")
        return path or None

    def _on_save(self, _=None) -> None:
        if not self.rows:
            show_error("the table is empty: run the evaluation first.")
            return
        path = self.ask_path()
        if not path:
            return
        try:
            self.save_csv(path)
        except (OSError, CycleULMError) as exc:
            show_error(f"could not save the table to {path}: {exc}")
            return
        show_info(f"table saved to {path}")


# ------------------------------------------------------------------------------
# Shapes -> masks / lines in an image's pixel grid
# ------------------------------------------------------------------------------
def _shapes_of(layer: Shapes, types) -> list[tuple[np.ndarray, str]]:
    return [(np.asarray(v, float), str(t)) for v, t in zip(layer.data, layer.shape_type) if str(t) in types]


def _mask(shapes: list[tuple[np.ndarray, str]], layer: Shapes, image: Image) -> np.ndarray:
    verts = [to_layer_coords(v, layer, image)[:, -2:] for v, _ in shapes]
    return rois_to_mask(verts, image.data.shape[-2:], shape_types=[t for _, t in shapes])


def _frames_of(layer: Image, what: str):
    if layer.rgb or layer.multiscale:
        raise CycleULMError(f"{what} layer {layer.name!r} is RGB or multiscale; choose a grey-level stack.")
    if layer.data.ndim not in (2, 3):
        raise CycleULMError(f"{what} layer {layer.name!r} has shape {layer.data.shape}; expected (T, H, W).")
    return layer.data


# ------------------------------------------------------------------------------
# Tabs
# ------------------------------------------------------------------------------
class _FramesPanel(StageWidget):
    """A tab measuring on the shared raw / MB-only frames of the parent widget."""

    offers_rerun_mode = False  # measurements add no result layers

    def __init__(self, viewer: napari.Viewer, frames: EvaluateWidget):
        super().__init__(viewer)
        self.frames = frames

    def images(self) -> list[tuple[str, Image]]:
        raw = self.frames.raw.value
        if raw is None:
            raise CycleULMError("no raw frames: open a CEUS stack (or the sample data) and choose it.")
        out = [("raw", raw)]
        mb = self.frames.mb_only.value
        if mb is not None and mb is not raw:
            out.append(("MB-only", mb))
        return out


class CNRPanel(_FramesPanel):
    """CNR (dB) of a signal region against a background region on the MIP of each stack."""

    run_text = "Measure CNR"

    def __init__(self, viewer: napari.Viewer, frames: EvaluateWidget):
        super().__init__(viewer, frames)
        self.signal = self.layer_combo("signal ROI", Shapes)
        self.background = ComboBox(label="background ROI", choices=self._background_choices)
        self._combos.append(self.background)
        self.new_rois = PushButton(text="New ROI layers")
        self.new_rois.changed.connect(self.guard(self.add_roi_layers))
        self.table = ResultsTable(
            [("frames", "frames"), ("cnr_db", "CNR (dB)"), ("cnr_ratio_db", "CNR ratio (dB)"),
             ("signal_mean", "signal mean"), ("background_mean", "bg mean"),
             ("background_std", "bg std"), ("n_signal", "signal px"), ("n_background", "bg px")],
            label="cnr",
        )
        self.extend([self.new_rois, self.signal, self.background])
        self.finish_layout()
        self.append(self.table)
        self.results: list[CNRResult] = []
        self._default_rois()

    def _background_choices(self, _widget=None):
        return [(SAME_LAYER, None)] + layer_choices(self.viewer, Shapes)()

    def _default_rois(self) -> None:
        names = [layer.name for layer in self.viewer.layers]
        if SIGNAL_LAYER in names and isinstance(self.viewer.layers[SIGNAL_LAYER], Shapes):
            self.signal.value = self.viewer.layers[SIGNAL_LAYER]
        if BACKGROUND_LAYER in names and isinstance(self.viewer.layers[BACKGROUND_LAYER], Shapes):
            self.background.value = self.viewer.layers[BACKGROUND_LAYER]

    def add_roi_layers(self, _=None) -> tuple[Shapes, Shapes]:
        """Add empty ``CNR signal`` / ``CNR background`` Shapes layers (rectangle mode) and choose them."""
        layers = []
        for name, colour in ((BACKGROUND_LAYER, "magenta"), (SIGNAL_LAYER, "lime")):
            if name in self.viewer.layers and isinstance(self.viewer.layers[name], Shapes):
                layer = self.viewer.layers[name]
            else:
                layer = self.viewer.add_shapes(
                    name=name, ndim=2, edge_color=colour, face_color=[0, 0, 0, 0], edge_width=1,
                    metadata={GENERATED_KEY: True},
                )
            layers.append(layer)
        bg, sig = layers
        self._refresh_layers()
        self.signal.value = sig
        self.background.value = bg
        self.viewer.layers.selection.active = sig
        sig.mode = "add_rectangle"
        self.status.value = (f"draw a rectangle over a vessel in '{SIGNAL_LAYER}', then one beside it in "
                             f"'{BACKGROUND_LAYER}'")
        return sig, bg

    def masks(self, image: Image) -> tuple[np.ndarray, np.ndarray]:
        """(signal, background) masks in ``image``'s pixel grid."""
        sig_layer, bg_layer = self.signal.value, self.background.value
        if sig_layer is None:
            raise CycleULMError(
                "no signal region: press 'New ROI layers', draw a rectangle over a vessel in "
                f"'{SIGNAL_LAYER}' and one beside it in '{BACKGROUND_LAYER}'."
            )
        sig = _shapes_of(sig_layer, AREA_SHAPE_TYPES)
        if bg_layer is None or bg_layer is sig_layer:
            if len(sig) < 2:
                raise CycleULMError(
                    f"Shapes layer {sig_layer.name!r} holds {len(sig)} area shape(s); with one layer "
                    "for both regions draw two rectangles: the first over the vessel (signal), the "
                    "second beside it (background). Or choose a separate background layer."
                )
            sig, bg, bg_layer = sig[:1], sig[1:], sig_layer
        else:
            bg = _shapes_of(bg_layer, AREA_SHAPE_TYPES)
        for shapes, layer, what in ((sig, sig_layer, "signal"), (bg, bg_layer, "background")):
            if not shapes:
                raise CycleULMError(
                    f"Shapes layer {layer.name!r} has no rectangle, polygon or ellipse; draw the "
                    f"{what} region in it (lines do not enclose an area)."
                )
        return _mask(sig, sig_layer, image), _mask(bg, bg_layer, image)

    def work(self):
        jobs = []
        for name, layer in self.images():
            s, b = self.masks(layer)
            jobs.append((name, _frames_of(layer, name), s, b))

        def run():
            out = []
            yield Progress(0, len(jobs), "CNR")
            for i, (name, data, s, b) in enumerate(jobs):
                out.append(cnr_on_mip(data, s, b, name=name))
                yield Progress(i + 1, len(jobs), "CNR")
            return out

        return run()

    def done(self, results: list[CNRResult]) -> None:
        self.results = results
        rows = [{**r.__dict__, "frames": r.name} for r in results]
        self.table.set_rows(rows)
        self.status.value = ", ".join(f"{r.name} {_fmt(r.cnr_db, 2)} dB" for r in results)


class FWHMPanel(_FramesPanel):
    """Intensity profile along a drawn line on the MIP of each stack, and its FWHM."""

    run_text = "Measure FWHM"

    def __init__(self, viewer: napari.Viewer, frames: EvaluateWidget):
        super().__init__(viewer, frames)
        self.line = self.layer_combo("line (Shapes)", Shapes)
        self.new_line = PushButton(text="New line layer")
        self.new_line.changed.connect(self.guard(self.add_line_layer))
        self.result = Label(value="", label="FWHM")
        self.plot = PlotPanel(title="fwhm_profile")
        self.extend([self.new_line, self.line])
        self.finish_layout()
        self.extend([self.result, self.plot])
        self.profiles: list[Profile] = []
        if LINE_LAYER in self.viewer.layers and isinstance(self.viewer.layers[LINE_LAYER], Shapes):
            self.line.value = self.viewer.layers[LINE_LAYER]

    def add_line_layer(self, _=None) -> Shapes:
        """Add an empty ``FWHM line`` Shapes layer in line mode and choose it."""
        if LINE_LAYER in self.viewer.layers and isinstance(self.viewer.layers[LINE_LAYER], Shapes):
            layer = self.viewer.layers[LINE_LAYER]
        else:
            layer = self.viewer.add_shapes(name=LINE_LAYER, ndim=2, edge_color="yellow", edge_width=0.5,
                                           metadata={GENERATED_KEY: True})
        self._refresh_layers()
        self.line.value = layer
        self.viewer.layers.selection.active = layer
        layer.mode = "add_line"
        self.status.value = "draw a line across a vessel (click, drag, release), then Measure FWHM"
        return layer

    def vertices(self, image: Image) -> np.ndarray:
        """The last line / path of the chosen layer, as (y, x) in ``image``'s pixels."""
        layer = self.line.value
        if layer is None:
            raise CycleULMError(
                "no line: press 'New line layer' and draw a line across a vessel "
                "(or choose a Shapes layer holding a line)."
            )
        lines = _shapes_of(layer, LINE_TYPES)
        if not lines:
            raise CycleULMError(
                f"Shapes layer {layer.name!r} holds no line or path; draw a line across a vessel "
                "with the line tool."
            )
        v = to_layer_coords(lines[-1][0], layer, image)[:, -2:]
        if len(v) < 2 or float(np.hypot(*np.diff(v, axis=0).T).sum()) < 1e-6:
            raise CycleULMError("the line has zero length; draw a line across a vessel (click, drag, release).")
        return v

    def work(self):
        jobs = []
        for name, layer in self.images():
            jobs.append((name, _frames_of(layer, name), self.vertices(layer), layer_pixel_size_um(layer)))

        def run():
            out = []
            yield Progress(0, len(jobs), "FWHM")
            for i, (name, data, verts, px) in enumerate(jobs):
                out.append(fwhm_on_mip(data, verts, pixel_size_um=px, name=name))
                yield Progress(i + 1, len(jobs), "FWHM")
            return out

        return run()

    def done(self, profiles: list[Profile]) -> None:
        self.profiles = profiles
        self.plot.plot(lambda ax: plot_profiles(ax, profiles))
        parts = []
        for p in profiles:
            if math.isnan(p.fwhm_px):
                parts.append(f"{p.name} n/a")
            elif p.fwhm_um is not None:
                parts.append(f"{p.name} {p.fwhm_px:.2f} px ({p.fwhm_um:.0f} um)")
            else:
                parts.append(f"{p.name} {p.fwhm_px:.2f} px")
        self.result.value = "; ".join(parts)
        bad = [p.name for p in profiles if math.isnan(p.fwhm_px)]
        if bad:
            show_warning(
                f"the profile on {', '.join(bad)} does not fall below half maximum on both sides of "
                "its peak: draw a longer line, across the vessel."
            )
        self.status.value = "done"


class AccuracyPanel(StageWidget):
    """Precision, recall, F1 and mean error of localisation layers against ground truth."""

    run_text = "Score"
    offers_rerun_mode = False

    def __init__(self, viewer: napari.Viewer, frames: EvaluateWidget | None = None):
        super().__init__(viewer)
        self.frames = frames
        self.ground_truth = self.layer_combo("ground truth", Points)
        self.detections = Select(label="localisations", choices=self._detection_choices,
                                 tooltip="Ctrl/Shift-click to choose several layers")
        self.detections.native.setMinimumHeight(70)
        self._combos.append(self.detections)
        self.tolerance = FloatSpinBox(label="tolerance (px)", value=1.0, min=0.01, max=100.0, step=0.25)
        self.sweep = CheckBox(text="precision-recall sweep over 'score'", value=False)
        self.table = ResultsTable(
            [("layer", "layer"), ("method", "method"), ("n_detections", "detections"),
             ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
             ("mean_error_px", "error (px)"), ("mean_error_um", "error (um)"),
             ("tp", "TP"), ("fp", "FP"), ("fn", "FN")],
            label="localisation_accuracy",
        )
        self.plot = PlotPanel(title="precision_recall")
        self.plot.visible = False
        self.extend([self.ground_truth, self.detections, self.tolerance, self.sweep])
        self.finish_layout()
        self.extend([self.table, self.plot])
        self.rows: list[dict] = []
        self.sweeps: dict[str, list[dict]] = {}
        self._set_defaults()
        self.ground_truth.changed.connect(lambda _: self.detections.reset_choices())

    def _detection_choices(self, _widget=None):
        gt = self.ground_truth.value if hasattr(self, "ground_truth") else None
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Points) and layer is not gt]

    def _set_defaults(self) -> None:
        for layer in self.viewer.layers:
            if isinstance(layer, Points) and "ground truth" in layer.name:
                self.ground_truth.value = layer
                break
        self.detections.reset_choices()
        self.select_localisation_layers()

    def select_localisation_layers(self) -> list:
        """Choose every Points layer named ``... localisations ...`` (the stage widgets' results)."""
        chosen = [layer for _, layer in self._detection_choices() if "localisations" in layer.name]
        self.detections.value = chosen
        return chosen

    def _refresh_layers(self, event=None) -> None:
        before = set(id(v) for v in (self.detections.value or []))
        super()._refresh_layers(event)
        # New localisation layers join the selection; the user's choices are kept.
        if event is not None and getattr(event, "type", "") == "inserted":
            layer = event.value
            if isinstance(layer, Points) and "localisations" in layer.name and id(layer) not in before:
                self.detections.value = [*self.detections.value, layer]

    def pixel_size_um(self) -> float | None:
        for layer in (self.ground_truth.value, self.frames.raw.value if self.frames else None):
            px = layer_pixel_size_um(layer)
            if px is not None:
                return px
        for layer in self.detections.value or []:
            px = layer_pixel_size_um(layer)
            if px is not None:
                return px
        return None

    def work(self):
        gt_layer = self.ground_truth.value
        if gt_layer is None:
            raise CycleULMError(
                "no ground-truth Points layer: load the sample data (it has 'CEUS sample ground "
                "truth') or open a ground-truth CSV."
            )
        if len(gt_layer.data) == 0:
            raise CycleULMError(
                f"ground-truth layer {gt_layer.name!r} is empty; choose a layer that holds the true positions."
            )
        layers = list(self.detections.value or [])
        if not layers:
            raise CycleULMError(
                "no localisation layer chosen: run Localise (or a pipeline) and choose its "
                "'[method] ... localisations' layers in the list."
            )
        gt = localisations_from_points(gt_layer)
        per_frame = gt_layer.data.shape[1] == 3
        dets = {}
        for layer in layers:
            if len(layer.data) == 0:
                dets[layer.name] = Localisations()
                continue
            if layer.data.shape[1] != gt_layer.data.shape[1]:
                raise CycleULMError(
                    f"layer {layer.name!r} has {layer.data.shape[1]}-D points but the ground truth "
                    f"{gt_layer.data.shape[1]}-D; both must be (frame, y, x)."
                )
            dets[layer.name] = localisations_from_points(layer, reference=gt_layer)
        tol, px, sweep = self.tolerance.value, self.pixel_size_um(), self.sweep.value
        swept = {}
        if sweep:
            swept = {n: d for n, d in dets.items() if "score" in d}
            lacking = [n for n in dets if n not in swept]
            if not swept:
                raise CycleULMError(
                    "none of the chosen layers has a 'score' feature to sweep over; untick the "
                    "sweep or choose layers made by Localise or a pipeline."
                )
            if lacking:
                show_warning(f"no 'score' feature, left out of the sweep: {', '.join(lacking)}")

        def run():
            total = 1 + len(swept)
            yield Progress(0, total, "matching")
            rows = score_localisations(gt, dets, tol, pixel_size_um=px, per_frame=per_frame)
            yield Progress(1, total, "matching")
            curves = {}
            for i, (name, det) in enumerate(swept.items()):
                curves.update(sweep_localisations(gt, {name: det}, tol, per_frame=per_frame))
                yield Progress(2 + i, total, "precision-recall sweep")
            return rows, curves

        return run()

    def done(self, result) -> None:
        rows, curves = result
        self.rows, self.sweeps = rows, curves
        self.table.set_rows(rows)
        if curves:
            points = {r["layer"]: (r["recall"], r["precision"]) for r in rows if r["layer"] in curves}
            self.plot.visible = True
            self.plot.plot(lambda ax: plot_precision_recall(ax, curves, points))
        best = max(rows, key=lambda r: r["f1"])
        self.status.value = f"{len(rows)} layer(s) scored; best F1 {best['f1']:.3f} ({best['method']})"


# ------------------------------------------------------------------------------
# The dock widget
# ------------------------------------------------------------------------------
class EvaluateWidget(Container):
    """Evaluation dock widget: shared frame choice and the CNR / FWHM / Localisations tabs."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(labels=True)
        from qtpy.QtWidgets import QTabWidget

        self.viewer = unproxied(napari_viewer)
        self.raw = ComboBox(label="raw frames", choices=layer_choices(self.viewer, Image),
                            tooltip="the CEUS stack; CNR and FWHM are measured on its MIP over time")
        self.mb_only = ComboBox(label="MB-only frames", choices=layer_choices(self.viewer, Image, allow_none=True),
                                tooltip="the Translate widget's '<input> MB-only' layer (optional)")
        self.mip_button = PushButton(text="Show MIPs",
                                     tooltip="add the MIP of the chosen frames as layers, to draw regions on")
        self.mip_button.changed.connect(self.show_mips)
        self.extend([self.raw, self.mb_only, self.mip_button])
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.renamed):
            event.connect(self._refresh)
        self.cnr = CNRPanel(self.viewer, self)
        self.fwhm = FWHMPanel(self.viewer, self)
        self.accuracy = AccuracyPanel(self.viewer, self)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.cnr.native, "CNR")
        self.tabs.addTab(self.fwhm.native, "FWHM")
        self.tabs.addTab(self.accuracy.native, "Localisations")
        self.native.layout().addWidget(self.tabs)
        self._choose_defaults()

    def _refresh(self, event=None) -> None:
        self.raw.reset_choices()
        self.mb_only.reset_choices()
        if event is not None and getattr(event, "type", "") == "inserted":
            layer = event.value
            if isinstance(layer, Image) and self.mb_only.value is None and _is_mb_only(layer):
                self.mb_only.value = layer

    def _choose_defaults(self) -> None:
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        raw = [layer for layer in images if not _is_mb_only(layer) and layer.data.ndim == 3
               and not layer.metadata.get(GENERATED_KEY)]
        if raw:
            self.raw.value = raw[0]
        mb = [layer for layer in images if _is_mb_only(layer)]
        if mb:
            self.mb_only.value = mb[0]

    def show_mips(self, _=None) -> list[Image]:
        """Add ``<frames> MIP`` Image layers (replaced on the next press), to draw regions on."""
        try:
            return self._show_mips()
        except CycleULMError as exc:
            show_error(str(exc))
            return []

    def _show_mips(self) -> list[Image]:
        out = []
        raw, mb = self.raw.value, self.mb_only.value
        if raw is None:
            raise CycleULMError("no raw frames: open a CEUS stack (or the sample data) and choose it.")
        for layer, cmap in ((raw, "gray"), (mb, "magma")):
            if layer is None:
                continue
            image = mip(_frames_of(layer, "frames"))
            n = int(layer.data.shape[0]) if layer.data.ndim == 3 else 1
            meta = result_metadata("mip", layer, {"n_frames": n})
            hi = float(np.percentile(image, 99.9))
            lo = float(image.min())
            out.append(add_result(
                self.viewer, "image", image, result_name(layer.name, "MIP"), colormap=cmap,
                scale=layer.scale[-2:], translate=layer.translate[-2:], metadata=meta,
                contrast_limits=(lo, hi if hi > lo else lo + 1.0),
            ))
        return out
