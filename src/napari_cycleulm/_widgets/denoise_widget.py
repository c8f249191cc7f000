"""Denoise a CEUS stack: Bradley-Roth adaptive thresholding or SVD clutter filtering."""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import ComboBox, FloatSpinBox, SpinBox
from napari.layers import Image

from ..io import iter_blocks
from ..progress import Progress
from ._base import StageWidget
from ._layers import add_result, frames_from_layer, geometry_of, result_metadata, result_name


class DenoiseWidget(StageWidget):
    """Image -> Image: ``<input> denoised``."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
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
        self._source = layer
        if self.method.value == "SVD clutter filter":
            self._params = {"method": "svd", "cutoff": self.cutoff.value or None}
        else:
            self._params = {"method": "adaptive threshold", "window": self.window.value or None,
                            "sensitivity": self.sensitivity.value}
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
        src = self._source
        meta = result_metadata("denoise", src, self._params, method=None)
        add_result(self.viewer, "image", out, result_name(src.name, "denoised"), mode=self.rerun_mode,
                   colormap="gray", metadata=meta, **geometry_of(src))
        self.status.value = "done"
