"""Translate CEUS frames to MB-only frames with MB-DT."""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import ComboBox, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_warning

from ...errors import CycleULMError
from ...progress import Progress
from ...stages import CALIBRATION_FRAMES, run_scale
from ...preprocess.evidence_gate import DEFAULT_GATE, GATE_MODES, gate_kwargs
from ...dl.mbdt_inference import DEFAULT_TTA, TTA_MODES, iter_translate
from ._base import StageWidget
from ._layers import (
    add_result, geometry_of, psf_or_auto, psf_params, result_buffer, result_metadata, result_name,
    stack_from_layer,
)
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
        self.gate = ComboBox(label="evidence gate", choices=list(GATE_MODES), value=DEFAULT_GATE,
                             tooltip="keep MB-DT's bubbles only where the CEUS frames show evidence of one, "
                                     "as the CycleULM pipelines do (docs/science.md)")
        self.tta = ComboBox(label="mirror averaging", choices=list(TTA_MODES), value=DEFAULT_TTA,
                            tooltip="average the translations of the frames and of their mirror images, "
                                    "as the CycleULM pipelines do ('none': one pass, twice as fast; "
                                    "docs/science.md)")
        self.psf_layer = self.layer_combo("PSF", Image, allow_none=True)
        self.psf_layer.tooltip = ("CEUS PSF for the gate: the PSF tool's layer; (none) estimates it from "
                                  f"isolated bubbles of the first {CALIBRATION_FRAMES} frames, as the pipelines do")
        self.block_size = SpinBox(label="block size (frames)", value=64, min=1, max=100000)
        self.extend([self.image, *self.model.widgets, self.gate, self.tta, self.psf_layer, self.block_size])
        self.finish_layout()

    def work(self):
        layer = self.image.value
        frames = stack_from_layer(layer)
        ck = self.model.load()
        block = self.block_size.value
        self._source = layer
        gate = self.gate.value
        tta = self.tta.value
        psf = None
        if gate_kwargs(gate) is not None:
            try:
                psf, _ = psf_or_auto(self.psf_layer.value, frames, layer)
            except CycleULMError as exc:  # as cycleulm-loc does: the gate then works without the PSF
                show_warning(f"the gate uses no PSF (window from the frame size): {exc}")
        self._params = {"model": str(ck.path) if ck.path else "default", "block_size": block, "gate": gate,
                        "tta": tta, "psf": psf_params(psf)}
        scale = run_scale(frames, mbdt=True)

        def run():
            out = result_buffer(tuple(frames.shape), np.float32)
            n = len(frames)
            yield Progress(0, n, "translate")
            for start, stop, mb in iter_translate(frames, ck, block_size=block, scale=scale, gate=gate, psf=psf,
                                                   tta=tta):
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
