"""Denoise a CEUS stack: Bradley-Roth adaptive thresholding or SVD clutter filtering."""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import ComboBox, FloatSpinBox, SpinBox
from napari.layers import Image

from ..io import iter_blocks
from ..progress import Progress
from ._base import StageWidget
from ._layers import add_or_replace, frames_from_layer


class DenoiseWidget(StageWidget):
    """Image -> Image: ``<input> denoised``."""

    def __init__(self, viewer: napari.Viewer):
        super().__init__(viewer)
        self.image = self.layer_combo("CEUS", Image)
        self.method = ComboBox(label="method", choices=["adaptive threshold", "SVD clutter filter"])
        self.window = SpinBox(label="window (px, 0=auto)", value=0, min=0, max=1001)
        self.sensitivity = FloatSpinBox(label="sensitivity", value=2.0, min=0.0, max=20.0, step=0.05)
        self.cutoff = SpinBox(label="SVD cut-off (0=auto)", value=0, min=0, max=10000)
        self.extend([self.image, self.method, self.window, self.sensitivity, self.cutoff])
        self.finish_layout()

    def work(self):
        from ..preprocess import adaptive_threshold, svd_clutter_filter

        layer = self.image.value
        if self.method.value == "SVD clutter filter":
            data = np.asarray(layer.data) if layer is not None else None
            frames = data if data is not None and np.iscomplexobj(data) else frames_from_layer(layer)
            cutoff = self.cutoff.value or None

            def run_svd():
                yield Progress(0, 1, "SVD filter")
                out = svd_clutter_filter(frames, cutoff=cutoff)
                yield Progress(1, 1, "SVD filter")
                return out

            return run_svd()
        frames = frames_from_layer(layer)
        window = self.window.value or None
        sens = self.sensitivity.value

        def run():
            out = np.empty_like(frames)
            for start, stop, block in iter_blocks(frames, 64):
                out[start:stop] = adaptive_threshold(block, window=window, sensitivity=sens)
                yield Progress(stop, len(frames), "thresholding")
            return out

        return run()

    def done(self, out) -> None:
        src = self.image.value
        name = f"{src.name if src is not None else 'CEUS'} denoised"
        add_or_replace(self.viewer, "image", out, name, colormap="gray",
                       scale=src.scale if src is not None else None,
                       translate=src.translate if src is not None else None,
                       metadata={"cycleulm": {"stage": "denoise", "method": self.method.value,
                                              "window": self.window.value, "sensitivity": self.sensitivity.value,
                                              "cutoff": self.cutoff.value}})
        self.status.value = "done"
