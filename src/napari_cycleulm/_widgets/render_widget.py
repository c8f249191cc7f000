"""Render tracks into SR density and velocity maps that overlay the CEUS frames."""

from __future__ import annotations

import napari
from magicgui.widgets import SpinBox
from napari.layers import Image, Tracks as TracksLayer

from ..errors import CycleULMError
from ..progress import Progress
from ..render import SRRenderer
from ._base import StageWidget
from ._layers import add_or_replace, sr_layer_kwargs, tracks_from_layer


class RenderWidget(StageWidget):
    """Tracks + reference CEUS layer -> ``<input> SR density`` / ``SR velocity`` / ``SR direction``."""

    def __init__(self, viewer: napari.Viewer):
        super().__init__(viewer)
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
        shape = tuple(ref.data.shape[-2:])
        u = self.upsampling.value
        px = ref.metadata.get("pixel_size_um")
        fr = ref.metadata.get("frame_rate_hz")

        def run():
            yield Progress(0, 1, "rendering")
            renderer = SRRenderer(shape, upsampling=u)
            renderer.add_tracks(tracks)
            yield Progress(1, 1, "rendering")
            return renderer.result(pixel_size_um=px, frame_rate_hz=fr)

        return run()

    def done(self, maps) -> None:
        ref = self.reference.value
        base = self.tracks.value.name.split(" tracks")[0]
        geo = sr_layer_kwargs(ref, maps.upsampling)
        add_or_replace(self.viewer, "image", maps.density, f"{base} SR density", colormap="hot",
                       blending="additive", **geo)
        add_or_replace(self.viewer, "image", maps.velocity, f"{base} SR velocity", colormap="turbo",
                       visible=False, metadata={"unit": maps.velocity_unit}, **geo)
        add_or_replace(self.viewer, "image", maps.direction, f"{base} SR direction", colormap="twilight",
                       visible=False, metadata={"unit": "rad"}, **geo)
        self.status.value = "done"
