"""Estimate the PSF from bubbles clicked in a Points layer (or picked automatically).

The user makes a picking layer (``<input> PSF bubbles``), clicks on isolated
bubbles in any frames (each click snaps to the brightest pixel nearby), checks
the picks in the gallery in the dock, and presses Estimate.  The fitted PSF
and the MB-only PSF become Image layers carrying the PSF in their metadata;
picks the estimate could not use are flagged in red in the gallery and, on
picking layers CycleULM made, in the Points layer itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import napari
import numpy as np
from magicgui.widgets import CheckBox, Container, FloatSpinBox, Label, PushButton, SpinBox
from napari.layers import Image, Points
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QFrame, QGridLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from ... import __version__
from ...errors import CycleULMError
from ...progress import Progress
from ...io.tables import Localisations
from ...psf import (
    RELIABLE_BUBBLES,
    PSFEstimate,
    bubble_patches,
    estimate_psf,
    pick_isolated_bubbles,
    screen_bubbles,
    snap_to_maximum,
)
from ._base import StageWidget
from ._layers import (
    GENERATED_KEY,
    PSF_METADATA_KEY,
    add_result,
    frames_from_layer,
    localisations_from_points,
    result_name,
    to_layer_coords,
)

try:  # the provenance helper of the napari contracts (issue 5)
    from ._layers import result_metadata as _result_metadata
except ImportError:  # pragma: no cover - older _layers without it
    _result_metadata = None

#: Border colours of the gallery tiles and picking-layer markers.
USED_COLOUR = "#2ecc40"
REJECTED_COLOUR = "#ff3030"
PENDING_COLOUR = "#9a9a9a"
INFO_COLOUR = "#4a90d9"
PICK_COLOUR = "yellow"

#: Tile captions for the kinds of :class:`napari_cycleulm.psf.Rejection` (``reason.kind``;
#: the full reason is in the tile's tooltip and the layer's 'reason' feature).
TILE_TAGS = {"frame": "no frame", "outside": "outside", "border": "border", "dim": "too dim",
             "neighbour": "neighbour", "fit": "bad fit", "other": "rejected"}

#: Provenance stage of the picking layers (only those get red markers).
PICKING_STAGE = "psf picking"

#: The gallery shows at most this many picks (the first ones).
MAX_TILES = 120

#: Frames searched by the automatic picking (those of :func:`~napari_cycleulm.psf.pick_isolated_bubbles`):
#: only they are read from a long stack.
AUTO_PICK_FRAMES = 200
#: Patch half-size of the gallery tiles before an estimate has measured one.
DEFAULT_TILE_RADIUS = 8


# ---------------------------------------------------------------------------
# The gallery: one small tile per pick, framed green (used), red (rejected)
# or grey (not checked yet)
# ---------------------------------------------------------------------------


def _to_pixmap(image: np.ndarray, size: int, colormap: str | None = None) -> QPixmap:
    """A square pixmap of a 2-D array, min-max scaled; NaN (outside the image) is dark blue."""
    a = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(a)
    norm = np.zeros_like(a)
    if finite.any():
        lo, hi = float(a[finite].min()), float(a[finite].max())
        norm = np.where(finite, (a - lo) / (hi - lo if hi > lo else 1.0), 0.0)
    if colormap is None:
        g = (np.clip(norm, 0, 1) * 255).astype(np.uint8)
        rgb = np.stack([g, g, g], axis=-1)
    else:
        from napari.utils.colormaps import ensure_colormap

        mapped = ensure_colormap(colormap).map(np.clip(norm, 0, 1).ravel())[:, :3]
        rgb = (mapped.reshape(*a.shape, 3) * 255).astype(np.uint8)
    rgb[~finite] = (30, 30, 80)
    rgb = np.ascontiguousarray(rgb)
    h, w = a.shape
    qimg = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(qimg).scaled(
        size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation
    )


@dataclass
class TileInfo:
    """What one gallery tile shows."""

    index: int
    image: np.ndarray
    caption: str
    state: str = "pending"  # "used", "rejected", "pending" (not checked yet) or "info"
    reason: str = ""
    tooltip: str = ""
    colormap: str | None = None


class Tile(QFrame):
    """One gallery tile: the patch, a caption, a coloured frame; clicking it emits its index."""

    clicked = Signal(int)

    def __init__(self, info: TileInfo, size: int = 56, parent: QWidget | None = None):
        super().__init__(parent)
        self.info = info
        colour = {"used": USED_COLOUR, "rejected": REJECTED_COLOUR, "info": INFO_COLOUR}.get(
            info.state, PENDING_COLOUR
        )
        self.setObjectName("cycleulm_tile")
        self.setStyleSheet(
            f"QFrame#cycleulm_tile {{ border: 3px solid {colour}; border-radius: 3px; }}"
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(3, 3, 3, 3)
        layout.setSpacing(1)
        self.picture = QLabel()
        self.picture.setPixmap(_to_pixmap(info.image, size, info.colormap))
        self.picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.caption = QLabel(info.caption)
        self.caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
        style = "font-size: 9px;"
        if info.state == "rejected":
            style += f" color: {REJECTED_COLOUR}; font-weight: bold;"
        self.caption.setStyleSheet(style)
        layout.addWidget(self.picture)
        layout.addWidget(self.caption)
        self.setToolTip(info.tooltip or info.caption)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        # Every tile the same size, so the grid reads as a contact sheet.
        self.setFixedSize(size + 14, size + 44)

    @property
    def index(self) -> int:
        return self.info.index

    @property
    def state(self) -> str:
        return self.info.state

    @property
    def rejected(self) -> bool:
        return self.info.state == "rejected"

    def mousePressEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.clicked.emit(self.info.index)
        super().mousePressEvent(event)


class PatchGallery(QWidget):
    """A scrollable grid of :class:`Tile` with a one-line summary above it."""

    tile_clicked = Signal(int)

    def __init__(self, columns: int = 5, tile_px: int = 56, max_rows: int = 3,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.columns = columns
        self.tile_px = tile_px
        self.max_rows = max_rows
        self.tiles: list[Tile] = []
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self._grid_host = QWidget()
        self._grid = QGridLayout(self._grid_host)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(4)
        self._grid.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self._grid_host)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.scroll)

    def set_tiles(self, infos: list[TileInfo], summary: str = "") -> None:
        for tile in self.tiles:
            self._grid.removeWidget(tile)
            tile.setParent(None)
            tile.deleteLater()
        self.tiles = []
        for k, info in enumerate(infos):
            tile = Tile(info, self.tile_px)
            tile.clicked.connect(self.tile_clicked.emit)
            self._grid.addWidget(tile, k // self.columns, k % self.columns)
            self.tiles.append(tile)
        self.summary.setText(summary)
        self.summary.setVisible(bool(summary))
        self.scroll.setVisible(bool(infos))
        if infos:
            rows = min(self.max_rows, -(-len(infos) // self.columns))
            tile_h = self.tiles[0].height()
            self.scroll.setFixedHeight(rows * (tile_h + self._grid.spacing()) + 16)
            self.scroll.setMinimumWidth(self.columns * (self.tiles[0].width() + self._grid.spacing()) + 24)

    @property
    def rejected_indices(self) -> list[int]:
        """Indices (rows of the picking layer) of the tiles flagged as rejected."""
        return [t.index for t in self.tiles if t.rejected]


# ---------------------------------------------------------------------------
# What the worker hands back
# ---------------------------------------------------------------------------


@dataclass
class _Estimated:
    est: PSFEstimate
    layer: Points
    data: np.ndarray  # the picking layer's data when the estimate started
    image: Image
    params: dict


@dataclass
class _NotEstimated:
    message: str
    reasons: list | None
    layer: Points
    data: np.ndarray


@dataclass
class _AutoPicked:
    points: np.ndarray
    image: Image


def clicked_frames(image: Image, points: Localisations) -> tuple[np.ndarray, Localisations]:
    """Only the frames holding clicked bubbles, and the points renumbered into them.

    The PSF is measured on a few frames of what may be a 25,000-frame stack
    opened lazily: reading just those frames keeps memory small.
    """
    n = int(image.data.shape[0]) if image.data.ndim == 3 else 1
    wanted = np.round(points["frame"]).astype(np.int64)
    inside = (wanted >= 0) & (wanted < n)
    used = np.unique(wanted[inside])
    frames = frames_from_layer(image, frames=used if len(used) else slice(0, 1))
    # Points outside the stack keep an impossible frame, so the estimator rejects them with its message.
    renumbered = np.where(inside, np.searchsorted(used, wanted), len(used) + 1 + np.abs(wanted))
    return frames, points.with_columns(frame=renumbered.astype(float))


def _metadata(stage: str, source: Image, params: dict, **extra) -> dict:
    """Result-layer metadata: ``{"cycleulm": {stage, source, params, version}}`` plus units."""
    if _result_metadata is not None:
        return _result_metadata(stage, source, params, **extra)
    meta = {"cycleulm": {"stage": stage, "source": source.name, "params": params, "version": __version__}}
    for key in ("pixel_size_um", "frame_rate_hz"):
        if source.metadata.get(key) is not None:
            meta[key] = source.metadata[key]
    meta.update(extra)
    return meta


def _camera(viewer: napari.Viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def _key(row) -> tuple:
    """A pick's identity in the verdict table: its position, rounded (a moved pick is new)."""
    return tuple(np.round(np.asarray(row, dtype=np.float64), 3).tolist())


