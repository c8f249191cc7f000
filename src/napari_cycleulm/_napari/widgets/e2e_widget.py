"""CycleULM end to end: CEUS (or MB-only) frames -> MBT-Net SR density and velocity maps."""

from __future__ import annotations

import napari
from magicgui.widgets import CheckBox, SpinBox
from napari.layers import Image

from ...pipeline import PIPELINES, PipelineSpec, iter_pipeline
from ._base import StageWidget
from ._layers import add_sr_layers, origin_of, result_metadata, stack_from_layer
from ._model_picker import ModelPicker
from .translate_widget import MB_ONLY_KEY

TAG = "cycleulm-e2e"


class E2EWidget(StageWidget):
    """CEUS Image -> ``[cycleulm-e2e] <input> SR density`` and ``SR velocity`` overlaying the frames.

    With "input is already MB-only" (ticked automatically for layers made by
    the Translate widget) MB-DT is skipped and the frames go straight to MBT-Net.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.image = self.layer_combo("CEUS", Image)
        self.mb_only = CheckBox(text="input is already MB-only", value=False)
        self.mbdt = ModelPicker("mbdt", self.viewer, label="MB-DT model")
        self.mbtnet = ModelPicker("mbtnet", self.viewer, label="MBT-Net model")
        self._combos.extend([self.mbdt, self.mbtnet])
        self.block_size = SpinBox(label="block size (frames)", value=64, min=8, max=100000)
        self.upsampling = SpinBox(label="upsampling", value=4, min=1, max=16)
        self.extend([self.image, self.mb_only, *self.mbdt.widgets, *self.mbtnet.widgets, self.block_size,
                     self.upsampling])
        self.finish_layout()
        self.image.changed.connect(self._mb_only_from_layer)
        self.mb_only.changed.connect(lambda v: setattr(self.mbdt, "visible", not v))
        self._mb_only_from_layer()

    def _mb_only_from_layer(self, _=None) -> None:
        layer = self.image.value
        if layer is not None:
            self.mb_only.value = bool(layer.metadata.get(MB_ONLY_KEY, False))

    def work(self):
        layer = self.image.value
        stack = stack_from_layer(layer)
        mb_only = self.mb_only.value
        mbdt = None if mb_only else self.mbdt.load()
        mbtnet = self.mbtnet.load()
        block, u = self.block_size.value, self.upsampling.value
        self._source = layer
        self._params = {
            "mb_only_input": mb_only, "block_size": block, "upsampling": u,
            "mbdt": None if mbdt is None else (str(mbdt.path) if mbdt.path else "default"),
            "mbtnet": str(mbtnet.path) if mbtnet.path else "default",
        }
        spec = PIPELINES[TAG]
        if mb_only:
            # MB-only frames (already MB-DT output, in normalised units) go straight to MBT-Net.
            spec = PipelineSpec(TAG, "none", spec.localise, "MBT-Net on MB-only frames", spec.threshold)
        return iter_pipeline(
            stack, spec, psf=None if mb_only else "auto", block_size=block, upsampling=u, mbdt=mbdt, mbtnet=mbtnet,
            pixel_size_um=layer.metadata.get("pixel_size_um"), frame_rate_hz=layer.metadata.get("frame_rate_hz"),
            scale=1.0 if mb_only else None,
        )

    def done(self, result) -> None:
        maps = result.maps
        src = self._source
        # An MB-only layer made by the Translate widget names its results after the CEUS layer it came from.
        origin = origin_of(src)[0] if self._params["mb_only_input"] else src.name
        meta = result_metadata("e2e", src, self._params, origin=origin, method=TAG)
        add_sr_layers(self.viewer, maps, origin, TAG, src, meta, mode=self.rerun_mode)
        self.status.value = f"done; velocity in {maps.velocity_unit}"
