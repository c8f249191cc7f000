"""Localise microbubbles: Image + PSF -> Points with score and intensity features."""

from __future__ import annotations

import napari
from magicgui.widgets import ComboBox, FloatSpinBox
from napari.layers import Image
from napari.utils.notifications import show_warning

from ..io import iter_blocks
from ..models import check_psf_in_range
from ..progress import Progress
from ..tables import Localisations
from ._base import StageWidget
from ._display import show_localisations
from ._layers import (
    PSF_METADATA_KEY, frames_from_layer, psf_from_layer, psf_params, result_metadata, result_name,
)
from ._model_picker import ModelPicker

#: Default thresholds per method: NCC score, deconvolution amplitude (frame intensity units),
#: MBL-Net probability summed over 3x3 pixels.
DEFAULT_THRESHOLDS = {"ncc": 0.3, "decon": 0.1, "mblnet": 0.5}


class LocaliseWidget(StageWidget):
    """Image + PSF layer -> ``<input> localisations [method]`` Points layer.

    ``mblnet`` runs MBL-Net on MB-only frames (the Translate widget's output);
    it needs no PSF, but a PSF layer (made by the PSF widget), when chosen, is checked against the range
    the network was trained on.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.image = self.layer_combo("frames", Image)
        self.psf_layer = self.layer_combo("PSF", Image)
        self.method = ComboBox(label="method", choices=["ncc", "decon", "mblnet"], value="ncc")
        self.model = ModelPicker("mblnet", self.viewer, label="MBL-Net model")
        self.model.visible = False
        self._combos.append(self.model)
        self.threshold = FloatSpinBox(label="threshold", value=DEFAULT_THRESHOLDS["ncc"], min=0.0, max=1e6, step=0.05)
        self.method.changed.connect(self._method_changed)
        self.extend([self.image, self.psf_layer, self.method, *self.model.widgets, self.threshold])
        self.finish_layout()

    def _method_changed(self, method: str) -> None:
        self.threshold.value = DEFAULT_THRESHOLDS[method]
        self.model.visible = method == "mblnet"

    def work(self):
        from ..localise import localise

        layer = self.image.value
        frames = frames_from_layer(layer)
        method, threshold = self.method.value, self.threshold.value
        kw: dict = {}
        params: dict = {"method": method, "threshold": threshold}
        if method == "mblnet":
            ck = self.model.load()
            kw["model"] = ck
            params["model"] = str(ck.path) if ck.path else "default"
            psf = None
            psf_layer = self.psf_layer.value
            if psf_layer is not None and PSF_METADATA_KEY in psf_layer.metadata:
                given = psf_from_layer(psf_layer)
                # The PSF widget's "MB-only PSF" layer is already shrunk.
                mb = given if "shrink" in psf_layer.metadata else given.mbonly()
                warning = check_psf_in_range(mb, ck)
                if warning:
                    show_warning(warning)
        else:
            psf = psf_from_layer(self.psf_layer.value)
            if method == "decon":
                kw["absolute_threshold"] = True
            params["psf_layer"] = self.psf_layer.value.name
            params["psf"] = psf_params(psf)
        params.update({k: v for k, v in kw.items() if k != "model"})
        self._source, self._params = layer, params

        def run():
            parts = []
            n = len(frames)
            for start, stop, block in iter_blocks(frames, 32):
                extra = dict(kw)
                if method == "mblnet":  # neighbours across blocks, for 3-frame networks
                    extra["before"] = frames[start - 1] if start > 0 else None
                    extra["after"] = frames[stop] if stop < n else None
                locs = localise(block, psf, method=method, threshold=threshold, **extra)
                parts.append(locs.with_columns(frame=locs["frame"] + start))
                yield Progress(stop, len(frames), f"localise ({method})")
            return Localisations.concat(parts)

        return run()

    def done(self, locs: Localisations) -> None:
        src, method = self._source, self._params["method"]
        meta = result_metadata("localise", src, self._params, method=method)
        show_localisations(self.viewer, locs, result_name(src.name, "localisations", method),
                           reference=src, mode=self.rerun_mode, metadata=meta)
        self.status.value = f"{len(locs)} localisations"
