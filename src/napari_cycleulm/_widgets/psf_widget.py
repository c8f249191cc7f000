"""Estimate the PSF from bubbles clicked in a Points layer (or picked automatically)."""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import FloatSpinBox, Label, PushButton
from napari.layers import Image, Points

from ..progress import Progress
from ..psf import estimate_psf, pick_isolated_bubbles
from ._base import StageWidget
from ._layers import PSF_METADATA_KEY, add_or_replace, frames_from_layer, localisations_from_points


class PSFWidget(StageWidget):
    """Click isolated bubbles (a Points layer in (frame, y, x)), press Estimate.

    Produces ``<input> PSF`` (the mean re-centred bubble) and ``<input> MB-only
    PSF`` (the Gaussian fit shrunk by the factor) as Image layers; both carry
    the PSF in their metadata for the other widgets.
    """

    run_text = "Estimate"

    def __init__(self, viewer: napari.Viewer):
        super().__init__(viewer)
        self.image = self.layer_combo("CEUS", Image)
        self.points = self.layer_combo("bubbles", Points)
        self.pixel_size_um = FloatSpinBox(
            label="pixel size (um)", value=0.0, min=0.0, max=1e4, step=1.0,
            tooltip="0 = unknown; read from the layer metadata when present",
        )
        self.shrink = FloatSpinBox(label="MB-only shrink", value=0.5, min=0.1, max=1.0, step=0.05)
        self.auto_button = PushButton(text="Auto-pick bubbles")
        self.auto_button.changed.connect(self.auto_pick)
        self.result = Label(value="PSF: not estimated", label="result")
        self.psf = None
        self.extend([self.image, self.points, self.pixel_size_um, self.shrink, self.auto_button, self.result])
        self.finish_layout()
        self.image.changed.connect(self._pixel_size_from_layer)
        self._pixel_size_from_layer()

    def _pixel_size_from_layer(self, _=None) -> None:
        layer = self.image.value
        if layer is not None and layer.metadata.get("pixel_size_um"):
            self.pixel_size_um.value = float(layer.metadata["pixel_size_um"])

    def auto_pick(self, _=None) -> Points | None:
        """Propose isolated bubbles as an editable Points layer."""
        try:
            frames = frames_from_layer(self.image.value)
            pts = pick_isolated_bubbles(frames, n=20)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
            self._fail(str(exc))
            return None
        layer = add_or_replace(
            self.viewer, "points", np.asarray(pts, float), f"{self.image.value.name} PSF bubbles",
            size=4, face_color="transparent", border_color="yellow", border_width=0.15,
        )
        self._refresh_layers()
        self.points.value = layer
        self.status.value = f"{len(pts)} isolated bubbles proposed: delete any you dislike, then Estimate"
        return layer

    def work(self):
        frames = frames_from_layer(self.image.value)
        points = localisations_from_points(self.points.value)
        px = self.pixel_size_um.value or None

        def run():
            yield Progress(0, 1, "estimating")
            est = estimate_psf(frames, points, pixel_size_um=px)
            yield Progress(1, 1, "estimating")
            return est

        return run()

    def done(self, est) -> None:
        psf = est.psf
        self.psf = psf
        self.estimate = est
        name = self.image.value.name if self.image.value is not None else "CEUS"
        meta = {PSF_METADATA_KEY: psf.to_dict()}
        measured = psf.measured if psf.measured is not None else psf.kernel
        add_or_replace(self.viewer, "image", np.asarray(measured), f"{name} PSF",
                       colormap="magma", metadata=meta, visible=False)
        mb = psf.shrink(self.shrink.value)
        add_or_replace(self.viewer, "image", mb.kernel, f"{name} MB-only PSF", colormap="magma",
                       metadata={PSF_METADATA_KEY: mb.to_dict(), "shrink": self.shrink.value}, visible=False)
        text = f"FWHM y {psf.fwhm_y_px:.2f} px, x {psf.fwhm_x_px:.2f} px"
        if psf.pixel_size_um:
            text += f" ({psf.fwhm_y_px * psf.pixel_size_um:.0f} x {psf.fwhm_x_px * psf.pixel_size_um:.0f} um)"
        text += f" from {est.n_used} bubbles"
        self.result.value = text
        rejected = "; ".join(f"#{i}: {why}" for i, why in est.rejected[:5])
        self.status.value = f"done; {len(est.rejected)} rejected" + (f" ({rejected})" if rejected else "")
