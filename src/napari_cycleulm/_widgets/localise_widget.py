"""Localise microbubbles: Image + PSF -> Points with score and intensity features."""

from __future__ import annotations

import napari
from magicgui.widgets import ComboBox, FloatSpinBox
from napari.layers import Image

from ..io import iter_blocks
from ..progress import Progress
from ..tables import Localisations
from ._base import StageWidget
from ._layers import add_or_replace, frames_from_layer, points_kwargs, psf_from_layer

#: Default thresholds per method: NCC score, deconvolution amplitude (frame intensity units).
DEFAULT_THRESHOLDS = {"ncc": 0.3, "decon": 0.1}


class LocaliseWidget(StageWidget):
    """Image + PSF layer -> ``<input> localisations [method]`` Points layer."""

    def __init__(self, viewer: napari.Viewer):
        super().__init__(viewer)
        self.image = self.layer_combo("frames", Image)
        self.psf_layer = self.layer_combo("PSF", Image)
        self.method = ComboBox(label="method", choices=["ncc", "decon"], value="ncc")
        self.threshold = FloatSpinBox(label="threshold", value=DEFAULT_THRESHOLDS["ncc"], min=0.0, max=1e6, step=0.05)
        self.method.changed.connect(lambda m: setattr(self.threshold, "value", DEFAULT_THRESHOLDS[m]))
        self.extend([self.image, self.psf_layer, self.method, self.threshold])
        self.finish_layout()

    def work(self):
        from ..localise import localise

        frames = frames_from_layer(self.image.value)
        psf = psf_from_layer(self.psf_layer.value)
        method, threshold = self.method.value, self.threshold.value

        def run():
            parts = []
            for start, stop, block in iter_blocks(frames, 32):
                extra = {"absolute_threshold": True} if method == "decon" else {}
                locs = localise(block, psf, method=method, threshold=threshold, **extra)
                parts.append(locs.with_columns(frame=locs["frame"] + start))
                yield Progress(stop, len(frames), f"localise ({method})")
            return Localisations.concat(parts)

        return run()

    def done(self, locs: Localisations) -> None:
        src = self.image.value
        name = f"{src.name} localisations [{self.method.value}]"
        data, kw = points_kwargs(locs, name, scale=src.scale, translate=src.translate,
                                 metadata={"cycleulm": {"stage": "localise", "method": self.method.value,
                                                        "threshold": self.threshold.value}})
        add_or_replace(self.viewer, "points", data, **kw)
        self.status.value = f"{len(locs)} localisations"
