"""Named ULM pipelines that stream over blocks of frames.

A pipeline is denoise -> localise -> track -> render.  The acquisition is
read block by block (:func:`napari_cycleulm.io.iter_blocks`), so memory
depends on ``block_size``, not on the number of frames: tracks are carried
across block boundaries by the incremental :class:`~napari_cycleulm.track.Linker`,
SR maps are accumulated by :class:`~napari_cycleulm.render.SRRenderer`, and
with ``out_dir`` the localisation and track tables are streamed to CSV.

Pipelines (the paper's names)
-----------------------------
``baseline1``
    Bradley-Roth adaptive thresholding + NCC localisation + tracking.
``baseline2``
    Bradley-Roth adaptive thresholding + sparsity-based deconvolution + tracking.
``cycleulm-ncc``
    MB-DT translation to the MB-only domain + NCC (MB-only PSF) + tracking.
``cycleulm-decon``
    MB-DT + deconvolution (MB-only PSF) + tracking.
``cycleulm-loc``
    MB-DT + MBL-Net + tracking.
``cycleulm-e2e``
    MB-DT + MBT-Net: trajectory and velocity maps accumulated into SR maps
    (:class:`~napari_cycleulm.e2e.E2EAccumulator`); no localisations or tracks.
``cycleulm-tracks``
    CycleULM-Loc's localisations linked into explicit tracks with the motion
    prior of MBT-Net's velocity maps (the paper's proposed future work,
    :mod:`napari_cycleulm.motion_prior`): MBT-Net runs on the same MB-only
    frames, and after the last block the linker predicts each track's next
    position from the prior velocity blended with its own.  Localisations
    are kept until then (five numbers each).

The CycleULM pipelines take their networks as ``mbdt=``, ``mblnet=``,
``mbtnet=`` (None / ``"default"`` for the shipped weights, a checkpoint path
or a loaded :class:`~napari_cycleulm.checkpoint.Checkpoint`).  MB-DT runs
block by block with the neighbouring frame of the adjacent block as context,
so results do not depend on ``block_size``.  NCC and deconvolution on MB-only
frames use the MB-only PSF ``psf.mbonly()`` (the CEUS PSF shrunk by 0.5).

Default thresholds of the CycleULM pipelines
--------------------------------------------
Chosen with ``benchmarks/thresholds.py`` on the shipped MB-DT's output for four
simulated settings (clutter -6 / -12 / -12 / -20 dB, 10 / 20 / 40 / 30
bubbles per frame, CEUS PSF FWHM 200x300 / 150x250 / 250x350 / 300x400 um,
seeds 31-34, none used for training or reports): each default is the
threshold whose worst F1 loss (1 px tolerance) against each setting's own
best threshold is smallest, so it is near-best on all four at once.

Re-chosen for the current MB-DT and MBL-Net with the default evidence gate
(``docs/results/thresholds.json``):

* ``cycleulm-ncc`` 0.75 (NCC score): on the six settings of the gate
  selection (seeds 31-36, ``--with-gate-settings``, candidates 0.1-0.9;
  ``docs/results/thresholds_ncc_six_settings.json``) its worst F1 loss is
  0.136 (0.1875: 0.164; 0.9: 0.28).  On seeds 31-34 alone the rule gave 0.1875
  (worst loss 0.000), which lost at sparse, noisy data; the six settings are
  those the gate was chosen on, so thresholds and gate share one selection set.
* ``cycleulm-decon`` 0.1 (amplitude, MB-only units): worst loss 0.016 (the
  minimax 0.079: 0.015); flat between 0.025 and 0.2.
* ``cycleulm-loc`` 0.4 (3x3 summed MBL-Net probability): worst loss 0.004
  (the minimax 0.504: 0.004).
* ``cycleulm-e2e`` 0.4 (trajectory probability a pixel must reach to count;
  smallest worst-case trajectory-F1 loss on synthetic sequences of three PSF
  sizes, see :data:`napari_cycleulm.e2e.PROB_THRESHOLD`).

Matched localisation counts
---------------------------
The paper compares methods at the same total number of localisations.
``target_count=N`` keeps the N highest-scoring localisations of the whole
acquisition.  This needs every candidate's score before tracking, so the run
has two phases: candidates are localised block by block (kept in memory: five
numbers per candidate), the global score cut is chosen, then the kept
candidates are tracked and rendered block by block.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import io as ulm_io
from ._atomic import staged_dir, write_text_atomic
from ._outputs import check_output_dir
from .arrays import intensity_scale
from .errors import CycleULMError
from .e2e import PROB_THRESHOLD as E2E_PROB_THRESHOLD
from .progress import Progress, drive
from .psf import PSF, PSFEstimate, check_psf_extent
from .render import SRMaps, SRRenderer
from .tables import Localisations, TableWriter, Tracks
from .stages import CALIBRATION_FRAMES, LOCALISERS, calibration_frames, localise_block, run_scale  # noqa: F401 (CALIBRATION_FRAMES re-exported)
from .track import Linker




@dataclass(frozen=True)
class PipelineSpec:
    """What a named pipeline does at each stage."""

    name: str
    denoise: str  # "threshold" | "none" | "mbdt"
    localise: str  # a key of stages.LOCALISERS, or "e2e"
    description: str
    #: Default threshold: NCC score, deconvolution amplitude in normalised
    #: intensity units (the run's 99.9th percentile is 1; MB-only units after
    #: MB-DT), MBL-Net summed probability, or MBT-Net trajectory probability.
    #: Read from the localiser's registry entry (:mod:`napari_cycleulm.stages`).
    threshold: float
    #: Evidence MB-DT's output must have in the CEUS frames (:data:`napari_cycleulm.temporal.GATE_MODES`).
    gate: str = "none"
    #: Motion prior of the linker: "none" (constant-velocity Kalman) or
    #: "mbtnet" (MBT-Net's mean velocity maps of the run, :mod:`napari_cycleulm.motion_prior`).
    motion_prior: str = "none"

    @property
    def networks(self) -> tuple[str, ...]:
        """Checkpoint kinds this pipeline needs."""
        nets = ("mbdt",) if self.denoise == "mbdt" else ()
        if self.localise == "e2e":
            return nets + ("mbtnet",)
        network = LOCALISERS[self.localise].network
        nets = nets + ((network,) if network else ())
        return nets + (("mbtnet",) if self.motion_prior == "mbtnet" else ())


def _spec(name: str, denoise: str, localise: str, description: str, motion_prior: str = "none") -> PipelineSpec:
    """A pipeline whose default threshold is its localiser's for its input domain.

    MB-DT's output is gated by :data:`~napari_cycleulm.temporal.DEFAULT_GATE`.
    """
    from .temporal import DEFAULT_GATE

    threshold = (E2E_PROB_THRESHOLD if localise == "e2e"
                 else LOCALISERS[localise].default_threshold(mb_only=denoise == "mbdt"))
    return PipelineSpec(name, denoise, localise, description, threshold,
                        gate=DEFAULT_GATE if denoise == "mbdt" else "none", motion_prior=motion_prior)


PIPELINES: dict[str, PipelineSpec] = {
    spec.name: spec for spec in (
        _spec("baseline1", "threshold", "ncc", "adaptive thresholding + NCC + tracking"),
        _spec("baseline2", "threshold", "decon", "adaptive thresholding + deconvolution + tracking"),
        _spec("cycleulm-ncc", "mbdt", "ncc", "MB-DT + NCC (MB-only PSF) + tracking"),
        _spec("cycleulm-decon", "mbdt", "decon", "MB-DT + deconvolution (MB-only PSF) + tracking"),
        _spec("cycleulm-loc", "mbdt", "mblnet", "MB-DT + MBL-Net + tracking"),
        _spec("cycleulm-e2e", "mbdt", "e2e", "MB-DT + MBT-Net trajectory maps (end to end)"),
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


def _check_psf(psf) -> PSF:
    if psf is None:
        raise CycleULMError(
            "a PSF is needed for localisation: estimate one (psf.estimate_psf, "
            "`cycleulm psf`, or psf='auto' to pick isolated bubbles automatically)."
        )
    if isinstance(psf, PSFEstimate):
        return psf.psf  # what psf.estimate_psf / estimate_psf_auto return
    if not isinstance(psf, PSF):
        raise CycleULMError(f"psf must be a PSF, 'auto' or None, got {type(psf).__name__}.")
    return psf


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, t0: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


def _stage_denoise(block: np.ndarray, spec: PipelineSpec, psf: PSF, params: dict) -> np.ndarray:
    from .preprocess import adaptive_threshold

    if spec.denoise == "threshold":
        return adaptive_threshold(block, psf=psf, **params)
    if spec.denoise == "none":
        return block
    raise CycleULMError(f"unknown denoiser {spec.denoise!r}")


def _load_networks(spec: PipelineSpec, sources: dict, device) -> dict:
    """Load the checkpoints a pipeline needs (clear errors for missing weights)."""
    from .models import load_model

    return {kind: load_model(kind, sources.get(kind), device) for kind in spec.networks}


def _describe_checkpoint(ckpt) -> dict:
    return {"path": None if ckpt.path is None else str(ckpt.path), "step": ckpt.step, "config": ckpt.config}


def _best_first(locs: Localisations) -> np.ndarray:
    """Order of candidates by decreasing score, ties broken by decreasing intensity."""
    keys = [-np.asarray(locs["score"], np.float64)]
    if "intensity" in locs:
        keys.insert(0, -np.asarray(locs["intensity"], np.float64))
    return np.lexsort(keys)


def iter_pipeline(
    stack,
    pipeline: str = "baseline1",
    psf: PSF | str | None = "auto",
    *,
    block_size: int = 200,
    threshold: float | None = None,
    target_count: int | None = None,
    denoise_params: dict | None = None,
    localise_params: dict | None = None,
    track_params: dict | None = None,
    upsampling: int = 4,
    pixel_size_um: float | None = None,
    frame_rate_hz: float | None = None,
    out_dir: str | Path | None = None,
    keep_tables: bool | None = None,
    device: str | None = None,
    mbdt=None,
    mblnet=None,
    mbtnet=None,
    scale: float | None = None,
    gate: str | None = None,
    gate_params: dict | None = None,
    clutter_filter=None,
) -> Generator[Progress, None, PipelineResult]:
    """Run a named pipeline, yielding progress; the generator returns a :class:`PipelineResult`.

    Parameters
    ----------
    stack : array_like or io.LazyStack
        CEUS frames, (T, H, W) envelope (magnitude) data.
    pipeline : str or PipelineSpec
        One of :data:`PIPELINES`, or a composition of registry stages.
    psf : PSF, PSFEstimate, "auto" or None
        PSF of the CEUS data (an estimator's ``PSFEstimate`` is taken as its ``.psf``).  ``"auto"`` estimates it from isolated bubbles of
        the first block.  The CycleULM pipelines localise with its MB-only
        version ``psf.mbonly()`` and compare that with the range the networks
        were trained on (a ``UserWarning`` when outside);
        ``cycleulm-loc`` / ``cycleulm-e2e`` accept None (no check; also what
        they fall back to, with a warning, when "auto" finds too few bubbles).
    block_size : int
        Frames per block; memory grows with it, not with the acquisition.
    threshold : float, optional
        Localisation threshold: NCC score, deconvolution amplitude in
        normalised intensity units, MBL-Net summed probability, or (E2E) the
        trajectory probability; the pipeline's default when ``None``
        (:attr:`PipelineSpec.threshold`).
    target_count : int, optional
        Keep exactly the N best localisations of the acquisition (see module
        notes; not for ``cycleulm-e2e``).
    denoise_params, localise_params, track_params : dict, optional
        Passed to :func:`preprocess.adaptive_threshold` (baselines) or
        :func:`translate.translate` (CycleULM, e.g. ``batch_size``), the
        localiser (for E2E: ``stride``, ``pad_last`` of
        :class:`~napari_cycleulm.e2e.E2EAccumulator` and ``batch_size``) and
        :class:`track.Linker`.
    upsampling : int
        SR grid factor (4 gives pixels a quarter of the CEUS pixel).
    pixel_size_um, frame_rate_hz : float, optional
        Physical units; velocities are reported in mm/s when both are given.
    out_dir : path, optional
        Write ``localisations.csv``, ``tracks.csv``, ``sr_density.tif``,
        ``sr_velocity.tif``, ``sr_direction.tif``, ``sr_count.tif``,
        ``power_doppler.tif``, ``preview.png`` and ``run.json``; tables are
        streamed to disk (E2E writes no tables).  Files appear only when the
        run completes.
    keep_tables : bool, optional
        Keep localisations and tracks in memory (default: only without ``out_dir``).
    device : str, optional
        Torch device for the localisers and networks (default: CUDA when present).
    mbdt, mblnet, mbtnet : None, "default", path or Checkpoint
        Networks of the CycleULM pipelines (default: the shipped weights).
    scale : float, optional
        Intensity factor of the run (see :mod:`napari_cycleulm.stages`);
        default from the first :data:`CALIBRATION_FRAMES` frames.  Pass 1 for
        frames already in normalised units (e.g. MB-only frames).
    gate : {"none", "spatial", "temporal", "spatial+temporal"}, optional
        Keep MB-DT's output only where the CEUS frames show evidence of a
        bubble: brighter than their spatial neighbourhood (Bradley-Roth), a
        transient over the pixel's temporal background, or both
        (:mod:`napari_cycleulm.temporal`); default: the pipeline's
        (:attr:`PipelineSpec.gate`).
    gate_params : dict, optional
        Further parameters of :func:`~napari_cycleulm.temporal.transient_gate`
        (``significance``, ``spatial_sensitivity``, ``window_half_frames``,
        ``stride_frames``).
    clutter_filter : ClutterFilter or str, optional
        The first stage, before everything else (PSF, scale, MB-DT, gate):
        ``"none"``, ``"svd"`` / ``"svd:auto"`` (automatic cut-off per block)
        or ``"svd:N"``, or a :class:`~napari_cycleulm.preprocess.ClutterFilter`
        (which also sets the SVD block length); default
        :data:`~napari_cycleulm.preprocess.DEFAULT_CLUTTER_FILTER`.  Complex
        IQ input is filtered and its envelope taken.

    Raises
    ------
    CycleULMError
        Bad arguments, missing default weights, unreadable or wrong checkpoints.
    """
    import warnings

    if isinstance(pipeline, PipelineSpec):
        spec, pipeline = pipeline, pipeline.name
    elif pipeline in PIPELINES:
        spec = PIPELINES[pipeline]
    else:
        raise CycleULMError(
            f"unknown pipeline {pipeline!r}; choose one of {sorted(PIPELINES)}."
        )
    if block_size < 1:
        raise CycleULMError(f"block_size must be >= 1, got {block_size}.")
    if target_count is not None and target_count < 1:
        raise CycleULMError(f"target_count must be a positive number, got {target_count}.")
    e2e = spec.localise == "e2e"
    if e2e and target_count is not None:
        raise CycleULMError(
            "target_count does not apply to cycleulm-e2e, which produces no localisations; "
            "leave it unset or use cycleulm-loc."
        )
    if upsampling < 1:
        raise CycleULMError(f"upsampling must be >= 1, got {upsampling}.")
    n_frames = len(stack)
    shape = tuple(int(s) for s in stack.shape)
    if len(shape) != 3 or n_frames == 0:
        raise CycleULMError(
            f"the input must be a (frames, height, width) stack with at least one frame, got shape {shape}."
        )
    from .preprocess import DEFAULT_CLUTTER_FILTER, clutter_filtered, parse_clutter_filter

    clutter = parse_clutter_filter(DEFAULT_CLUTTER_FILTER if clutter_filter is None else clutter_filter)
    source = getattr(stack, "source", None)
    stack = clutter_filtered(stack, clutter, device=device)
    keep_tables = out_dir is None if keep_tables is None else keep_tables
    if out_dir is not None:
        # Before any work: the run folder is never an input nor an unrelated folder.
        check_output_dir(out_dir, inputs=[source], overwrite=True,
                         option="out_dir")
    denoise_params = dict(denoise_params or {})
    localise_params = dict(localise_params or {})
    track_params = dict(track_params or {})
    if device is not None:
        denoise_params.setdefault("device", device)
        localise_params.setdefault("device", device)
    localise_params["threshold"] = spec.threshold if threshold is None else threshold
    timer = _Timer()

    # Networks first: a missing or broken checkpoint is reported before any work.
    t0 = time.perf_counter()
    nets = _load_networks(spec, {"mbdt": mbdt, "mblnet": mblnet, "mbtnet": mbtnet}, device)
    if nets:
        timer.add("load models", t0)

    # The first frames calibrate the run: automatic PSF and intensity scale.
    calibration = calibration_frames(stack)

    if isinstance(psf, str):
        if psf != "auto":
            raise CycleULMError(f"psf must be a PSF object or 'auto', got {psf!r}.")
        from .psf import estimate_psf_auto

        yield Progress(0, n_frames, "psf")
        t0 = time.perf_counter()
        try:
            psf = estimate_psf_auto(calibration, pixel_size_um=pixel_size_um).psf
        except CycleULMError as exc:
            if spec.localise not in ("mblnet", "e2e"):
                raise
            # These pipelines need the PSF only to check the networks' training range.
            warnings.warn(
                f"the PSF could not be estimated automatically ({exc}); the check that it is "
                "within the range the networks were trained on is skipped.",
                UserWarning,
                stacklevel=2,
            )
            psf = None
        timer.add("psf", t0)
    if not (psf is None and spec.localise in ("mblnet", "e2e")):
        psf = _check_psf(psf)
        check_psf_extent(psf, shape[1:])
    mb_psf = psf.mbonly() if (psf is not None and spec.denoise == "mbdt") else None
    loc_psf = mb_psf if spec.denoise == "mbdt" else psf
    if mb_psf is not None:
        from .models import check_psf_in_range

        for ckpt in nets.values():
            msg = check_psf_in_range(mb_psf, ckpt)
            if msg:
                warnings.warn(msg, UserWarning, stacklevel=2)
    # One intensity scale for the whole run, from the first frames (whatever
    # the block size), so that absolute thresholds mean the same in every block.
    scale = intensity_scale(calibration) if scale is None else run_scale(stack, scale)
    del calibration

    def psf_params(p):
        if p is None:
            return None
        return {
            "sigma_y_px": p.sigma_y_px,
            "sigma_x_px": p.sigma_x_px,
            "theta_rad": p.theta_rad,
            "fwhm_y_px": p.fwhm_y_px,
            "fwhm_x_px": p.fwhm_x_px,
        }

    params = {
        "pipeline": pipeline,
        "description": spec.description,
        "block_size": block_size,
        "clutter_filter": {"method": clutter.describe(), "block_frames": clutter.block_frames,
                           "cutoffs": getattr(stack, "cutoffs", {})},
        "threshold": localise_params["threshold"],
        "target_count": target_count,
        "denoise_params": {k: v for k, v in denoise_params.items() if k != "device"},
        "localise_params": {k: v for k, v in localise_params.items() if k != "device"},
        "track_params": track_params,
        "upsampling": upsampling,
        "intensity_scale": scale,
        "pixel_size_um": pixel_size_um,
        "frame_rate_hz": frame_rate_hz,
        "psf": psf_params(psf),
    }
    if spec.denoise == "mbdt":
        params["mbonly_psf"] = psf_params(mb_psf)
        params["models"] = {k: _describe_checkpoint(c) for k, c in nets.items()}

    e2e_acc = None
    if e2e:
        from .e2e import E2EAccumulator

        e2e_add = {k: localise_params.pop(k) for k in ("batch_size", "device") if k in localise_params}
        e2e_kw = {k: localise_params.pop(k) for k in ("stride", "pad_last") if k in localise_params}
        e2e_acc = E2EAccumulator(
            shape[1:], upsampling, prob_threshold=localise_params.pop("threshold"), **e2e_kw
        )
        if localise_params:
            raise CycleULMError(
                f"unknown localise_params for cycleulm-e2e: {sorted(localise_params)}; "
                "use stride, pad_last or batch_size."
            )
    prior_acc = None
    if spec.motion_prior == "mbtnet":
        from .e2e import E2EAccumulator

        # MBT-Net's velocity maps of the whole run are the linker's motion prior, so
        # localisations are kept until the last block (five numbers each), then linked.
        prior_acc = E2EAccumulator(shape[1:], upsampling, prob_threshold=E2E_PROB_THRESHOLD)
    loc_threshold = None if e2e else localise_params.pop("threshold")
    loc_model = None if e2e else nets.get(LOCALISERS[spec.localise].network)
    mblnet_context = loc_model is not None and int(loc_model.config.get("in_channels", 1)) == 3

    from .temporal import block_gate, gate_kwargs

    gate_mode = "none" if spec.denoise != "mbdt" else (spec.gate if gate is None else gate)
    gated = gate_kwargs(gate_mode) is not None
    gate_params = dict(gate_params or {})
    params["gate"] = gate_mode
    if gated:
        params["gate_params"] = dict(gate_params)

    def translate_block(block, before, after):
        from .translate import translate

        return translate(block, nets["mbdt"], scale=1.0, before=before, after=after, **denoise_params)

    def localise_blocks() -> Generator[Progress, None, None]:
        """Yield (start, stop, localisations) after denoising and localising each block."""
        prev_raw = prev_mb = None  # last (scaled) CEUS / MB-only frame of the previous block
        for start, stop, block in ulm_io.iter_blocks(stack, block_size):
            t0 = time.perf_counter()
            block = block * scale
            extra = {}
            if spec.denoise == "mbdt":
                n_next = 2 if mblnet_context else 1
                nxt = (
                    ulm_io.read_block(stack, stop, min(n_frames, stop + n_next)) * scale
                    if stop < n_frames
                    else block[:0]
                )
                den = translate_block(block, prev_raw, nxt[0] if len(nxt) else None)
                if mblnet_context:
                    # The next MB-only frame, so 3-frame MBL-Nets see true neighbours.
                    after = None
                    if len(nxt):
                        after = translate_block(nxt[:1], block[-1], nxt[1] if len(nxt) > 1 else None)[0]
                        if gated:  # the neighbour as the next block will see it
                            after = after * block_gate(stack, nxt[:1], stop, stop + 1, scale=scale, psf=psf,
                                                       mode=gate_mode, **gate_params)[0]
                    extra = {"before": prev_mb, "after": after}
                if gated:
                    # Keep MB-DT's bubbles only where the CEUS shows evidence of one (temporal.py).
                    t_gate = time.perf_counter()
                    den = den * block_gate(stack, block, start, stop, scale=scale, psf=psf, mode=gate_mode,
                                           **gate_params)
                    timer.add("gate", t_gate)
                prev_raw, prev_mb = block[-1], den[-1]
            else:
                den = _stage_denoise(block, spec, psf, denoise_params)
            timer.add("denoise", t0)
            t0 = time.perf_counter()
            if e2e:
                e2e_acc.add(den, nets["mbtnet"], **e2e_add)
                locs = Localisations()
                timer.add("e2e", t0)
            else:
                if prior_acc is not None:
                    prior_acc.add(den, nets["mbtnet"], device=device)
                    timer.add("motion prior", t0)
                    t0 = time.perf_counter()
                locs = localise_block(den, spec.localise, loc_psf, threshold=loc_threshold, model=loc_model,
                                      **extra, **localise_params)
                timer.add("localise", t0)
            if len(locs):
                locs = locs.with_columns(frame=locs["frame"] + start)
            pd_sum[:] += (np.asarray(block, np.float64) ** 2).sum(axis=0) / scale**2
            yield start, stop, locs

    pd_sum = np.zeros(shape[1:], np.float64)
    renderer = SRRenderer(shape[1:], upsampling=upsampling)
    linker = Linker(**track_params)
    out = Path(out_dir) if out_dir is not None else None
    loc_parts: list[Localisations] = []
    track_parts: list[Tracks] = []
    n_locs = 0
    n_tracks = 0

    from contextlib import ExitStack

    with ExitStack() as stack_ctx:
        loc_writer = track_writer = None
        if out is not None:
            # Everything is written into a hidden sibling folder that replaces
            # ``out`` as one unit when the run completes: never a mix of runs.
            stage = stack_ctx.enter_context(staged_dir(out))
            if not e2e:
                loc_writer = stack_ctx.enter_context(
                    TableWriter(stage / "localisations.csv", table_type=Localisations)
                )
                track_writer = stack_ctx.enter_context(
                    TableWriter(stage / "tracks.csv", table_type=Tracks)
                )

        def consume_tracks(tracks: Tracks) -> None:
            nonlocal n_tracks
            if len(tracks) == 0:
                return
            t0 = time.perf_counter()
            renderer.add_tracks(tracks)
            timer.add("render", t0)
            n_tracks += tracks.n_tracks
            if track_writer is not None:
                track_writer.write(tracks)
            if keep_tables:
                track_parts.append(tracks)

        def consume_locs(locs: Localisations, last_frame: int) -> None:
            nonlocal n_locs
            n_locs += len(locs)
            t0 = time.perf_counter()
            renderer.add_localisations(locs)
            timer.add("render", t0)
            if loc_writer is not None:
                loc_writer.write(locs)
            if keep_tables:
                loc_parts.append(locs)
            t0 = time.perf_counter()
            finished = linker.add(locs, last_frame=last_frame)
            timer.add("track", t0)
            consume_tracks(finished)

        if e2e:
            for start, stop, _ in localise_blocks():
                yield Progress(stop, n_frames, "MB-DT + MBT-Net")
        elif target_count is None and prior_acc is None:
            for start, stop, locs in localise_blocks():
                consume_locs(locs, stop - 1)
                yield Progress(stop, n_frames, "localise + track")
        else:
            candidates: list[Localisations] = []
            for start, stop, locs in localise_blocks():
                candidates.append(locs)
                yield Progress(stop, n_frames, "localise")
            allc = Localisations.concat(candidates)
            del candidates
            if target_count is not None:
                if len(allc) < target_count:
                    warnings.warn(
                        f"only {len(allc)} candidate localisations for target_count={target_count}; "
                        "lower the threshold to reach the target.",
                        stacklevel=2,
                    )
                keep = _best_first(allc)[:target_count] if len(allc) else np.zeros(0, np.int64)
                allc = allc.select(np.sort(keep)).sort("frame")
                params["matched_score_cut"] = float(allc["score"].min()) if len(allc) else None
            if prior_acc is not None:
                from .motion_prior import VelocityPrior

                t0 = time.perf_counter()
                vy, vx = prior_acc.mean_velocity()
                # Filled within about 3 CEUS pixels of MBT-Net's trajectories (sigma: one CEUS pixel).
                linker = Linker(motion_prior=VelocityPrior(vy, vx, upsampling, fill_sigma=float(upsampling)),
                                **track_params)
                timer.add("motion prior", t0)
                params["motion_prior"] = {"network": "mbtnet", "windows": prior_acc.n_windows,
                                          "known_fraction": float(np.isfinite(vy).mean())}
            for start in range(0, n_frames, block_size):
                stop = min(start + block_size, n_frames)
                consume_locs(allc.in_frames(start, stop), stop - 1)
                yield Progress(stop, n_frames, "track")
        t0 = time.perf_counter()
        consume_tracks(linker.finish())
        timer.add("track", t0)

        if e2e:
            t0 = time.perf_counter()
            maps = e2e_acc.result(pixel_size_um=pixel_size_um, frame_rate_hz=frame_rate_hz)
            timer.add("e2e", t0)
            params["e2e"] = {
                "windows": e2e_acc.n_windows,
                "window_frames": e2e_acc.window,
                "stride": e2e_acc.stride or e2e_acc.window,
                "prob_threshold": e2e_acc.prob_threshold,
            }
        else:
            maps = renderer.result(pixel_size_um=pixel_size_um, frame_rate_hz=frame_rate_hz)
        power_doppler = (pd_sum / n_frames).astype(np.float32)
        result = PipelineResult(
            pipeline=pipeline,
            localisations=Localisations.concat(loc_parts) if keep_tables or e2e else None,
            tracks=Tracks.concat(track_parts) if keep_tables or e2e else None,
            maps=maps,
            power_doppler=power_doppler,
            n_frames=n_frames,
            n_localisations=n_locs,
            n_tracks=n_tracks,
            timings_s=timer.seconds,
            params=params,
        )
        if out is not None:
            result.outputs = {k: str(out / Path(v).name) for k, v in write_maps(result, stage).items()}
            if e2e:
                result.outputs["localisations"] = E2E_NO_TABLES
                result.outputs["tracks"] = E2E_NO_TABLES
            else:
                result.outputs["localisations"] = str(out / "localisations.csv")
                result.outputs["tracks"] = str(out / "tracks.csv")
            write_text_atomic(stage / "run.json", json.dumps(result.summary(), indent=2, default=str))
    return result


def run_pipeline(stack, pipeline: str = "baseline1", psf="auto", *, progress: Callable[[Progress], Any] | None = None, **kwargs) -> PipelineResult:
    """Run a named pipeline to completion (see :func:`iter_pipeline` for parameters).

    ``progress`` is called with each :class:`Progress` event; returning ``False``
    from it cancels the run (outputs already on disk are left untouched).
    """
    return drive(iter_pipeline(stack, pipeline, psf, **kwargs), progress)


def write_maps(result: PipelineResult, out_dir: str | Path) -> dict[str, str]:
    """Write the SR maps, power Doppler and a PNG preview of a result; return the paths."""
    from .render import to_png

    out = Path(out_dir)
    maps = result.maps
    paths = {
        "sr_density": out / "sr_density.tif",
        "sr_velocity": out / "sr_velocity.tif",
        "sr_direction": out / "sr_direction.tif",
        "sr_count": out / "sr_count.tif",
        "power_doppler": out / "power_doppler.tif",
        "preview": out / "preview.png",
    }
    ulm_io.write_stack(paths["sr_density"], maps.density)
    ulm_io.write_stack(paths["sr_velocity"], maps.velocity)
    ulm_io.write_stack(paths["sr_direction"], maps.direction)
    ulm_io.write_stack(paths["sr_count"], maps.count)
    ulm_io.write_stack(paths["power_doppler"], result.power_doppler)
    sr_px = (
        result.params.get("pixel_size_um") / maps.upsampling
        if result.params.get("pixel_size_um")
        else None
    )
    to_png(maps.density, paths["preview"], cmap="hot", pixel_size_um=sr_px, scale_bar_mm=1.0 if sr_px else None)
    return {k: str(v) for k, v in paths.items()}
