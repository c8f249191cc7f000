"""Denoise a CEUS stack: Bradley-Roth adaptive thresholding or SVD clutter filtering.

Both stream over blocks of frames (a lazily opened stack is never loaded
whole).  Adaptive thresholding works exactly as in the Baseline pipelines:
frames are scaled by the run's intensity factor (:mod:`napari_cycleulm.stages`)
and thresholded with the PSF's window, so the Localise tool on the result
gives the pipeline's localisations.
"""

from __future__ import annotations

import napari
from magicgui.widgets import ComboBox, FloatSpinBox, SpinBox
from napari.layers import Image

from ... import io as ulm_io
from ...progress import Progress
from ...stages import CALIBRATION_FRAMES, run_scale
from ._base import StageWidget
from ._layers import (
    NORMALISED_KEY, add_result, geometry_of, psf_or_auto, psf_params, result_buffer, result_metadata,
    result_name, stack_from_layer,
)


class DenoiseWidget(StageWidget):
    """Image -> Image: ``<input> denoised``."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.image = self.layer_combo("CEUS", Image)
        self.psf_layer = self.layer_combo("PSF", Image, allow_none=True)
        self.psf_layer.tooltip = ("the PSF tool's layer; (none) estimates it from isolated bubbles of the first "
                                  f"{CALIBRATION_FRAMES} frames, as the pipelines do")
        self.method = ComboBox(label="method", choices=["adaptive threshold", "SVD clutter filter"])
        self.window = SpinBox(label="window (px, 0=auto)", value=0, min=0, max=1001,
                              tooltip="0: from the PSF, as the pipelines choose it")
        self.sensitivity = FloatSpinBox(label="sensitivity", value=2.0, min=0.0, max=20.0, step=0.05)
        self.cutoff = SpinBox(label="SVD cut-off (0=auto)", value=0, min=0, max=10000)
        self.svd_block = SpinBox(label="SVD block (frames)", value=200, min=2, max=100000,
                                 tooltip="frames filtered together; memory grows with it")
        self.extend([self.image, self.psf_layer, self.method, self.window, self.sensitivity, self.cutoff,
                     self.svd_block])
        self.finish_layout()

    def work(self):
        from ...preprocess import adaptive_threshold, svd_clutter_filter

        layer = self.image.value
        self._source = layer
        if self.method.value == "SVD clutter filter":
            data = layer.data if layer is not None else None
            # IQ (complex) stacks are filtered as they are; the result is their envelope.
            stack = data if data is not None and getattr(data, "dtype", None) is not None and \
                data.dtype.kind == "c" else stack_from_layer(layer)
            cutoff = self.cutoff.value or None
            block_size = int(self.svd_block.value)
            self._params = {"method": "svd", "cutoff": cutoff, "block_size": block_size}

            def run_svd():
                n = len(stack)
                out = result_buffer(tuple(stack.shape), "float32")
                yield Progress(0, n, "SVD filter")
                for start in range(0, n, block_size):
                    stop = min(n, start + block_size)
                    out[start:stop] = svd_clutter_filter(stack[start:stop], cutoff=cutoff)
                    yield Progress(stop, n, "SVD filter")
                return out, False

            return run_svd()
        stack = stack_from_layer(layer)
        psf, psf_name = psf_or_auto(self.psf_layer.value, stack, layer)
        window = self.window.value or None
        sens = self.sensitivity.value
        scale = run_scale(stack)
        self._params = {"method": "adaptive threshold", "window": window, "sensitivity": sens,
                        "psf_layer": psf_name, "psf": psf_params(psf), "intensity_scale": scale}

        def run():
            n = len(stack)
            out = result_buffer(tuple(stack.shape), "float32")
            for start, stop, block in ulm_io.iter_blocks(stack, 64):
                out[start:stop] = adaptive_threshold(block * scale, window=window, sensitivity=sens, psf=psf)
                yield Progress(stop, n, "thresholding")
            return out, True

        return run()

    def done(self, result) -> None:
        out, normalised = result
        src = self._source
        meta = result_metadata("denoise", src, self._params, method=None, **{NORMALISED_KEY: normalised})
        add_result(self.viewer, "image", out, result_name(src.name, "denoised"), mode=self.rerun_mode,
                   colormap="gray", metadata=meta, **geometry_of(src))
        self.status.value = "done"
