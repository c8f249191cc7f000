"""Run a whole named pipeline on a CEUS layer in one click."""

from __future__ import annotations

import napari
from magicgui.widgets import ComboBox, SpinBox
from napari.layers import Image

from ..pipeline import PIPELINES, iter_pipeline
from ._base import StageWidget
from ._layers import add_or_replace, frames_from_layer, points_kwargs, psf_from_layer, sr_layer_kwargs, tracks_kwargs


class PipelineWidget(StageWidget):
    """CEUS layer (+ PSF layer, or automatic PSF) -> localisations, tracks and SR maps."""

    def __init__(self, viewer: napari.Viewer):
        super().__init__(viewer)
        self.image = self.layer_combo("CEUS", Image)
        self.psf_layer = self.layer_combo("PSF (none = auto)", Image, allow_none=True)
        self.pipeline = ComboBox(label="pipeline", choices=sorted(PIPELINES), value="baseline1")
        self.block_size = SpinBox(label="block size (frames)", value=200, min=8, max=100000)
        self.upsampling = SpinBox(label="upsampling", value=4, min=1, max=16)
        self.extend([self.image, self.psf_layer, self.pipeline, self.block_size, self.upsampling])
        self.finish_layout()

    def work(self):
        layer = self.image.value
        frames = frames_from_layer(layer)
        psf = psf_from_layer(self.psf_layer.value) if self.psf_layer.value is not None else "auto"
        return iter_pipeline(
            frames, self.pipeline.value, psf,
            block_size=self.block_size.value, upsampling=self.upsampling.value,
            pixel_size_um=layer.metadata.get("pixel_size_um"),
            frame_rate_hz=layer.metadata.get("frame_rate_hz"),
        )

    def done(self, result) -> None:
        src = self.image.value
        name = src.name
        meta = {"cycleulm": result.summary()}
        data, kw = points_kwargs(result.localisations, f"{name} localisations [{result.pipeline}]",
                                 scale=src.scale, translate=src.translate, metadata=meta, visible=False)
        add_or_replace(self.viewer, "points", data, **kw)
        if len(result.tracks):
            data, kw = tracks_kwargs(result.tracks, f"{name} tracks [{result.pipeline}]",
                                     scale=src.scale, translate=src.translate, metadata=meta, visible=False)
            add_or_replace(self.viewer, "tracks", data, **kw)
        geo = sr_layer_kwargs(src, result.maps.upsampling)
        add_or_replace(self.viewer, "image", result.maps.density, f"{name} SR density [{result.pipeline}]",
                       colormap="hot", metadata=meta, **geo)
        add_or_replace(self.viewer, "image", result.maps.velocity, f"{name} SR velocity [{result.pipeline}]",
                       colormap="turbo", visible=False, metadata=meta, **geo)
        self.status.value = (f"{result.n_localisations} localisations, {result.n_tracks} tracks "
                             f"in {sum(result.timings_s.values()):.1f} s")
