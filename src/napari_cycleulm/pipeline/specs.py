"""What each named pipeline does: its stages, default threshold and networks.

:data:`PIPELINES` composes entries of the stage registry
(:data:`napari_cycleulm.stages.LOCALISERS`, the denoisers ``threshold`` /
``none`` / ``mbdt``); the CLI and the widgets list these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..render.e2e import PROB_THRESHOLD as E2E_PROB_THRESHOLD
from ..render import SRMaps
from ..stages import DENOISERS, LOCALISERS
from ..io.tables import Localisations, Tracks


@dataclass(frozen=True)
class PipelineSpec:
    """What a named pipeline does at each stage."""

    name: str
    denoise: str  # a key of stages.DENOISERS: "threshold" | "none" | "mbdt"
    #: A key of stages.LOCALISERS; None for an end-to-end pipeline that localises nothing
    #: (MBT-Net's trajectory maps are its SR maps, :attr:`end_to_end`).
    localise: str | None
    description: str
    #: Default threshold: NCC score, deconvolution amplitude in normalised
    #: intensity units (the run's 99.9th percentile is 1; MB-only units after
    #: MB-DT), MBL-Net summed probability, or MBT-Net trajectory probability.
    #: Read from the localiser's registry entry (:mod:`napari_cycleulm.stages`).
    threshold: float
    #: Evidence MB-DT's output must have in the CEUS frames (:data:`napari_cycleulm.preprocess.evidence_gate.GATE_MODES`).
    gate: str = "none"
    #: Motion prior of the linker: "none" (constant-velocity Kalman) or
    #: "mbtnet" (MBT-Net's mean velocity maps of the run, :mod:`napari_cycleulm.track.motion_prior`).
    motion_prior: str = "none"

    @property
    def end_to_end(self) -> bool:
        """True when the SR maps come from MBT-Net's trajectory maps, without localisations or tracks."""
        return self.localise is None

    @property
    def psf_optional(self) -> bool:
        """True when the pipeline can run without a PSF (it then only skips the networks' range check)."""
        return self.end_to_end or not LOCALISERS[self.localise].needs_psf

    @property
    def networks(self) -> tuple[str, ...]:
        """Checkpoint kinds this pipeline needs."""
        network = DENOISERS[self.denoise].network
        nets = (network,) if network else ()
        if self.end_to_end:
            return nets + ("mbtnet",)
        network = LOCALISERS[self.localise].network
        nets = nets + ((network,) if network else ())
        return nets + (("mbtnet",) if self.motion_prior == "mbtnet" else ())


def _spec(name: str, denoise: str, localise: str | None, description: str, motion_prior: str = "none") -> PipelineSpec:
    """A pipeline whose default threshold is its localiser's for its input domain.

    MB-DT's output is gated by :data:`~napari_cycleulm.preprocess.evidence_gate.DEFAULT_GATE`.
    """
    from ..preprocess.evidence_gate import DEFAULT_GATE

    threshold = (E2E_PROB_THRESHOLD if localise is None
                 else LOCALISERS[localise].default_threshold(mb_only=DENOISERS[denoise].mb_only))
    return PipelineSpec(name, denoise, localise, description, threshold,
                        gate=DEFAULT_GATE if DENOISERS[denoise].mb_only else "none", motion_prior=motion_prior)


PIPELINES: dict[str, PipelineSpec] = {
    spec.name: spec for spec in (
        _spec("baseline1", "threshold", "ncc", "adaptive thresholding + NCC + tracking"),
        _spec("baseline2", "threshold", "decon", "adaptive thresholding + deconvolution + tracking"),
        _spec("cycleulm-ncc", "mbdt", "ncc", "MB-DT + NCC (MB-only PSF) + tracking"),
        _spec("cycleulm-decon", "mbdt", "decon", "MB-DT + deconvolution (MB-only PSF) + tracking"),
        _spec("cycleulm-loc", "mbdt", "mblnet", "MB-DT + MBL-Net + tracking"),
        _spec("cycleulm-e2e", "mbdt", None, "MB-DT + MBT-Net trajectory maps (end to end)"),
        _spec("cycleulm-tracks", "mbdt", "mblnet",
              "MB-DT + MBL-Net, tracks linked with MBT-Net's velocity maps as motion prior",
              motion_prior="mbtnet"),
    )
}

#: Value of ``PipelineResult.outputs["localisations"]`` / ``["tracks"]`` for E2E runs.
E2E_NO_TABLES = "not produced: cycleulm-e2e makes SR maps from MBT-Net, without localisations or tracks"


@dataclass
class PipelineResult:
    """What a pipeline run produced.

    Attributes
    ----------
    pipeline : str
        Pipeline name.
    localisations : Localisations or None
        All localisations (pixels); ``None`` when streamed to disk only.
    tracks : Tracks or None
        Tracks of at least ``min_length`` frames; ``None`` when streamed to disk only.
    maps : SRMaps
        SR density, count and velocity maps on the upsampled grid.
    power_doppler : numpy.ndarray
        Mean squared intensity of the input frames, (H, W).
    n_frames, n_localisations, n_tracks : int
        Counts.
    timings_s : dict
        Seconds spent per stage.
    params : dict
        Every parameter used, for reproducibility.
    outputs : dict
        Paths written (when ``out_dir`` was given).
    """

    pipeline: str
    localisations: Localisations | None
    tracks: Tracks | None
    maps: SRMaps
    power_doppler: np.ndarray
    n_frames: int
    n_localisations: int
    n_tracks: int
    timings_s: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts, timings and parameters as a JSON-serialisable dict."""
        return {
            "pipeline": self.pipeline,
            "n_frames": self.n_frames,
            "n_localisations": self.n_localisations,
            "n_tracks": self.n_tracks,
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "params": self.params,
            "outputs": self.outputs,
        }


__all__ = ["E2E_NO_TABLES", "PIPELINES", "PipelineResult", "PipelineSpec"]
