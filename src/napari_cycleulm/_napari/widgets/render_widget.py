"""Render tracks into SR density and velocity maps that overlay the CEUS frames."""

from __future__ import annotations

import napari
from magicgui.widgets import SpinBox
from napari.layers import Image, Tracks as TracksLayer

from ...errors import CycleULMError
from ...progress import Progress
from ...render import SRRenderer
from ._base import StageWidget
from ._layers import UNIT_KEYS, add_sr_layers, origin_of, result_metadata, tracks_from_layer


class RenderWidget(StageWidget):
    """Tracks + reference CEUS layer -> ``[method] <origin> SR density`` / ``SR velocity`` / ``SR direction``.

    ``<origin>`` and ``method`` come from the tracks layer (``[ncc] CEUS tracks``
    gives ``[ncc] CEUS SR density``).  Velocities are in mm/s when the
    reference layer's metadata has ``pixel_size_um`` and ``frame_rate_hz``.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.tracks = self.layer_combo("tracks", TracksLayer)
        self.reference = self.layer_combo("CEUS (grid)", Image)
        self.upsampling = SpinBox(label="upsampling", value=4, min=1, max=16)
        self.extend([self.tracks, self.reference, self.upsampling])
        self.finish_layout()

    def work(self):
        tracks = tracks_from_layer(self.tracks.value)
        ref = self.reference.value
        if ref is None:
            raise CycleULMError("choose the CEUS layer whose grid the SR maps should overlay.")
        if ref.data.ndim < 2 or getattr(ref, "rgb", False):
            raise CycleULMError(f"layer {ref.name!r} is not a grey-level image; choose the CEUS stack.")
        shape = tuple(ref.data.shape[-2:])
        u = self.upsampling.value
        px = ref.metadata.get("pixel_size_um")
        fr = ref.metadata.get("frame_rate_hz")
        self._source, self._reference = self.tracks.value, ref
        self._params = {"upsampling": u, "reference": ref.name, "pixel_size_um": px, "frame_rate_hz": fr}

        def run():
            yield Progress(0, 1, "rendering")
            renderer = SRRenderer(shape, upsampling=u)
            renderer.add_tracks(tracks)
            yield Progress(1, 1, "rendering")
            return renderer.result(pixel_size_um=px, frame_rate_hz=fr)

        return run()

    def done(self, maps) -> None:
        src, ref = self._source, self._reference
        origin, method = origin_of(src)
        units = {k: ref.metadata[k] for k in UNIT_KEYS if ref.metadata.get(k) is not None}
        meta = result_metadata("render", src, self._params, **units)
        add_sr_layers(self.viewer, maps, origin, method, ref, meta, mode=self.rerun_mode, direction=True)
        self.status.value = f"done; velocity in {maps.velocity_unit}"
