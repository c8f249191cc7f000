"""A small shared chooser for the CycleULM networks: default weights, a file, or a trained model.

Models trained in this viewer (the 'Fine-tune MB-DT' widget) are recorded in
the metadata of the CEUS layer they were trained on, under
:data:`MODELS_METADATA_KEY` (``{kind: path}``); every picker of that kind
offers them as ``trained on <layer>: <file>``.  Keeping the record on the
layer keeps it with the data it belongs to and needs no global state.
"""

from __future__ import annotations

from pathlib import Path

import napari
from magicgui.widgets import ComboBox, FileEdit, Label
from qtpy.QtCore import QEvent, QObject

from ...dl.checkpoint import Checkpoint
from ...errors import CycleULMError
from ...dl.models import DEFAULT_WEIGHTS, load_model
from ...dl.nets import DISPLAY_NAMES

#: Layer metadata key: ``{kind: checkpoint path}`` of models trained on that layer.
MODELS_METADATA_KEY = "cycleulm_models"

DEFAULT = "default"
FILE = "file"


def trained_models(viewer: napari.Viewer | None, kind: str) -> list[tuple[str, str]]:
    """``(label, path)`` of the ``kind`` models recorded in the viewer's layers."""
    if viewer is None:
        return []
    out = []
    for layer in viewer.layers:
        path = (layer.metadata.get(MODELS_METADATA_KEY) or {}).get(kind)
        if path:
            out.append((f"trained on {layer.name}: {Path(path).name}", str(path)))
    return out


def record_trained_model(layer, kind: str, path) -> None:
    """Record ``path`` as the ``kind`` model trained on ``layer`` (see the module notes)."""
    models = dict(layer.metadata.get(MODELS_METADATA_KEY) or {})
    models[kind] = str(path)
    layer.metadata = {**layer.metadata, MODELS_METADATA_KEY: models}


class _RefreshOnOpen(QObject):
    """Re-list the choices when the user opens the drop-down (metadata changes emit no layer event)."""

    def __init__(self, picker: ModelPicker):
        super().__init__(picker.choice.native)
        self._picker = picker

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.MouseButtonPress:
            self._picker.reset_choices()
        return False


class ModelPicker:
    """``model``: default weights / load file... / trained models, and a line saying which is active.

    Not a Container of its own: its widgets (:attr:`widgets`) go straight into
    the dock widget, so their labels line up with the other parameters.

    Parameters
    ----------
    kind : {"mbdt", "mblnet", "mbtnet"}
        The network this picker chooses.
    viewer : napari.Viewer, optional
        Where trained models are looked up (layer metadata).
    label : str
        Label of the chooser.
    """

    def __init__(self, kind: str, viewer: napari.Viewer | None = None, label: str = "model"):
        self.kind = kind
        self.viewer = viewer
        self.name_ = DISPLAY_NAMES[kind]
        self._visible = True
        self.choice = ComboBox(label=label, choices=self._choices, value=DEFAULT,
                               tooltip=f"which {self.name_} weights to use")
        self.file = FileEdit(label=f"{self.name_} file", mode="r", filter="*.pt", visible=False)
        self.active = Label(value="", label=f"active {self.name_}")
        self.widgets = [self.choice, self.file, self.active]
        self.choice.changed.connect(self._update)
        self.file.changed.connect(self._update)
        self._refresher = _RefreshOnOpen(self)
        self.choice.native.installEventFilter(self._refresher)
        self._update()

    @property
    def visible(self) -> bool:
        return self._visible

    @visible.setter
    def visible(self, value: bool) -> None:
        self._visible = bool(value)
        self._update()

    def _choices(self, _widget=None) -> list[tuple[str, str]]:
        return [("default weights", DEFAULT), ("load file...", FILE)] + trained_models(self.viewer, self.kind)

    def reset_choices(self, *_) -> None:
        self.choice.reset_choices()
        self._update()

    # -- state ------------------------------------------------------------------
    def use_file(self, path) -> None:
        """Select ``path`` (a checkpoint file) as the model."""
        self.choice.value = FILE
        self.file.value = Path(path)

    def _file_path(self) -> Path | None:
        value = self.file.value
        if value is None or str(value) in ("", "."):
            return None
        return Path(value)

    def _update(self, _=None) -> None:
        mode = self.choice.value
        self.choice.visible = self.active.visible = self._visible
        self.file.visible = self._visible and mode == FILE
        if mode == DEFAULT:
            path = DEFAULT_WEIGHTS[self.kind]
            text = f"default: {path.name}" if path.is_file() else f"default: not shipped ({path.name} missing)"
        elif mode == FILE:
            path = self._file_path()
            text = "choose a checkpoint file" if path is None else str(path)
        else:
            text = str(mode)
        self.active.value = text
        self.active.tooltip = text

    def source(self) -> str | Path:
        """The model source for :func:`~napari_cycleulm.dl.models.load_model` ("default" or a path).

        Raises
        ------
        CycleULMError
            When "load file..." is chosen but no file is given.
        """
        mode = self.choice.value
        if mode == DEFAULT or mode is None:
            return DEFAULT
        if mode == FILE:
            path = self._file_path()
            if path is None:
                raise CycleULMError(
                    f"no {self.name_} checkpoint file chosen: pick a .pt file or choose 'default weights'."
                )
            return path
        return Path(mode)

    def load(self, device=None) -> Checkpoint:
        """Load the chosen model (on the UI thread, so a bad file is reported at once)."""
        return load_model(self.kind, self.source(), device=device)
