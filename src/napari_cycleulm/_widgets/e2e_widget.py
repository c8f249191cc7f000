"""CycleULM end to end: CEUS (or MB-only) frames -> MBT-Net SR density and velocity maps."""

from __future__ import annotations

import napari
from magicgui.widgets import CheckBox, SpinBox
from napari.layers import Image

from ..e2e import E2EAccumulator
from ..io import iter_blocks
from ..progress import Progress
from ..translate import iter_translate
from ._base import StageWidget
from ._layers import add_or_replace, frames_from_layer, sr_layer_kwargs
from ._model_picker import ModelPicker
from .translate_widget import MB_ONLY_KEY

TAG = "cycleulm-e2e"


class E2EWidget(StageWidget):
    """CEUS Image -> ``<input> SR density [cycleulm-e2e]`` and ``SR velocity`` overlaying the frames.

    With "input is already MB-only" (ticked automatically for layers made by
    the Translate widget) MB-DT is skipped and the frames go straight to MBT-Net.
    """

    def __init__(self, viewer: napari.Viewer):
        super().__init__(viewer)
        self.image = self.layer_combo("CEUS", Image)
        self.mb_only = CheckBox(text="input is already MB-only", value=False)
        self.mbdt = ModelPicker("mbdt", viewer, label="MB-DT model")
        self.mbtnet = ModelPicker("mbtnet", viewer, label="MBT-Net model")
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
        frames = frames_from_layer(layer)
        mb_only = self.mb_only.value
        mbdt = None if mb_only else self.mbdt.load()
        mbtnet = self.mbtnet.load()
        block, u = self.block_size.value, self.upsampling.value
        px = layer.metadata.get("pixel_size_um")
        fr = layer.metadata.get("frame_rate_hz")
        if px is None or fr is None:
            px = fr = None  # result() needs both for mm/s, else px/frame

        def run():
            n = len(frames)
            acc = E2EAccumulator(frames.shape[1:], upsampling=u)
            blocks = iter_blocks(frames, block) if mb_only else iter_translate(frames, mbdt, block_size=block)
            stage = "MBT-Net" if mb_only else "MB-DT + MBT-Net"
            yield Progress(0, n, stage)
            for _start, stop, mb in blocks:
                acc.add(mb, mbtnet)
                yield Progress(stop, n, stage)
            return acc.result(pixel_size_um=px, frame_rate_hz=fr)

        return run()

    def done(self, maps) -> None:
        src = self.image.value
        name = src.name
        geo = sr_layer_kwargs(src, maps.upsampling)
        meta = {"cycleulm": {"stage": "e2e", "mb_only_input": self.mb_only.value}}
        add_or_replace(self.viewer, "image", maps.density, f"{name} SR density [{TAG}]",
                       colormap="hot", blending="additive", metadata=meta, **geo)
        add_or_replace(self.viewer, "image", maps.velocity, f"{name} SR velocity [{TAG}]",
                       colormap="turbo", visible=False,
                       metadata={**meta, "unit": maps.velocity_unit}, **geo)
        self.status.value = f"done; velocity in {maps.velocity_unit}"
