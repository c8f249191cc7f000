"""The CycleULM workflow dock: the ULM stages in order, each saying what it needs.

A researcher who knows napari but not this library opens this dock first.
It walks the stages: 1 Data, 2 PSF, 3 Fine-tune MB-DT (optional), 4 Pipeline,
5 Render, 6 Evaluate, 7 Export.  Each stage has a status line saying what it
needs and whether that is satisfied (``✓`` ready, ``✗`` missing, ``○``
optional or automatic).  The dock only reads layers and calls the core: the
pipeline runs exactly as in the "Run a ULM pipeline" widget
(:func:`~.pipeline_widget.pipeline_job`, :func:`~.pipeline_widget.add_pipeline_layers`),
and the detailed tools (PSF, fine-tuning, render, evaluation, export) open
as their own docks exactly as the Plugins menu opens them
(``viewer.window.add_plugin_dock_widget``), with this dock's CEUS stack
chosen in them.

Statuses are refreshed when layers are inserted, removed or renamed, when a
layer's metadata changes (a PSF estimated again, a model fine-tuned), and
after runs.
"""

from __future__ import annotations

from pathlib import Path

import napari
from magicgui.widgets import ComboBox, Container, Label, PushButton, SpinBox
from napari.layers import Image, Layer
from qtpy.QtWidgets import QGroupBox, QVBoxLayout

from .. import sample_data as _sample_data
from ...errors import CycleULMError
from ...dl.models import DEFAULT_WEIGHTS
from ...dl.nets import DISPLAY_NAMES
from ...pipeline import PIPELINES
from ...psf import PSF
from ._base import StageWidget
from ._layers import GENERATED_KEY, PSF_METADATA_KEY, is_sr_map, origin_of, result_name
from ._model_picker import DEFAULT, FILE, MODELS_METADATA_KEY, ModelPicker
from .pipeline_widget import add_pipeline_layers, clutter_controls, describe_result, pipeline_job

OK, MISSING, OPTIONAL = "✓", "✗", "○"

#: The plugin name under which napari lists our widgets (``napari.yaml``).
PLUGIN_NAME = "napari-cycleulm"

#: The tool docks this dock opens: key -> widget display name in ``napari.yaml``.
TOOLS = {
    "psf": "Estimate PSF",
    "train": "Fine-tune MB-DT",
    "render": "Render SR maps",
    "evaluate": "Evaluate",
    "export": "Export",
}

def is_ceus_layer(layer: Layer) -> bool:
    """A layer the pipelines can read: a grey (T, H, W) Image that CycleULM did not make."""
    return (
        isinstance(layer, Image)
        and not layer.rgb
        and not layer.multiscale
        and layer.data.ndim == 3
        and not layer.metadata.get(GENERATED_KEY, False)
        and PSF_METADATA_KEY not in layer.metadata
    )


def is_psf_layer(layer: Layer) -> bool:
    """A layer holding the CEUS PSF (not the MB-only one, which the pipelines would shrink again)."""
    return PSF_METADATA_KEY in layer.metadata and "shrink" not in layer.metadata


def psf_summary(layer: Layer) -> str:
    """``"FWHM 4.1 x 6.3 px from 20 bubbles"`` (axial x lateral) for a PSF layer."""
    psf = PSF.from_dict(layer.metadata[PSF_METADATA_KEY], source=f"layer {layer.name!r}")
    text = f"FWHM {psf.fwhm_y_px:.1f} x {psf.fwhm_x_px:.1f} px"
    if psf.n_bubbles:
        text += f" from {psf.n_bubbles} bubbles"
    return text


