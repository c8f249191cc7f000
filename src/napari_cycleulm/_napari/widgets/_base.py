"""The shape every CycleULM dock widget shares: parameters, Run/Stop, re-run mode, progress.

Every failure a user can cause ends as a notification saying what to do
(:func:`napari.utils.notifications.show_error`) and on the status line, never
as a console-only traceback: :meth:`StageWidget.start` checks the inputs on the
UI thread, errors in the worker come back through its ``errored`` signal, and
other buttons are wrapped with :meth:`StageWidget.guard`.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable, Generator

import napari
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info, show_warning

from ...errors import CycleULMError
from ...progress import Progress
from ._layers import RERUN_MODES

log = logging.getLogger(__name__)


def layer_choices(viewer: napari.Viewer, layer_type, allow_none: bool = False):
    """A ``choices`` callable listing the viewer's layers of ``layer_type``."""

    def choices(_widget=None):
        items = [(layer.name, layer) for layer in viewer.layers if isinstance(layer, layer_type)]
        return ([("(none)", None)] if allow_none else []) + items

    return choices


def unproxied(viewer: "napari.viewer.Viewer") -> "napari.viewer.Viewer":
    """The viewer behind napari's ``PublicOnlyProxy``.

    The Plugins menu hands widgets a proxy that wraps every attribute access in
    a *new* proxy, so ``viewer.layers[0] is viewer.layers[0]`` is False there.
    The widgets compare layers by identity (choosers, provenance), so they
    keep the viewer itself; a plain viewer is returned unchanged.
    """
    return getattr(viewer, "__wrapped__", viewer)


def error_message(exc: BaseException) -> str:
    """What the user is told: our own errors verbatim, others with their type."""
    if isinstance(exc, CycleULMError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class _WorkerFailure(Exception):
    """Carries a RuntimeError out of the worker thread.

    superqt's worker treats a RuntimeError from the generator as "the worker
    was deleted" and only warns, so the user would never hear of, say, a torch
    RuntimeError.  Wrapping it makes it reach ``errored`` like any other error.
    """

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


class StageWidget(Container):
    """Base dock widget: subclasses add parameter widgets and implement :meth:`work`.

    :meth:`work` returns a generator yielding :class:`Progress` and returning a
    result, which :meth:`done` turns into layers.  The generator runs in a
    napari ``thread_worker``; Stop asks it to finish at the next yield, and
    nothing is added or changed then.

    Attributes
    ----------
    rerun : ComboBox
        What running again does to the previous result layers
        (:data:`~._layers.RERUN_MODES`); read it as :attr:`rerun_mode`.
    last_error : str or None
        The message of the last failure (None after a clean start).
    """

    run_text = "Run"
    #: Whether this widget's results honour the re-run choice (shows the "re-run" chooser).
    offers_rerun_mode = True

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(labels=True)
        self.viewer = napari_viewer = unproxied(napari_viewer)
        self.worker: GeneratorWorker | None = None
        self.last_error: str | None = None
        self.run_button = PushButton(text=self.run_text)
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.rerun = ComboBox(
            label="re-run", choices=list(RERUN_MODES), value=RERUN_MODES[0],
            tooltip="running again: 'replace' updates the previous result layers made by CycleULM; "
                    "'add numbered' keeps them and adds '<name> (2)', '<name> (3)', ... "
                    "Layers you made yourself are never changed.",
        )
        self.rerun.visible = self.offers_rerun_mode
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="", label="status")
        self.run_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self._combos: list[ComboBox] = []
        events = napari_viewer.layers.events
        for event in (events.inserted, events.removed, events.renamed):
            event.connect(self._refresh_layers)

    @property
    def rerun_mode(self) -> str:
        """``"replace"`` or ``"add numbered"``: pass it as ``add_result(..., mode=...)``."""
        return self.rerun.value

    def layer_combo(self, label: str, layer_type, allow_none: bool = False) -> ComboBox:
        combo = ComboBox(label=label, choices=layer_choices(self.viewer, layer_type, allow_none))
        self._combos.append(combo)
        return combo

    def _refresh_layers(self, event=None) -> None:
        """Re-list the layer choosers (layers inserted, removed or renamed)."""
        for combo in self._combos:
            combo.reset_choices()

    def run_controls(self) -> list:
        """The re-run chooser, Run/Stop buttons, progress bar and status line."""
        buttons = Container(widgets=[self.run_button, self.stop_button], layout="horizontal", labels=False)
        return [self.rerun, buttons, self.progress, self.status]

    def finish_layout(self) -> None:
        """Append :meth:`run_controls` below the parameters."""
        self.extend(self.run_controls())

    # -- to implement ---------------------------------------------------------
    def work(self) -> Generator[Progress, None, object]:  # pragma: no cover - abstract
        raise NotImplementedError

    def done(self, result) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- errors -------------------------------------------------------------------
    def guard(self, func: Callable) -> Callable:
        """Wrap a button callback so that any failure becomes a notification (returns None then)."""

        @functools.wraps(func)
        def guarded(*args, **kwargs):
            self.last_error = None
            try:
                return func(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
                self._report(exc)
                return None

        return guarded

    def _report(self, exc: BaseException) -> None:
        if isinstance(exc, _WorkerFailure):
            exc = exc.original
        if not isinstance(exc, CycleULMError):
            log.error("".join(traceback.format_exception(exc)))
        self._fail(error_message(exc))

    def _fail(self, message: str) -> None:
        self.last_error = message
        self.status.value = f"error: {message}"
        show_error(message)

    # -- running ------------------------------------------------------------------
    def start(self, _=None) -> GeneratorWorker | None:
        """Validate inputs (on the UI thread, so errors show at once) and start the worker."""
        self.last_error = None
        if self.worker is not None:
            return None
        try:
            gen = self.work()
        except Exception as exc:  # noqa: BLE001 - bad input or an unexpected bug: tell the user
            self._report(exc)
            return None
        # _ignore_errors: errors go to _on_error (a notification), not re-raised in the event loop.
        self.worker = create_worker(_as_generator_function(gen), _start_thread=False, _ignore_errors=True)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_error)
        self.worker.warned.connect(self._on_warning)
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
        except Exception as exc:  # noqa: BLE001 - a failure while adding layers is reported too
            self._report(exc)

    def _on_error(self, exc: Exception) -> None:
        self._report(exc)

    def _on_warning(self, args: tuple) -> None:
        """A ``warnings.warn`` in the worker (e.g. a PSF outside a network's training range)."""
        show_warning(str(args[0]))

    def _on_finished(self) -> None:
        self.run_button.enabled = True
        self.stop_button.enabled = False
        if self.worker is not None and self.worker.abort_requested:
            self.status.value = "stopped; nothing was changed"
            show_info(f"{type(self).__name__.replace('Widget', '')}: stopped")
        self.worker = None


def _as_generator_function(gen: Generator) -> Callable[[], Generator]:
    def run():
        try:
            return (yield from gen)
        except RuntimeError as exc:
            raise _WorkerFailure(exc) from exc

    return run
