"""Run a whole named pipeline on a CEUS layer in one click.

:func:`pipeline_job` (inputs checked on the UI thread -> the core's generator)
and :func:`add_pipeline_layers` (result -> layers) are shared with the
workflow dock, so both run and show pipelines the same way.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import napari
from magicgui.widgets import ComboBox, SpinBox
from napari.layers import Image, Layer

from ..._json import jsonable
from ...errors import CycleULMError
from ...pipeline import PIPELINES, PipelineResult, iter_pipeline
from ...preprocess.clutter_filter import DEFAULT_CLUTTER_FILTER, SVD_BLOCK_FRAMES, parse_clutter_filter
from ...progress import Progress
from ._base import StageWidget
from ._display import show_localisations, show_tracks
from ._layers import (
    RESULT_KEY, add_sr_layers, psf_from_layer, result_metadata, result_name, stack_from_layer,
)


#: Choices of the clutter-filter control (any ``svd:N`` works from scripts and the CLI).
CLUTTER_CHOICES = ("svd:auto", "none", "svd:1", "svd:2", "svd:3", "svd:5", "svd:10", "svd:20")


def clutter_controls() -> tuple[ComboBox, SpinBox]:
    """The clutter-filter choice and SVD block length, with the core's defaults."""
    combo = ComboBox(label="clutter filter", choices=list(CLUTTER_CHOICES), value=DEFAULT_CLUTTER_FILTER,
                     tooltip="first stage: SVD clutter filter per block; svd:auto filters only blocks whose "
                             "clutter is static or slow, none for data already clutter-filtered")
    block = SpinBox(label="SVD block (frames)", value=SVD_BLOCK_FRAMES, min=3, max=100000,
                    tooltip="frames per block of the SVD clutter filter")
    return combo, block


def pipeline_job(
    layer: Image | None, pipeline: str, psf_layer: Layer | None = None, *, block_size: int = 200,
    upsampling: int = 4, models: dict | None = None, clutter_filter: str = DEFAULT_CLUTTER_FILTER,
    svd_block: int = SVD_BLOCK_FRAMES,
) -> tuple[Generator[Progress, None, PipelineResult], dict]:
    """Check a pipeline's inputs and return its generator, ready for a worker.

    Everything that can be checked before the run is checked here, on the UI
    thread, so that a bad input is reported at once: the frames, the PSF layer
    and the networks the pipeline needs (loaded here).

    Parameters
    ----------
    layer : Image or None
        CEUS stack (T, H, W); ``pixel_size_um`` / ``frame_rate_hz`` are read from its metadata.
    pipeline : str
        One of :data:`~napari_cycleulm.pipeline.PIPELINES`.
    psf_layer : Layer or None
        A layer holding a PSF (the PSF widget's ``<input> PSF``); None: ``"auto"``.
    block_size, upsampling : int
        See :func:`~napari_cycleulm.pipeline.iter_pipeline`.
    models : dict, optional
        ``{"mbdt" | "mblnet" | "mbtnet": "default" | path}``; default weights otherwise.
    clutter_filter : str
        ``none``, ``svd:auto`` or ``svd:N`` (:func:`~napari_cycleulm.preprocess.parse_clutter_filter`).
        A layer opened from raw IQ (``metadata["cycleulm_iq"]``) is filtered as IQ.
    svd_block : int
        Frames per SVD block of the clutter filter.

    Returns
    -------
    generator, dict
        :func:`~napari_cycleulm.pipeline.iter_pipeline`'s generator and the
        widget-level parameters (PSF layer, model sources) to record with the result.

    Raises
    ------
    CycleULMError
        No or bad layer, unknown pipeline, a layer without PSF, missing weights.
    """
    from ...dl.models import load_model

    frames = stack_from_layer(layer)  # lazy stays lazy: the pipeline reads it block by block
    iq = layer.metadata.get("cycleulm_iq")
    if iq is not None and tuple(getattr(iq, "shape", ())) == tuple(frames.shape):
        frames = iq  # raw IQ (napari shows its magnitude): the SVD filter needs the phase
    cf = parse_clutter_filter(clutter_filter, svd_block)
    if pipeline not in PIPELINES:
        raise CycleULMError(f"unknown pipeline {pipeline!r}; choose one of {sorted(PIPELINES)}.")
    psf = psf_from_layer(psf_layer) if psf_layer is not None else "auto"
    sources = {kind: (models or {}).get(kind) or "default" for kind in PIPELINES[pipeline].networks}
    nets = {kind: load_model(kind, source) for kind, source in sources.items()}
    extra = {"psf_layer": psf_layer.name if psf_layer is not None else "auto", "iq": iq is not None,
             "models": {kind: str(source) for kind, source in sources.items()}}
    gen = iter_pipeline(
        frames, pipeline, psf,
        block_size=block_size, upsampling=upsampling,
        pixel_size_um=layer.metadata.get("pixel_size_um"),
        frame_rate_hz=layer.metadata.get("frame_rate_hz"),
        clutter_filter=cf,
        **nets,
    )
    return gen, extra


