"""One reusable embedded matplotlib plot for the dock widgets, with a "Save PNG..." button.

Usage::

    panel = PlotPanel(title="profile")
    container.native.layout().addWidget(panel.native)   # or container.append(panel)
    panel.plot(lambda ax: ax.plot(x, y))                 # draw (themed like napari)
    panel.save_png("profile.png")                        # what the button does, atomically

A drawing function given to :meth:`PlotPanel.plot` is kept, so the saved PNG
is redrawn on a white background for papers (``light=True``) instead of
napari's dark theme.  Widgets that update artists directly (e.g. a live loss
plot) use :attr:`ax` and :meth:`redraw`; they are saved as shown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from magicgui.widgets import Container, PushButton
from napari.utils.notifications import show_error, show_info

from ..._atomic import atomic_path
from ...errors import CycleULMError

log = logging.getLogger(__name__)

#: napari's dark theme: text / axes colour and background.
DARK_FG, DARK_BG = "#d6d6d6", "#262930"


def style_axes(ax, fg: str, bg: str) -> None:
    """Colour an Axes (and its legend) for a theme."""
    ax.set_facecolor(bg)
    ax.tick_params(colors=fg, labelsize=8)
    for spine in ax.spines.values():
        spine.set_color(fg)
    ax.xaxis.label.set_color(fg)
    ax.yaxis.label.set_color(fg)
    ax.title.set_color(fg)
    ax.title.set_fontsize(9)
    legend = ax.get_legend()
    if legend is not None:
        legend.get_frame().set_facecolor(bg)
        legend.get_frame().set_edgecolor(fg)
        for text in legend.get_texts():
            text.set_color(fg)


class PlotPanel(Container):
    """A matplotlib canvas (``FigureCanvasQTAgg``) with a "Save PNG..." button.

    Parameters
    ----------
    title : str
        Used in the default file name of the save dialog.
    height : int
        Minimum canvas height in pixels.
    figsize : (float, float)
        Figure size in inches (the saved PNG uses it at ``dpi``).
    """

    def __init__(self, title: str = "plot", height: int = 230, figsize=(4.0, 2.6)):
        super().__init__(labels=False)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.title = title
        self.figure = Figure(figsize=figsize, dpi=90, facecolor=DARK_BG, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(height)
        self.ax = self.figure.add_subplot(111)
        style_axes(self.ax, DARK_FG, DARK_BG)
        self.save_button = PushButton(text="Save PNG...", enabled=False,
                                      tooltip="save this plot as a PNG (white background)")
        self.save_button.changed.connect(self._on_save)
        self.append(self.save_button)
        self.native.layout().insertWidget(0, self.canvas)  # the plot above its button
        self._draw: Callable | None = None
        self.last_saved: Path | None = None

    # -- drawing ------------------------------------------------------------------
    def plot(self, draw: Callable) -> None:
        """Clear the axes, call ``draw(ax)`` and show it in napari's theme."""
        self._draw = draw
        self.ax.clear()
        draw(self.ax)
        style_axes(self.ax, DARK_FG, DARK_BG)
        self.save_button.enabled = True
        self.redraw()

    def redraw(self) -> None:
        """Refresh the canvas after changing :attr:`ax` directly."""
        self.save_button.enabled = True
        self.canvas.draw_idle()

    def clear(self) -> None:
        self._draw = None
        self.ax.clear()
        style_axes(self.ax, DARK_FG, DARK_BG)
        self.save_button.enabled = False
        self.canvas.draw_idle()

    # -- saving -------------------------------------------------------------------
    def save_png(self, path, dpi: int = 200, light: bool = True) -> Path:
        """Write the plot as a PNG, atomically.

        With ``light`` and a drawing function from :meth:`plot`, the plot is
        redrawn on a white background (for papers); otherwise the figure is
        saved as shown.  A missing ``.png`` suffix is added.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        p = Path(path)
        if p.suffix.lower() != ".png":
            p = p.with_name(p.name + ".png")
        if light and self._draw is not None:
            fig = Figure(figsize=self.figure.get_size_inches(), dpi=dpi, layout="constrained")
            FigureCanvasAgg(fig)
            ax = fig.add_subplot(111)
            self._draw(ax)
            style_axes(ax, "black", "white")
        else:
            fig = self.figure
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, facecolor=fig.get_facecolor())
        self.last_saved = p
        return p

    def ask_path(self) -> str | None:
        """Ask where to save (a file dialog); tests replace this method."""
        from qtpy.QtWidgets import QFileDialog

        default = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.title) + ".png"
        path, _ = QFileDialog.getSaveFileName(self.native, "Save plot as PNG", default, "PNG (*.png)")
        return path or None

    def _on_save(self, _=None) -> None:
        path = self.ask_path()
        if not path:
            return
        try:
            written = self.save_png(path)
        except (OSError, CycleULMError) as exc:
            show_error(f"could not save the plot to {path}: {exc}")
            return
        show_info(f"plot saved to {written}")