class PSFWidget(StageWidget):
    """Pick isolated bubbles, check them in the gallery, press Estimate.

    * **New picking layer** makes ``<input> PSF bubbles`` (Points, same
      scale/translate as the CEUS layer, add mode): click on bubbles in any
      frames; with *snap clicks* each click moves to the brightest pixel
      within *snap radius*.
    * **Auto-pick bubbles** proposes isolated bubbles in that layer (in the
      background); delete the ones you dislike, add others.
    * The gallery shows one tile per pick (green: used, red: rejected with the
      reason, grey: not checked yet); click a tile to go to the pick.
    * **Estimate** fits the PSF and adds ``<input> PSF`` (mean re-centred
      bubble) and ``<input> MB-only PSF`` (the fit shrunk by *MB-only shrink*),
      both carrying the PSF in their metadata for the other widgets.
    """

    run_text = "Estimate"

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.psf = None
        self.estimate: PSFEstimate | None = None
        # Outcome of the last estimate per pick position of one layer: None = used, str = why rejected.
        self._verdicts: dict[tuple, str | None] = {}
        self._verdicts_layer: Points | None = None
        self._tile_radius = DEFAULT_TILE_RADIUS
        self._quiet_depth = 0
        self._watched: Points | None = None
        self._n_before = 0
        self._job = "estimate"

        self.image = self.layer_combo("CEUS", Image)
        self.points = self.layer_combo("bubbles", Points)
        self.new_button = PushButton(text="New picking layer",
                                     tooltip="Add '<CEUS> PSF bubbles' and click on isolated bubbles")
        self.auto_button = PushButton(text="Auto-pick bubbles",
                                      tooltip="Propose isolated bubbles; delete or add as you like")
        self.new_button.changed.connect(self.new_picking_layer)
        self.auto_button.changed.connect(self.start_auto_pick)
        pick_buttons = Container(widgets=[self.new_button, self.auto_button], layout="horizontal",
                                 labels=False)
        self.snap = CheckBox(text="snap clicks to the brightest pixel", value=True)
        self.snap_radius = SpinBox(label="snap radius (px)", value=3, min=0, max=25,
                                   tooltip="How far (pixels) a click may move to reach the bubble peak")
        self.n_auto = SpinBox(label="auto-pick count", value=20, min=3, max=500,
                              tooltip="How many isolated bubbles Auto-pick proposes")
        self.pixel_size_um = FloatSpinBox(
            label="pixel size (um)", value=0.0, min=0.0, max=1e4, step=1.0,
            tooltip="0 = unknown; read from the layer metadata when present",
        )
        self.shrink = FloatSpinBox(
            label="MB-only shrink", value=0.5, min=0.1, max=1.0, step=0.05,
            tooltip="The MB-only PSF is the fitted PSF scaled by this factor (CycleULM: 0.5)",
        )
        self.gallery = PatchGallery()
        self.gallery.tile_clicked.connect(self.show_pick)
        self.preview = PatchGallery(columns=3, tile_px=60, max_rows=1)
        gallery_box = Container(labels=False)
        gallery_box.native.layout().addWidget(self.gallery)
        preview_box = Container(labels=False)
        preview_box.native.layout().addWidget(self.preview)
        self.result = Label(value="PSF: not estimated", label="result")
        self.extend([self.image, self.points, pick_buttons, self.snap, self.snap_radius, self.n_auto,
                     self.pixel_size_um, self.shrink, gallery_box, preview_box, self.result])
        self.finish_layout()

        self._gallery_timer = QTimer(self.native)
        self._gallery_timer.setSingleShot(True)
        self._gallery_timer.setInterval(120)
        self._gallery_timer.timeout.connect(self.refresh_gallery)

        self.image.changed.connect(self._pixel_size_from_layer)
        self.image.changed.connect(self._schedule_gallery)
        self.points.changed.connect(self._watch)
        self._pixel_size_from_layer()
        self._watch()
        self.preview.set_tiles([])
        self.refresh_gallery()

    # -- small helpers ----------------------------------------------------------
    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Changes made by the widget itself: no snapping, no flag reset."""
        self._quiet_depth += 1
        try:
            yield
        finally:
            self._quiet_depth -= 1

    def _mode(self) -> str:
        mode = getattr(self, "rerun_mode", "replace")
        return str(getattr(mode, "value", mode))

    def _pixel_size_from_layer(self, _=None) -> None:
        layer = self.image.value
        if layer is not None and layer.metadata.get("pixel_size_um"):
            self.pixel_size_um.value = float(layer.metadata["pixel_size_um"])

    @staticmethod
    def _is_picking_layer(layer) -> bool:
        """A picking layer CycleULM made (only those get red markers; user layers are left alone)."""
        if layer is None or not layer.metadata.get(GENERATED_KEY, False):
            return False
        info = layer.metadata.get("cycleulm")
        return isinstance(info, dict) and info.get("stage") == PICKING_STAGE

    def _ceus_positions(self, layer: Points, image: Image, rows: np.ndarray) -> np.ndarray:
        """``(N, 3)`` (frame, y, x) in the CEUS pixel grid of points given in ``layer``."""
        mapped = to_layer_coords(np.asarray(rows, dtype=np.float64), layer, image)
        if mapped.shape[1] == 2:
            mapped = np.column_stack([np.zeros(len(mapped)), mapped])
        return mapped[:, -3:]

    def _check_image(self) -> Image:
        image = self.image.value
        if image is None:
            raise CycleULMError("no CEUS layer: open a CEUS stack (or File > Open Sample) and choose it "
                                "under 'CEUS'.")
        if getattr(image, "rgb", False) or getattr(image, "multiscale", False) or image.ndim not in (2, 3):
            raise CycleULMError(f"layer {image.name!r} is not a grey-level (frames, y, x) stack; choose "
                                "the CEUS layer under 'CEUS'.")
        return image

    # -- picking layer ------------------------------------------------------------
    def _add_picking_layer(self, data: np.ndarray, image: Image) -> Points:
        n = len(data)
        kwargs = dict(
            ndim=data.shape[1],
            scale=np.asarray(image.scale),
            translate=np.asarray(image.translate),
            size=9,
            face_color="transparent",
            border_color="rejected",
            border_color_cycle={False: PICK_COLOUR, True: REJECTED_COLOUR},
            border_width=0.15,
            border_width_is_relative=True,
            features={"rejected": np.zeros(n, bool), "reason": np.full(n, "", dtype=object)},
            metadata=_metadata(PICKING_STAGE, image, {}),
        )
        self._verdicts, self._verdicts_layer = {}, None
        with self._quiet():
            layer = add_result(self.viewer, "points", data, result_name(image.name, "PSF bubbles"),
                               mode=self._mode(), **kwargs)
            layer.feature_defaults = {"rejected": False, "reason": ""}
            layer.refresh_colors()
        self._refresh_layers()
        self.points.value = layer
        self._watch()
        self.viewer.layers.selection.active = layer
        self.refresh_gallery()
        return layer

    def new_picking_layer(self, _=None) -> Points | None:
        """Add an empty ``<input> PSF bubbles`` Points layer in add mode and select it."""
        try:
            image = self._check_image()
        except CycleULMError as exc:
            self._fail(str(exc))
            return None
        layer = self._add_picking_layer(np.zeros((0, image.ndim)), image)
        layer.mode = "add"
        snap = (f"; each click snaps to the brightest pixel within {self.snap_radius.value} px"
                if self.snap.value else "")
        self.status.value = (f"click on 10 or more isolated bubbles, in any frames{snap}. "
                             "Then press Estimate.")
        return layer

    def _show_auto(self, pts: np.ndarray, image: Image) -> Points | None:
        if len(pts) == 0:
            self._fail("no isolated bubbles were found automatically; press 'New picking layer' and "
                       "click on bubbles yourself (frames with few, bright bubbles work best).")
            return None
        data = np.asarray(pts, dtype=np.float64)
        if image.ndim == 2:
            data = data[:, 1:]
        layer = self._add_picking_layer(data, image)
        layer.mode = "select"
        self.status.value = (f"{len(pts)} isolated bubbles proposed: select and delete any you dislike, "
                             "add others in add mode, then press Estimate.")
        return layer

    def auto_pick(self, _=None) -> Points | None:
        """Propose isolated bubbles as an editable Points layer, at once (for scripts).

        The *Auto-pick bubbles* button does the same in the background
        (:meth:`start_auto_pick`).
        """
        try:
            image = self._check_image()
            frames = frames_from_layer(image, frames=slice(0, AUTO_PICK_FRAMES))
            pts = pick_isolated_bubbles(frames, n=int(self.n_auto.value))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
            self._fail(str(exc))
            return None
        return self._show_auto(pts, image)

    def start_auto_pick(self, _=None):
        """Run the automatic picking in the worker; the result lands in the picking layer."""
        if self.worker is not None:
            self.status.value = "busy: wait for the running job to finish (or press Stop)"
            return None
        self._job = "auto"
        try:
            return self.start()
        finally:
            self._job = "estimate"

    # -- snapping and flags on the picking layer ------------------------------------
    def _watch(self, _=None) -> None:
        layer = self.points.value
        if layer is self._watched:
            return
        if self._watched is not None:
            try:
                self._watched.events.data.disconnect(self._on_points_data)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._watched = layer
        if layer is not None:
            layer.events.data.connect(self._on_points_data)
            self._n_before = len(layer.data)
        self._schedule_gallery()

    def _on_points_data(self, event) -> None:
        layer = self._watched
        if layer is None:
            return
        action = str(getattr(event, "action", ""))
        if action in ("adding", "changing", "removing"):
            self._n_before = len(layer.data)
            return
        n = len(layer.data)
        new_rows: list[int] = []
        if action == "added":
            new_rows = sorted({int(i) % n for i in getattr(event, "data_indices", ()) if n})
        elif action == "changed" and n > self._n_before:
            new_rows = list(range(self._n_before, n))
        self._n_before = n
        if self._quiet_depth:
            return
        if new_rows and self.snap.value:
            self._snap_rows(layer, new_rows)
        self._sync_flags(layer)
        self._schedule_gallery()

    def _snap_rows(self, layer: Points, rows: list[int]) -> None:
        try:
            image = self._check_image()
        except CycleULMError as exc:
            self._fail(f"cannot snap the click: {exc}")
            return
        data = np.asarray(layer.data, dtype=np.float64).copy()
        ceus = self._ceus_positions(layer, image, data[rows])
        try:
            snapped = snap_to_maximum(image.data, ceus, float(self.snap_radius.value))
        except CycleULMError as exc:
            self._fail(f"cannot snap the click: {exc}")
            return
        data[rows, -2:] = to_layer_coords(snapped[:, 1:], image, layer)
        with self._quiet():
            layer.data = data

    def _sync_flags(self, layer: Points | None) -> None:
        """Set the 'rejected'/'reason' features (red markers) of a picking layer CycleULM made."""
        if not self._is_picking_layer(layer) or layer not in self.viewer.layers:
            return
        data = np.asarray(layer.data, dtype=np.float64)
        verdicts = self._verdicts_for(layer)
        reasons = [verdicts.get(_key(row)) for row in data]
        rejected = np.array([r is not None for r in reasons], dtype=bool)
        reason = np.array([r or "" for r in reasons], dtype=object)
        features = layer.features.copy()
        if (
            "rejected" in features.columns
            and "reason" in features.columns
            and np.array_equal(np.asarray(features["rejected"], dtype=bool), rejected)
            and list(features["reason"].fillna("")) == list(reason)
        ):
            return
        features["rejected"] = rejected
        features["reason"] = reason
        with self._quiet():
            layer.features = features
            layer.feature_defaults = {"rejected": False, "reason": ""}
            layer.refresh_colors(update_color_mapping=False)

    # -- gallery --------------------------------------------------------------------
    def _schedule_gallery(self, _=None) -> None:
        self._gallery_timer.start()

    def refresh_gallery(self, _=None) -> None:
        """Redraw the gallery: one tile per pick of the chosen bubbles layer (the first 120)."""
        self._gallery_timer.stop()
        layer, image = self.points.value, self.image.value
        if layer is None or image is None or len(layer.data) == 0:
            self.gallery.set_tiles([], "No picks yet: press 'New picking layer' and click on isolated "
                                       "bubbles, or 'Auto-pick bubbles'.")
            return
        data = np.asarray(layer.data, dtype=np.float64)
        shown = data[:MAX_TILES]
        try:
            ceus = self._ceus_positions(layer, image, shown)
            patches = bubble_patches(image.data, ceus, self._tile_radius)
        except Exception as exc:  # noqa: BLE001 - the gallery must never break the widget
            self.gallery.set_tiles([], f"no gallery: {exc}")
            return
        verdicts = self._verdicts_for(layer)
        infos, counts = [], {"used": 0, "rejected": 0, "pending": 0}
        for i, (patch, pos) in enumerate(zip(patches, ceus)):
            key = _key(shown[i])
            f, y, x = pos
            where = f"pick #{i}: frame {int(round(f))}, y {y:.0f}, x {x:.0f} px"
            if key not in verdicts:
                state, reason, tag = "pending", "", ""
                tip = f"{where}\nnot checked yet: press Estimate"
            elif verdicts[key] is None:
                state, reason, tag = "used", "", ""
                tip = f"{where}\nused in the PSF"
            else:
                state, reason = "rejected", str(verdicts[key])
                tag = TILE_TAGS.get(getattr(verdicts[key], "kind", "other"), "rejected")
                tip = f"{where}\nREJECTED: {reason}\nClick to go there, then delete it (Delete key)."
            counts[state] += 1
            caption = f"#{i} f{int(round(f))}" + (f"\n{tag}" if tag else "")
            infos.append(TileInfo(index=i, image=patch, caption=caption, state=state, reason=reason,
                                  tooltip=tip))
        summary = f"{len(data)} pick(s): {counts['used']} used, {counts['rejected']} rejected (red)"
        if counts["pending"]:
            summary += f", {counts['pending']} not checked yet"
        if len(data) > MAX_TILES:
            summary += f"; showing the first {MAX_TILES}"
        summary += ". Click a tile to go to its bubble."
        self.gallery.set_tiles(infos, summary)

    def show_pick(self, index: int) -> None:
        """Go to pick ``index``: its frame, centred, selected in its layer (Delete removes it)."""
        layer = self.points.value
        if layer is None or layer not in self.viewer.layers or not 0 <= index < len(layer.data):
            return
        world = np.asarray(layer.data_to_world(np.asarray(layer.data[index])), dtype=float)
        offset = self.viewer.dims.ndim - len(world)
        for axis in range(len(world) - 2):
            if axis + offset >= 0:
                self.viewer.dims.set_point(axis + offset, world[axis])
        _camera(self.viewer).center = tuple(world[-2:])
        self.viewer.layers.selection.active = layer
        layer.mode = "select"
        layer.selected_data = {index}

    # -- estimation -----------------------------------------------------------------
    def work(self):
        if self._job == "auto":
            return self._auto_work()
        image = self._check_image()
        layer = self.points.value
        if layer is None:
            raise CycleULMError("no bubbles layer: press 'New picking layer' and click on isolated bubbles, "
                                "or press 'Auto-pick bubbles'.")
        if len(layer.data) == 0:
            raise CycleULMError(f"Points layer {layer.name!r} is empty: click on 10 or more isolated "
                                "bubbles in it (add mode), or press 'Auto-pick bubbles'.")
        points = localisations_from_points(layer, reference=image)
        data = np.asarray(layer.data, dtype=np.float64).copy()
        px = self.pixel_size_um.value or None
        shrink = float(self.shrink.value)
        self.auto_button.enabled = False
        self.new_button.enabled = False
        params = {"points_layer": layer.name, "points": points.positions.round(3).tolist(),
                  "pixel_size_um": px, "shrink_factor": shrink}
        frames, points = clicked_frames(image, points)

        def run():
            yield Progress(0, 1, "estimating the PSF")
            try:
                est = estimate_psf(frames, points, pixel_size_um=px, shrink_factor=shrink)
            except CycleULMError as exc:
                try:
                    reasons = screen_bubbles(frames, points)
                except CycleULMError:
                    reasons = None
                return _NotEstimated(str(exc), reasons, layer, data)
            yield Progress(1, 1, "estimating the PSF")
            return _Estimated(est, layer, data, image, params)

        return run()

    def _auto_work(self):
        image = self._check_image()
        frames = frames_from_layer(image, frames=slice(0, AUTO_PICK_FRAMES))
        n = int(self.n_auto.value)
        self.auto_button.enabled = False
        self.new_button.enabled = False

        def run():
            yield Progress(0, 1, "looking for isolated bubbles")
            pts = pick_isolated_bubbles(frames, n=n)
            yield Progress(1, 1, "looking for isolated bubbles")
            return _AutoPicked(pts, image)

        return run()

    def _on_finished(self) -> None:
        super()._on_finished()
        self.auto_button.enabled = True
        self.new_button.enabled = True

    def _record_verdicts(self, layer: Points, data: np.ndarray, reasons) -> None:
        self._verdicts = {_key(row): why for row, why in zip(data, reasons)}
        self._verdicts_layer = layer

    def _verdicts_for(self, layer: Points | None) -> dict:
        return self._verdicts if layer is not None and layer is self._verdicts_layer else {}

    def done(self, result) -> None:
        if result is None:  # stopped
            return
        if isinstance(result, _AutoPicked):
            if result.image in self.viewer.layers:
                self._show_auto(result.points, result.image)
            return
        if isinstance(result, _NotEstimated):
            if result.reasons is not None:
                self._record_verdicts(result.layer, result.data, result.reasons)
                self._sync_flags(result.layer)
            self.refresh_gallery()
            self.result.value = "PSF: not estimated"
            raise CycleULMError(
                f"{result.message} The gallery shows each pick with its reason in red: delete "
                "those and click on bright, isolated bubbles away from the border."
            )
        self._show_estimate(result)

    def _show_estimate(self, res: _Estimated) -> None:
        est, psf = res.est, res.est.psf
        self.estimate, self.psf = est, psf
        reasons: list[str | None] = [None] * len(res.data)
        for i, why in est.rejected:
            reasons[i] = why
        self._record_verdicts(res.layer, res.data, reasons)
        # The estimator looks 2 px beyond the patch for neighbours: show the tile that wide.
        self._tile_radius = int(est.patch_radius) + 2
        self._sync_flags(res.layer)
        self.refresh_gallery()

        mode, image = self._mode(), res.image
        params = {**res.params, "n_used": est.n_used,
                  "rejected": [[int(i), why] for i, why in est.rejected]}
        # The pixel size typed in the widget wins over the layer's metadata.
        units = {"pixel_size_um": psf.pixel_size_um} if psf.pixel_size_um else {}
        # Same pixel spacing as the CEUS layer, so the PSF shows at its physical size.
        scale = np.asarray(image.scale[-2:], dtype=float)
        measured = psf.measured if psf.measured is not None else psf.kernel
        add_result(self.viewer, "image", np.asarray(measured), result_name(image.name, "PSF"), mode=mode,
                   colormap="magma", scale=scale, visible=False,
                   metadata=_metadata("psf", image, params, **units, **{PSF_METADATA_KEY: psf.to_dict()}))
        mb = psf.mbonly()
        add_result(self.viewer, "image", mb.kernel, result_name(image.name, "MB-only PSF"), mode=mode,
                   colormap="magma", scale=scale, visible=False,
                   metadata=_metadata("psf mb-only", image, params, **units, shrink=psf.mbonly_factor,
                                      **{PSF_METADATA_KEY: mb.to_dict()}))

        self.result.value = self._result_text(est)
        self.preview.set_tiles(
            [TileInfo(0, measured, "measured", "info", colormap="magma",
                      tooltip="mean of the re-centred bubbles (layer '<CEUS> PSF')"),
             TileInfo(1, psf.kernel, "Gaussian fit", "info", colormap="magma",
                      tooltip="the fitted Gaussian PSF"),
             TileInfo(2, mb.kernel, f"MB-only x{psf.mbonly_factor:g}", "info", colormap="magma",
                      tooltip="the PSF of the MB-only domain: the fit shrunk by 'MB-only shrink' "
                              "(layer '<CEUS> MB-only PSF')")],
            "Estimated PSF:",
        )
        n_rej = len(est.rejected)
        self.status.value = (f"done: {est.n_used} bubble(s) used"
                             + (f", {n_rej} rejected (red in the gallery)" if n_rej else ""))

    @staticmethod
    def _result_text(est: PSFEstimate) -> str:
        psf = est.psf
        mb = psf.mbonly()

        def um(v):
            return f" = {v:.0f} um" if v is not None else ""

        lines = [
            f"FWHM y (axial) {psf.fwhm_y_px:.2f} px{um(psf.fwhm_y_um)}, "
            f"x (lateral) {psf.fwhm_x_px:.2f} px{um(psf.fwhm_x_um)}",
            f"rotation {np.degrees(psf.theta_rad):.0f} deg, fit residual {psf.residual:.3f}, "
            f"from {est.n_used} bubble(s)" + (f" ({len(est.rejected)} rejected)" if est.rejected else ""),
            f"MB-only PSF (x{psf.mbonly_factor:g}): FWHM y {mb.fwhm_y_px:.2f} px{um(mb.fwhm_y_um)}, "
            f"x {mb.fwhm_x_px:.2f} px{um(mb.fwhm_x_um)}",
        ]
        if est.n_used < RELIABLE_BUBBLES:
            lines.append(f"uncertain: pick {RELIABLE_BUBBLES} or more bubbles")
        return "\n".join(lines)