def add_pipeline_layers(viewer: napari.Viewer, source: Image, result: PipelineResult, *, mode: str = "replace",
                        extra_params: dict | None = None) -> list[Layer]:
    """Show a pipeline result as layers overlaying ``source``.

    Adds ``[<pipeline>] <source> localisations`` (hidden; not for
    ``cycleulm-e2e``, which makes none), ``[<pipeline>] <source> tracks``
    (hidden; when any track was found), ``[<pipeline>] <source> SR density``
    and ``[<pipeline>] <source> SR velocity`` (hidden), each with the run's parameters
    and (``metadata["cycleulm"]["summary"]``) counts and timings in its metadata.

    Returns
    -------
    list of Layer
        The layers added or updated.
    """
    params = {**result.params, **(extra_params or {})}
    summary = {k: v for k, v in result.summary().items() if k != "params"}
    meta = result_metadata("pipeline", source, params, origin=source.name, method=result.pipeline)
    meta[RESULT_KEY]["summary"] = jsonable(summary)
    layers = []
    name = source.name
    e2e = PIPELINES[result.pipeline].end_to_end
    outputs = result.outputs or {}
    if result.localisations is not None and not e2e:
        # Windowed over frames past 100k rows, so millions of localisations stay interactive.
        layers.append(show_localisations(
            viewer, result.localisations, result_name(name, "localisations", result.pipeline),
            reference=source, mode=mode, metadata=meta, visible=False,
            source_path=_on_disk(outputs.get("localisations"))))
    if result.tracks is not None and len(result.tracks):
        # Thinned to whole tracks for display; the full table stays on the layer (and on disk).
        layers.append(show_tracks(
            viewer, result.tracks, result_name(name, "tracks", result.pipeline),
            reference=source, mode=mode, metadata=meta, visible=False,
            source_path=_on_disk(outputs.get("tracks"))))
    layers += add_sr_layers(viewer, result.maps, name, result.pipeline, source, meta, mode=mode)
    return layers


def _on_disk(path) -> str | None:
    """A table's path when the pipeline wrote one (not the E2E placeholder text)."""
    return str(path) if path and Path(str(path)).is_file() else None


def describe_result(result: PipelineResult) -> str:
    """One status line: counts and time."""
    seconds = sum(result.timings_s.values())
    if PIPELINES[result.pipeline].end_to_end:
        return f"SR maps from MBT-Net in {seconds:.1f} s"
    return f"{result.n_localisations} localisations, {result.n_tracks} tracks in {seconds:.1f} s"


class PipelineWidget(StageWidget):
    """CEUS layer (+ PSF layer, or automatic PSF) -> localisations, tracks and SR maps."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.image = self.layer_combo("CEUS", Image)
        self.psf_layer = self.layer_combo("PSF (none = auto)", Image, allow_none=True)
        self.pipeline = ComboBox(label="pipeline", choices=sorted(PIPELINES), value="baseline1")
        self.block_size = SpinBox(label="block size (frames)", value=200, min=8, max=100000)
        self.upsampling = SpinBox(label="upsampling", value=4, min=1, max=16)
        self.clutter_filter, self.svd_block = clutter_controls()
        self.extend([self.image, self.psf_layer, self.pipeline, self.clutter_filter, self.svd_block,
                     self.block_size, self.upsampling])
        self.finish_layout()

    def work(self):
        layer = self.image.value
        gen, self._extra = pipeline_job(layer, self.pipeline.value, self.psf_layer.value,
                                        block_size=self.block_size.value, upsampling=self.upsampling.value,
                                        clutter_filter=self.clutter_filter.value, svd_block=self.svd_block.value)
        self._source = layer
        return gen

    def done(self, result) -> None:
        add_pipeline_layers(self.viewer, self._source, result, mode=self.rerun_mode, extra_params=self._extra)
        self.status.value = describe_result(result)
