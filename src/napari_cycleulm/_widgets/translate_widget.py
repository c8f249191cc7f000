"""Translate CEUS frames to MB-only frames with MB-DT."""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import SpinBox
from napari.layers import Image

from ..progress import Progress
from ..translate import iter_translate
from ._base import StageWidget
from ._layers import add_result, geometry_of, result_buffer, result_metadata, result_name, stack_from_layer
from ._model_picker import ModelPicker

#: Layer metadata flag set on MB-only stacks (the E2E widget reads it).
MB_ONLY_KEY = "mb_only"


class TranslateWidget(StageWidget):
    """CEUS Image -> ``<input> MB-only`` Image (same scale and translate), block by block."""

    run_text = "Translate"

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.image = self.layer_combo("CEUS", Image)
        self.model = ModelPicker("mbdt", self.viewer, label="MB-DT model")
        self._combos.append(self.model)
        self.block_size = SpinBox(label="block size (frames)", value=64, min=1, max=100000)
        self.extend([self.image, *self.model.widgets, self.block_size])
        self.finish_layout()

    def work(self):
        layer = self.image.value
        frames = stack_from_layer(layer)
        ck = self.model.load()
        block = self.block_size.value
        self._source = layer
        self._params = {"model": str(ck.path) if ck.path else "default", "block_size": block}

        def run():
            out = result_buffer(tuple(frames.shape), np.float32)
            n = len(frames)
            yield Progress(0, n, "translate")
            for start, stop, mb in iter_translate(frames, ck, block_size=block):
                out[start:stop] = mb
                yield Progress(stop, n, "translate")
            return out

        return run()

    def done(self, mb: np.ndarray) -> None:
        src = self._source
        meta = result_metadata("translate", src, self._params, **{MB_ONLY_KEY: True})
        # Contrast from a few frames: the stack may be a memory map larger than RAM.
        step = max(1, len(mb) // 20)
        hi = float(np.percentile(np.asarray(mb[::step]), 99.9)) if mb.size else 1.0
        add_result(self.viewer, "image", mb, result_name(src.name, "MB-only"), mode=self.rerun_mode,
                   metadata=meta, colormap="magma", contrast_limits=(0.0, max(hi, 1e-6)), **geometry_of(src))
        self.status.value = f"{len(mb)} frames translated"
