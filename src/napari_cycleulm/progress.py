"""Progress reporting and cancellation for long computations.

Long operations are written as generators that yield :class:`Progress`
events and *return* their result.  The command line drives them with a
progress bar, napari runs them in a ``thread_worker`` (whose Stop button
closes the generator at the next yield), and scripts call :func:`drive`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress event.

    Attributes
    ----------
    done, total : int
        Units of work done so far and in all (frames for pipelines, steps for
        training).  ``total`` may be 0 when unknown.
    stage : str
        What is running, e.g. ``"localise"``.
    info : dict or None
        Optional extra payload (losses, a preview image...).
    """

    done: int
    total: int
    stage: str = ""
    info: dict | None = None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


def drive(
    gen: Generator[Progress, Any, T],
    callback: Callable[[Progress], Any] | None = None,
) -> T:
    """Run a progress generator to completion and return its result.

    Parameters
    ----------
    gen : generator
        A generator yielding :class:`Progress` and returning a value.
    callback : callable, optional
        Called with each event; return ``False`` to cancel (the generator is
        closed, so its ``finally`` clauses restore the last good state, and
        :class:`Cancelled` is raised).
    """
    try:
        while True:
            event = next(gen)
            if callback is not None and callback(event) is False:
                gen.close()
                raise Cancelled(f"cancelled during {event.stage or 'run'} at {event.done}/{event.total}")
    except StopIteration as stop:
        return stop.value


def drive_with_bar(gen: Generator[Progress, Any, T], desc: str = "", disable: bool = False) -> T:
    """Like :func:`drive`, with a tqdm progress bar on stderr."""
    from tqdm.auto import tqdm

    bar = tqdm(total=0, desc=desc, disable=disable, unit="", dynamic_ncols=True)
    try:

        def update(p: Progress) -> None:
            if p.total and bar.total != p.total:
                bar.reset(total=p.total)
            if p.stage:
                bar.set_description(f"{desc} {p.stage}".strip())
            bar.n = p.done
            bar.refresh()

        return drive(gen, update)
    finally:
        bar.close()


class Cancelled(RuntimeError):
    """Raised by :func:`drive` when the callback asked to stop."""
