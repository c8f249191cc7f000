"""Helpers for the GUI tests."""

from __future__ import annotations


def wait_for_worker(qtbot, widget, timeout: int = 120_000) -> None:
    """Wait until the widget's worker has finished.

    Waits on the widget's own state (cleared by its ``finished`` handler, which
    is connected before the worker starts) rather than on ``worker.finished``
    itself: a worker that stops at once can emit ``finished`` before a
    ``qtbot.waitSignal`` made afterwards is listening.
    """
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def run_widget(qtbot, widget, timeout: int = 120_000):
    """Start a StageWidget, wait until its worker has finished, and check it did not fail."""
    worker = widget.start()
    assert worker is not None, widget.last_error
    wait_for_worker(qtbot, widget, timeout)
    assert widget.last_error is None, widget.last_error
    return worker


def elide_middle(name: str, chars: int = 25) -> str:
    """What napari's layer list shows of a long layer name: its start and its end.

    napari 0.9.2's layer delegate elides names in the middle
    (``Qt.TextElideMode.ElideMiddle``); a list about 250 px wide shows about
    25 characters, about 12 on each side of the ellipsis.
    """
    if len(name) <= chars:
        return name
    head = (chars - 1) // 2
    return name[:head] + "…" + name[-(chars - 1 - head):]
