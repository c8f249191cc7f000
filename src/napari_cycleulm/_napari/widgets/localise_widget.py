"""Localise microbubbles: Image + PSF -> Points with score and intensity features."""

from __future__ import annotations

import napari
from magicgui.widgets import ComboBox, FloatSpinBox
from napari.layers import Image
from napari.utils.notifications import show_warning

from ...dl.models import check_psf_in_range
from ...stages import LOCALISERS, iter_localise
from ...io.tables import Localisations
from ._base import StageWidget
from ._display import show_localisations
from ._layers import (
    NORMALISED_KEY, PSF_METADATA_KEY, psf_from_layer, psf_params, result_metadata, result_name,
    stack_from_layer,
)
from ._model_picker import ModelPicker
from .translate_widget import MB_ONLY_KEY


def is_mb_only(layer) -> bool:
    """Whether a layer holds MB-DT output (the Translate tool's ``<input> MB-only``)."""
    return layer is not None and bool(layer.metadata.get(MB_ONLY_KEY, False))


def is_normalised(layer) -> bool:
    """Whether a layer is already in the library's intensity units (a CycleULM denoised or MB-only stack)."""
    return layer is not None and (is_mb_only(layer) or bool(layer.metadata.get(NORMALISED_KEY, False)))


class LocaliseWidget(StageWidget):
    """Image + PSF layer -> ``[method] <input> localisations`` Points layer (hidden, like every
    localisations and tracks layer, so that results pile up without covering the SR maps).

    ``mblnet`` runs MBL-Net on MB-only frames (the Translate widget's output);
    it needs no PSF, but a PSF layer (made by the PSF widget), when chosen, is checked against the range
    the network was trained on.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.image = self.layer_combo("frames", Image)
        self.psf_layer = self.layer_combo("PSF", Image)
        self.method = ComboBox(label="method", choices=list(LOCALISERS), value="ncc")
        self.model = ModelPicker("mblnet", self.viewer, label="MBL-Net model")
        self.model.visible = False
        self._combos.append(self.model)
        self.threshold = FloatSpinBox(label="threshold", value=LOCALISERS["ncc"].threshold_ceus,
                                      min=0.0, max=1e6, step=0.05)
        self.method.changed.connect(self._default_threshold)
        self.image.changed.connect(self._default_threshold)
        self.extend([self.image, self.psf_layer, self.method, *self.model.widgets, self.threshold])
        self.finish_layout()
        self._default_threshold()

    def _default_threshold(self, _=None) -> None:
        """The registry's default for the method on these frames (CEUS or MB-only), as the pipelines use."""
        entry = LOCALISERS[self.method.value]
        mb_only = is_mb_only(self.image.value) or entry.threshold_ceus is None
        self.threshold.value = entry.default_threshold(mb_only)
        self.threshold.tooltip = entry.threshold_unit
        self.model.visible = entry.network is not None

    def work(self):
        layer = self.image.value
        stack = stack_from_layer(layer)
        method, threshold = self.method.value, self.threshold.value
        entry = LOCALISERS[method]
        mb_only = is_mb_only(layer)
        params: dict = {"method": method, "threshold": threshold, "threshold_unit": entry.threshold_unit,
                        "mb_only_input": mb_only}
        model = None
        if entry.network is not None:
            model = self.model.load()
            params["model"] = str(model.path) if model.path else "default"
        psf = None
        psf_layer = self.psf_layer.value
        if psf_layer is not None and (entry.needs_psf or PSF_METADATA_KEY in psf_layer.metadata):
            psf = psf_from_layer(psf_layer)
            # The PSF tool's "MB-only PSF" layer is already shrunk; a CEUS PSF is shrunk for MB-only frames.
            if mb_only and "shrink" not in psf_layer.metadata:
                psf = psf.mbonly()
            params["psf_layer"] = psf_layer.name
            params["psf"] = psf_params(psf)
        if entry.needs_psf and psf is None:
            psf_from_layer(None)  # says how to make one
        elif psf is not None and model is not None:
            warning = check_psf_in_range(psf if mb_only else psf.mbonly(), model)
            if warning:
                show_warning(warning)
            psf = None
        self._source, self._params = layer, params
        # Frames made by a CycleULM stage are already normalised; others get the pipelines' run-wide scale.
        scale = 1.0 if is_normalised(layer) else None
        return iter_localise(stack, method, psf, threshold=threshold, mb_only=mb_only, scale=scale,
                             model=model)

    def done(self, locs: Localisations) -> None:
        src, method = self._source, self._params["method"]
        meta = result_metadata("localise", src, self._params, method=method)
        layer = show_localisations(self.viewer, locs, result_name(src.name, "localisations", method),
                                   reference=src, mode=self.rerun_mode, metadata=meta, visible=False)
        self.status.value = f"{len(locs)} localisations in {layer.name!r}" + (
            "" if layer.visible else " (hidden: tick its eye to show it)")