class WorkflowWidget(StageWidget):
    """The main CycleULM dock: data -> PSF -> (fine-tune) -> pipeline -> render -> evaluate -> export.

    Attributes
    ----------
    image, psf_layer, pipeline : ComboBox
        The CEUS stack, the PSF (``None`` = estimate automatically) and the pipeline.
    mbdt : ModelPicker
        The MB-DT model the CycleULM pipelines use.
    block_size, upsampling : SpinBox
        Pipeline parameters.
    data_status, psf_status, mbdt_status, pipeline_status, render_status,
    evaluate_status, export_status : Label
        One line per stage: what it needs and whether it is satisfied.
    docks : dict
        ``{key: widget}`` of the tool docks opened from here.
    """

    run_text = "Run pipeline"

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self._refreshing = False
        self._seen_models: set[str] = set()
        self.docks: dict[str, Container] = {}

        # 1 Data
        self.image = ComboBox(label="CEUS stack", choices=self._data_choices,
                              tooltip="the (frames, height, width) contrast-enhanced ultrasound stack")
        self.load_sample_button = PushButton(text="Load sample")
        self.data_status = self._status_label()
        # 2 PSF
        self.psf_layer = ComboBox(label="PSF", choices=self._psf_choices,
                                  tooltip="the '<stack> PSF' layer made by the PSF tool, or automatic")
        self.psf_button = PushButton(text="Open PSF tool")
        self.psf_status = self._status_label()
        # 3 Fine-tune MB-DT
        self.mbdt = ModelPicker("mbdt", self.viewer, label="MB-DT model")
        self.train_button = PushButton(text="Open fine-tuning tool")
        self.mbdt_status = self._status_label()
        # 4 Pipeline
        self.pipeline = ComboBox(
            label="pipeline", value="baseline1",
            choices=[(f"{name}: {spec.description}", name) for name, spec in PIPELINES.items()],
        )
        self.block_size = SpinBox(label="block size (frames)", value=200, min=8, max=100000,
                                  tooltip="frames processed at a time; memory grows with it")
        self.upsampling = SpinBox(label="upsampling", value=4, min=1, max=16,
                                  tooltip="SR pixels per CEUS pixel along each axis")
        self.clutter_filter, self.svd_block = clutter_controls()
        self.pipeline_status = self._status_label("needs")
        # 5 Render
        self.render_button = PushButton(text="Open Render tool")
        self.render_status = self._status_label()
        # 6 Evaluate, 7 Export
        self.evaluate_button = PushButton(text="Open evaluation")
        self.evaluate_status = self._status_label()
        self.export_button = PushButton(text="Open export")
        self.export_status = self._status_label()
        self._combos += [self.image, self.psf_layer, self.mbdt]

        self._section("1  Data", [self.image, self.load_sample_button, self.data_status])
        self._section("2  PSF", [self.psf_layer, self.psf_button, self.psf_status])
        self._section("3  Fine-tune MB-DT (optional)", [*self.mbdt.widgets, self.train_button, self.mbdt_status])
        self._section("4  Pipeline", [self.pipeline, self.clutter_filter, self.svd_block, self.block_size,
                                      self.upsampling, self.pipeline_status,
                                      *self.run_controls()])
        self._section("5  Render", [self.render_status, self.render_button])
        self._section("6  Evaluate", [self.evaluate_status, self.evaluate_button])
        self._section("7  Export", [self.export_status, self.export_button])
        self.native.layout().addStretch(1)

        self.load_sample_button.changed.connect(self.guard(self.load_sample))
        self.psf_button.changed.connect(self.guard(self.open_psf_tool))
        self.train_button.changed.connect(self.guard(self.open_train_tool))
        self.render_button.changed.connect(self.guard(self.open_render_tool))
        self.evaluate_button.changed.connect(self.guard(self.open_evaluate_tool))
        self.export_button.changed.connect(self.guard(self.open_export_tool))
        for widget in (self.image, self.psf_layer, self.pipeline, self.mbdt.choice, self.mbdt.file):
            widget.changed.connect(self.refresh_status)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self._on_removed)
        for layer in self.viewer.layers:
            layer.events.metadata.connect(self._on_metadata)
        self.refresh_status()

    # -- layout ---------------------------------------------------------------
    @staticmethod
    def _status_label(label: str = "status") -> Label:
        label = Label(value="", label=label)
        label.native.setWordWrap(True)
        return label

    def _section(self, title: str, widgets: list) -> Container:
        """A titled group of widgets, stacked under the previous one."""
        box = Container(widgets=widgets, labels=True)
        group = QGroupBox(title)
        layout = QVBoxLayout(group)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(box.native)
        self.native.layout().addWidget(group)
        return box

    # -- choices --------------------------------------------------------------
    def _data_choices(self, _widget=None):
        return [(layer.name, layer) for layer in self.viewer.layers if is_ceus_layer(layer)]

    def _psf_choices(self, _widget=None):
        return [("auto: estimate from isolated bubbles", None)] + [
            (layer.name, layer) for layer in self.viewer.layers if is_psf_layer(layer)
        ]

    # -- layer events ---------------------------------------------------------------
    def _on_inserted(self, event) -> None:
        layer = event.value
        layer.events.metadata.connect(self._on_metadata)
        data = self.image.value
        # A PSF just estimated for the chosen stack is what the user wants the pipeline to use.
        if data is not None and is_psf_layer(layer) and (
            layer.name == result_name(data.name, "PSF") or origin_of(layer)[0] == data.name
        ):
            self.psf_layer.reset_choices()
            self.psf_layer.value = layer
        self.refresh_status()

    def _on_removed(self, event) -> None:
        event.value.events.metadata.disconnect(self._on_metadata)
        self.refresh_status()

    def _on_metadata(self, event=None) -> None:
        self._refresh_layers(event)

    def _refresh_layers(self, event=None) -> None:
        self._refreshing = True
        try:
            super()._refresh_layers(event)
        finally:
            self._refreshing = False
        self.refresh_status()

    def _fine_tuned_path(self) -> str | None:
        data = self.image.value
        if data is None:
            return None
        return (data.metadata.get(MODELS_METADATA_KEY) or {}).get("mbdt")

    def _select_new_fine_tuned_model(self) -> None:
        """Use an MB-DT fine-tuned on the chosen stack as soon as it is recorded there (once)."""
        path = self._fine_tuned_path()
        if path and path not in self._seen_models:
            self._seen_models.add(path)
            self.mbdt.reset_choices()
            self.mbdt.choice.value = path

    # -- statuses -------------------------------------------------------------------
    def refresh_status(self, _=None) -> None:
        """Recompute every stage's status line from the layers and choices."""
        if self._refreshing:
            return
        self._refreshing = True
        try:
            self._select_new_fine_tuned_model()
            self.data_status.value = self._data_text()
            self.psf_status.value = self._psf_text()
            self.mbdt_status.value = self._mbdt_text()
            self.pipeline_status.value = self._pipeline_text()
            self.render_status.value = self._render_text()
            self.evaluate_status.value = f"{OPTIONAL} compare the SR maps with the ground truth or between pipelines"
            self.export_status.value = f"{OPTIONAL} save SR maps, tables and the run's parameters"
        finally:
            self._refreshing = False

    def _data_text(self) -> str:
        layer = self.image.value
        if layer is None:
            return (f"{MISSING} needs a CEUS stack (frames, height, width): open one (File > Open) "
                    "or press 'Load sample'")
        t, h, w = layer.data.shape
        px = layer.metadata.get("pixel_size_um")
        fr = layer.metadata.get("frame_rate_hz")
        units = [f"pixel {px:g} µm" if px else "pixel size unknown",
                 f"{fr:g} Hz" if fr else "frame rate unknown"]
        text = f"{OK} {t} frames of {h} x {w} px; " + ", ".join(units)
        if not (px and fr):
            text += " (velocities in px/frame; set pixel_size_um / frame_rate_hz in the layer metadata for mm/s)"
        return text

    def _psf_text(self) -> str:
        layer = self.psf_layer.value
        if layer is None:
            return (f"{OPTIONAL} PSF: not estimated; the pipeline will estimate it automatically ('auto'). "
                    "To check it by eye, press 'Open PSF tool', estimate, and its '<stack> PSF' layer is used.")
        try:
            return f"{OK} PSF: {psf_summary(layer)}"
        except CycleULMError as exc:
            return f"{MISSING} PSF layer {layer.name!r} is not usable: {exc}"

    def _uses(self, kind: str) -> bool:
        return kind in PIPELINES[self.pipeline.value].networks

    def _model_text(self) -> tuple[bool, str]:
        """Whether the chosen MB-DT exists, and which it is."""
        mode = self.mbdt.choice.value
        if mode == DEFAULT or mode is None:
            path = DEFAULT_WEIGHTS["mbdt"]
            return path.is_file(), f"default weights ({path.name})" if path.is_file() else \
                f"default weights are not shipped ({path.name} missing): fine-tune one or choose a file"
        if mode == FILE:
            path = self.mbdt._file_path()
            if path is None:
                return False, "choose a checkpoint file"
            return path.is_file(), f"checkpoint file {path}" + ("" if path.is_file() else " (missing)")
        path = Path(mode)
        ours = self._fine_tuned_path()
        where = f" (fine-tuned on {self.image.value.name!r})" if ours and Path(ours) == path else " (fine-tuned)"
        return path.is_file(), f"{path.name}{where}" + ("" if path.is_file() else " (missing)")

    def _mbdt_text(self) -> str:
        ok, what = self._model_text()
        if not self._uses("mbdt"):
            return f"{OPTIONAL} MB-DT: {what}; not used by {self.pipeline.value} (only by the cycleulm-* pipelines)"
        text = f"{OK if ok else MISSING} MB-DT: {what}"
        ours = self._fine_tuned_path()
        if ok and ours and self.mbdt.choice.value != ours:
            text += "; a model fine-tuned on this stack is in the list"
        return text

    def _pipeline_text(self) -> str:
        needs = []
        if self.image.value is None:
            needs.append("a CEUS stack (step 1)")
        if self.psf_layer.value is not None and self.psf_status.value.startswith(MISSING):
            needs.append("a usable PSF (step 2)")
        if self._uses("mbdt") and not self._model_text()[0]:
            needs.append("an MB-DT model (step 3)")
        for kind in PIPELINES[self.pipeline.value].networks:
            if kind != "mbdt" and not DEFAULT_WEIGHTS[kind].is_file():
                needs.append(f"{DISPLAY_NAMES[kind]} default weights ({DEFAULT_WEIGHTS[kind].name})")
        if needs:
            return f"{MISSING} needs " + ", ".join(needs)
        psf = "its PSF layer" if self.psf_layer.value is not None else "an automatic PSF"
        return f"{OK} ready: {self.pipeline.value} on {self.image.value.name!r} with {psf}"

    def sr_layers(self) -> list[Layer]:
        """The SR map layers made from the chosen CEUS stack."""
        data = self.image.value
        if data is None:
            return []
        return [layer for layer in self.viewer.layers if is_sr_map(layer) and origin_of(layer)[0] == data.name]

    def _render_text(self) -> str:
        layers = self.sr_layers()
        if not layers:
            return (f"{MISSING} no SR map yet: run a pipeline (step 4), or render a tracks layer "
                    "with the Render tool")
        return f"{OK} SR maps: " + "; ".join(layer.name for layer in layers)

    # -- buttons ---------------------------------------------------------------------
    def load_sample(self, _=None) -> Image:
        """Add the simulated sample (CEUS stack and hidden ground truth) and choose it."""
        self.status.value = "simulating the sample..."
        image = None
        for data, kwargs, kind in _sample_data.make_sample():
            layer = getattr(self.viewer, f"add_{kind}")(data, **kwargs)
            if kind == "image":
                image = layer
        self.image.reset_choices()
        self.image.value = image
        self.status.value = f"sample loaded as {image.name!r}"
        return image

    def open_dock(self, key: str) -> Container:
        """Open the tool ``key`` of :data:`TOOLS` as the Plugins menu does, with this stack chosen.

        napari makes the dock once (injecting the viewer) and shows the same
        one again when it is already docked; a dock the user closed is made anew.
        """
        dock, widget = self.viewer.window.add_plugin_dock_widget(PLUGIN_NAME, TOOLS[key])
        dock.show()
        dock.raise_()
        self._preselect(widget)
        self.docks[key] = widget
        return widget

    def _preselect(self, widget) -> None:
        """Choose this dock's CEUS stack (and PSF) in a tool's layer choosers, when it offers them."""
        data = self.image.value
        for attr, value in (("image", data), ("reference", data), ("raw", data), ("psf_layer", self.psf_layer.value)):
            combo = getattr(widget, attr, None)
            if value is None or not isinstance(combo, ComboBox):
                continue
            combo.reset_choices()
            if any(choice is value for choice in combo.choices):
                combo.value = value

    def open_psf_tool(self, _=None):
        if self.image.value is None:
            raise CycleULMError("choose a CEUS stack first (step 1): the PSF is measured on its bubbles.")
        return self.open_dock("psf")

    def open_train_tool(self, _=None):
        if self.image.value is None:
            raise CycleULMError("choose a CEUS stack first (step 1): MB-DT is fine-tuned on it.")
        return self.open_dock("train")

    def open_render_tool(self, _=None):
        return self.open_dock("render")

    def open_evaluate_tool(self, _=None):
        return self.open_dock("evaluate")

    def open_export_tool(self, _=None):
        return self.open_dock("export")

    # -- running ---------------------------------------------------------------------
    def work(self):
        layer = self.image.value
        models = {"mbdt": self.mbdt.source()} if self._uses("mbdt") else {}
        gen, self._extra = pipeline_job(layer, self.pipeline.value, self.psf_layer.value,
                                        block_size=self.block_size.value, upsampling=self.upsampling.value,
                                        models=models, clutter_filter=self.clutter_filter.value,
                                        svd_block=self.svd_block.value)
        self._source = layer
        return gen

    def done(self, result) -> None:
        add_pipeline_layers(self.viewer, self._source, result, mode=self.rerun_mode, extra_params=self._extra)
        self.status.value = describe_result(result)
        self.refresh_status()

    def _on_finished(self) -> None:
        super()._on_finished()
        self.refresh_status()


__all__ = ["PLUGIN_NAME", "TOOLS", "WorkflowWidget", "is_ceus_layer", "is_psf_layer", "psf_summary"]
