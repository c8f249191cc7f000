"""The shape every CycleULM dock widget shares: parameters, Run/Stop, progress."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Generator

import napari
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info

from ..errors import CycleULMError
from ..progress import Progress

log = logging.getLogger(__name__)


def layer_choices(viewer: napari.Viewer, layer_type, allow_none: bool = False):
    """A ``choices`` callable listing the viewer's layers of ``layer_type``."""

    def choices(_widget=None):
        items = [(layer.name, layer) for layer in viewer.layers if isinstance(layer, layer_type)]
        return ([("(none)", None)] if allow_none else []) + items

    return choices


class StageWidget(Container):
    """Base dock widget: subclasses add parameter widgets and implement :meth:`work`.

    :meth:`work` returns a generator yielding :class:`Progress` and returning a
    result, which :meth:`done` turns into layers.  The generator runs in a
    napari ``thread_worker``; Stop asks it to finish at the next yield.
    """

    run_text = "Run"

    def __init__(self, viewer: napari.Viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.worker: GeneratorWorker | None = None
        self.last_error: str | None = None
        self.run_button = PushButton(text=self.run_text)
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="", label="status")
        self.run_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self._combos: list[ComboBox] = []
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh_layers)

    def layer_combo(self, label: str, layer_type, allow_none: bool = False) -> ComboBox:
        combo = ComboBox(label=label, choices=layer_choices(self.viewer, layer_type, allow_none))
        self._combos.append(combo)
        return combo

    def _refresh_layers(self, event=None) -> None:
        for combo in self._combos:
            combo.reset_choices()

    def finish_layout(self) -> None:
        """Append the Run/Stop buttons, progress bar and status line."""
        buttons = Container(widgets=[self.run_button, self.stop_button], layout="horizontal", labels=False)
        self.extend([buttons, self.progress, self.status])

    # -- to implement ---------------------------------------------------------
    def work(self) -> Generator[Progress, None, object]:  # pragma: no cover - abstract
        raise NotImplementedError

    def done(self, result) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- running ------------------------------------------------------------------
    def start(self, _=None) -> GeneratorWorker | None:
        """Validate inputs (on the UI thread, so errors show at once) and start the worker."""
        self.last_error = None
        try:
            gen = self.work()
        except CycleULMError as exc:
            self._fail(str(exc))
            return None
        self.worker = create_worker(_as_generator_function(gen), _start_thread=False)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.run_button.enabled = False
        self.stop_button.enabled = True
        self.status.value = "running..."
        self.progress.value = 0
        self.worker.start()
        return self.worker

    def stop(self, _=None) -> None:
        if self.worker is not None:
            self.status.value = "stopping..."
            self.worker.quit()

    def _on_progress(self, p: Progress) -> None:
        if p.total:
            self.progress.max = p.total
            self.progress.value = min(p.done, p.total)
        if p.stage:
            self.status.value = f"{p.stage} {p.done}/{p.total}" if p.total else p.stage

    def _on_returned(self, result) -> None:
        try:
            self.done(result)
        except CycleULMError as exc:
            self._fail(str(exc))

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, CycleULMError):
            self._fail(str(exc))
        else:
            log.error("".join(traceback.format_exception(exc)))
            self._fail(f"{type(exc).__name__}: {exc}")

    def _on_finished(self) -> None:
        self.run_button.enabled = True
        self.stop_button.enabled = False
        if self.worker is not None and self.worker.abort_requested:
            self.status.value = "stopped; nothing was changed"
            show_info(f"{type(self).__name__.replace('Widget', '')}: stopped")
        self.worker = None

    def _fail(self, message: str) -> None:
        self.last_error = message
        self.status.value = f"error: {message}"
        show_error(message)


def _as_generator_function(gen: Generator) -> Callable[[], Generator]:
    def run():
        return (yield from gen)

    return run
