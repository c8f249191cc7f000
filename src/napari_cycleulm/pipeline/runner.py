"""The streaming runner: plan a run, process its blocks, link and merge in frame order."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import staged_dir, write_text_atomic
from .._outputs import check_output_dir
from ..device import resolve_device
from ..dl.inference import default_precision
from ..errors import CycleULMError
from ..render.e2e import PROB_THRESHOLD as E2E_PROB_THRESHOLD
from ..progress import Progress, drive
from ..psf import PSF, PSFEstimate, check_psf_extent
from ..render import PowerDopplerAccumulator, SRRenderer
from ..stages import LOCALISERS, calibration_frames, get_denoiser, run_scale
from ..io.tables import Localisations, TableWriter, Tracks
from ..track import Linker
from .blocks import BlockResult, RunPlan, WindowPlan, process_block
from .specs import E2E_NO_TABLES, PIPELINES, PipelineResult, PipelineSpec


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


def _load_networks(spec: PipelineSpec, sources: dict, device) -> dict:
    """Load the checkpoints a pipeline needs (clear errors for missing weights)."""
    from ..dl.models import load_model

    return {kind: load_model(kind, sources.get(kind), device) for kind in spec.networks}


def _sendable_array(stack) -> bool:
    """An input another process can receive as it is: a NumPy, zarr or dask array."""
    return isinstance(stack, np.ndarray) or type(stack).__module__.split(".")[0] in ("zarr", "dask")


def _describe_checkpoint(ckpt) -> dict:
    return {"path": None if ckpt.path is None else str(ckpt.path), "step": ckpt.step, "config": ckpt.config}


def _best_first(locs: Localisations) -> np.ndarray:
    """Order of candidates by decreasing score, ties broken by decreasing intensity."""
    keys = [-np.asarray(locs["score"], np.float64)]
    if "intensity" in locs:
        keys.insert(0, -np.asarray(locs["intensity"], np.float64))
    return np.lexsort(keys)


@dataclass
class RunSetup:
    """What :func:`plan_run` decided: the plan every block follows, and the run's record."""

    plan: RunPlan
    #: Every parameter of the run (written to run.json).
    params: dict
    timings_s: dict
    track_params: dict
    keep_tables: bool
    #: SVD block start -> clutter components removed (fills as blocks are filtered).
    cutoffs: dict


def plan_run(
    stack,
    pipeline="baseline1",
    psf="auto",
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
    out_dir=None,
    keep_tables: bool | None = None,
    device: str | None = None,
    mbdt=None,
    mblnet=None,
    mbtnet=None,
    scale: float | None = None,
    gate: str | None = None,
    gate_params: dict | None = None,
    clutter_filter=None,
) -> RunSetup:
    """Check the arguments, load the networks, calibrate (PSF, intensity scale): the run's plan.

    Everything decided once per run; the parameters are those of
    :func:`iter_pipeline`, which calls it.

    Raises
    ------
    CycleULMError
        Bad arguments, missing default weights, unreadable or wrong checkpoints.
    """
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
    e2e = spec.end_to_end
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
    from ..preprocess.clutter_filter import DEFAULT_CLUTTER_FILTER, clutter_filtered, parse_clutter_filter

    clutter = parse_clutter_filter(DEFAULT_CLUTTER_FILTER if clutter_filter is None else clutter_filter)
    raw_input = stack
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
    threshold = spec.threshold if threshold is None else threshold
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
        from ..psf import estimate_psf_auto

        t0 = time.perf_counter()
        try:
            psf = estimate_psf_auto(calibration, pixel_size_um=pixel_size_um).psf
        except CycleULMError as exc:
            if not spec.psf_optional:
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
    if not (psf is None and spec.psf_optional):
        psf = _check_psf(psf)
        check_psf_extent(psf, shape[1:])
    mb_only = get_denoiser(spec.denoise).mb_only
    mb_psf = psf.mbonly() if (psf is not None and mb_only) else None
    if mb_psf is not None:
        from ..dl.models import check_psf_in_range

        for ckpt in nets.values():
            msg = check_psf_in_range(mb_psf, ckpt)
            if msg:
                warnings.warn(msg, UserWarning, stacklevel=2)
    # One intensity scale for the whole run, from the first frames (whatever
    # the block size), so that absolute thresholds mean the same in every block;
    # each denoiser's registry entry says which convention its input follows
    # (MB-DT: intensity.mbdt_input_scale).
    scale = run_scale(stack, scale) if scale is not None else get_denoiser(spec.denoise).input_scale(calibration)
    del calibration

    from ..preprocess.evidence_gate import gate_kwargs

    gate_mode = "none" if not mb_only else (spec.gate if gate is None else gate)
    if spec.denoise == "mbdt":
        from ..dl.mbdt_inference import DEFAULT_TTA, tta_flips

        # MB-DT's mirror averaging, checked before any work and recorded in run.json.
        tta_flips(denoise_params.setdefault("tta", DEFAULT_TTA))
    gate_params = dict(gate_params or {})
    e2e_plan = prior_plan = None
    if e2e:
        from ..render.e2e import E2EAccumulator

        window = int(nets["mbtnet"].config.get("n_frames", 8))
        unknown = sorted(set(localise_params) - {"stride", "pad_last", "batch_size", "device"})
        if unknown:
            raise CycleULMError(
                f"unknown localise_params for cycleulm-e2e: {unknown}; use stride, pad_last or batch_size."
            )
        # Checks the parameters (and the SR grid's memory) before any work.
        E2EAccumulator(shape[1:], upsampling, prob_threshold=threshold,
                       stride=localise_params.get("stride"), pad_last=localise_params.get("pad_last", True))
        e2e_plan = WindowPlan(window, threshold, stride=localise_params.get("stride"),
                              pad_last=localise_params.get("pad_last", True),
                              batch_size=localise_params.get("batch_size"))
    if spec.motion_prior == "mbtnet":
        # MBT-Net's velocity maps of the whole run are the linker's motion prior, so
        # localisations are kept until the last block (five numbers each), then linked.
        prior_plan = WindowPlan(int(nets["mbtnet"].config.get("n_frames", 8)), E2E_PROB_THRESHOLD)
    loc_model = None if e2e else nets.get(LOCALISERS[spec.localise].network)
    plan = RunPlan(
        spec=spec, n_frames=n_frames, frame_shape=shape[1:], block_size=block_size, upsampling=upsampling,
        scale=scale,
        psf=psf, loc_psf=mb_psf if mb_only else psf,
        threshold=None if e2e else threshold,
        denoise_params=denoise_params,
        localise_params={} if e2e else localise_params,
        gate_mode=gate_mode, gate_params=gate_params, e2e=e2e_plan, prior=prior_plan,
        mblnet_context=loc_model is not None and int(loc_model.config.get("in_channels", 1)) == 3,
        device=device, clutter=clutter,
        source_array=raw_input if _sendable_array(raw_input) else None,
        reopen=getattr(raw_input, "reopen", None),
        network_sources={k: (c if c.path is None else str(c.path)) for k, c in nets.items()},
        _stack=stack, _networks=nets,
    )

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

    cutoffs = getattr(stack, "cutoffs", {})
    params = {
        "pipeline": pipeline,
        "description": spec.description,
        "block_size": block_size,
        "clutter_filter": {"method": clutter.describe(), "block_frames": clutter.block_frames,
                           "cutoffs": cutoffs},
        "threshold": threshold,
        "target_count": target_count,
        "denoise_params": {k: v for k, v in denoise_params.items() if k != "device"},
        "localise_params": {"threshold": threshold,
                            **{k: v for k, v in localise_params.items() if k != "device"}},
        "track_params": track_params,
        "upsampling": upsampling,
        "intensity_scale": scale,
        "pixel_size_um": pixel_size_um,
        "frame_rate_hz": frame_rate_hz,
        "psf": psf_params(psf),
    }
    if mb_only:
        params["mbonly_psf"] = psf_params(mb_psf)
        params["models"] = {k: _describe_checkpoint(c) for k, c in nets.items()}
        params["inference_precision"] = default_precision(resolve_device(device))
    params["gate"] = gate_mode
    if gate_kwargs(gate_mode) is not None:
        params["gate_params"] = dict(gate_params)

    return RunSetup(plan=plan, params=params, timings_s=timer.seconds, track_params=track_params,
                    keep_tables=keep_tables, cutoffs=cutoffs)


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
    client=None,
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
        :class:`~napari_cycleulm.render.e2e.E2EAccumulator` and ``batch_size``) and
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
        (:mod:`napari_cycleulm.preprocess.evidence_gate`); default: the pipeline's
        (:attr:`PipelineSpec.gate`).
    gate_params : dict, optional
        Further parameters of :func:`~napari_cycleulm.preprocess.evidence_gate.transient_gate`
        (``significance``, ``spatial_sensitivity``, ``window_half_frames``,
        ``stride_frames``).
    clutter_filter : ClutterFilter or str, optional
        The first stage, before everything else (PSF, scale, MB-DT, gate):
        ``"none"``, ``"svd"`` / ``"svd:auto"`` (automatic cut-off per block)
        or ``"svd:N"``, or a :class:`~napari_cycleulm.preprocess.ClutterFilter`
        (which also sets the SVD block length); default
        :data:`~napari_cycleulm.preprocess.clutter_filter.DEFAULT_CLUTTER_FILTER`.  Complex
        IQ input is filtered and its envelope taken.
    client : distributed.Client, optional
        Spread the blocks over a dask cluster
        (:mod:`napari_cycleulm.pipeline.distributed`): each worker denoises
        and localises whole blocks, reading the input file itself; tracks are
        linked here in frame order and the maps merged, so the result is the
        one of a run in this process.

    Raises
    ------
    CycleULMError
        Bad arguments, missing default weights, unreadable or wrong checkpoints.
    """
    if isinstance(psf, str) and psf == "auto":
        yield Progress(0, len(stack), "psf")
    setup = plan_run(
        stack, pipeline, psf, block_size=block_size, threshold=threshold, target_count=target_count,
        denoise_params=denoise_params, localise_params=localise_params, track_params=track_params,
        upsampling=upsampling, pixel_size_um=pixel_size_um, frame_rate_hz=frame_rate_hz, out_dir=out_dir,
        keep_tables=keep_tables, device=device, mbdt=mbdt, mblnet=mblnet, mbtnet=mbtnet, scale=scale,
        gate=gate, gate_params=gate_params, clutter_filter=clutter_filter,
    )
    plan, params, cutoffs = setup.plan, setup.params, setup.cutoffs
    spec, n_frames, keep_tables = plan.spec, plan.n_frames, setup.keep_tables
    e2e = plan.e2e is not None
    timer = _Timer()
    timer.seconds = setup.timings_s

    if client is None:
        blocks: Iterator[BlockResult] = (process_block(plan, a, b) for a, b in plan.blocks())
    else:
        from .distributed import iter_block_results

        blocks = iter_block_results(client, plan)
        params["dask"] = {"scheduler": getattr(client.scheduler, "address", None),
                          "workers": len(client.scheduler_info().get("workers", {}))}

    pd = PowerDopplerAccumulator()
    e2e_acc = prior_acc = None

    def merged(results: Iterator[BlockResult]) -> Iterator[BlockResult]:
        """Merge each block's accumulators and timings, in frame order."""
        nonlocal e2e_acc, prior_acc
        for r in results:
            pd.merge(r.power_doppler)
            if r.e2e is not None:
                e2e_acc = r.e2e if e2e_acc is None else e2e_acc.merge(r.e2e)
            if r.prior is not None:
                prior_acc = r.prior if prior_acc is None else prior_acc.merge(r.prior)
            cutoffs.update(r.cutoffs)
            for stage, s in r.timings_s.items():
                timer.seconds[stage] = timer.seconds.get(stage, 0.0) + s
            yield r

    renderer = SRRenderer(plan.frame_shape, upsampling=upsampling)
    track_params = setup.track_params
    linker = Linker(**track_params)
    out = Path(out_dir) if out_dir is not None else None
    loc_parts: list[Localisations] = []
    track_parts: list[Tracks] = []
    n_locs = 0
    n_tracks = 0

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
            for r in merged(blocks):
                yield Progress(r.stop, n_frames, "MB-DT + MBT-Net")
        elif target_count is None and plan.prior is None:
            for r in merged(blocks):
                consume_locs(r.localisations, r.stop - 1)
                yield Progress(r.stop, n_frames, "localise + track")
        else:
            candidates: list[Localisations] = []
            for r in merged(blocks):
                candidates.append(r.localisations)
                yield Progress(r.stop, n_frames, "localise")
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
            if plan.prior is not None:
                from ..track.motion_prior import VelocityPrior

                t0 = time.perf_counter()
                vy, vx = prior_acc.mean_velocity()
                # Filled within about 3 CEUS pixels of MBT-Net's trajectories (sigma: one CEUS pixel).
                linker = Linker(motion_prior=VelocityPrior(vy, vx, upsampling, fill_sigma=float(upsampling)),
                                **track_params)
                timer.add("motion prior", t0)
                params["motion_prior"] = {"network": "mbtnet", "windows": prior_acc.n_windows,
                                          "known_fraction": float(np.isfinite(vy).mean())}
            for start, stop in plan.blocks():
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
        result = PipelineResult(
            pipeline=spec.name,
            localisations=Localisations.concat(loc_parts) if keep_tables or e2e else None,
            tracks=Tracks.concat(track_parts) if keep_tables or e2e else None,
            maps=maps,
            power_doppler=pd.result(),
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
    """Write the SR maps, power Doppler and a PNG preview of a result; return the paths.

    The TIFFs are :func:`napari_cycleulm.export.write_map_tiff`'s (float32, the
    pixel size in micrometres when the run has one, and the unit of each map),
    the same files the Export tool writes.
    """
    from ..export import write_map_tiff
    from ..render import to_png

    out = Path(out_dir)
    maps = result.maps
    px = result.params.get("pixel_size_um")
    sr_px = px / maps.upsampling if px else None
    paths = {
        "sr_density": out / "sr_density.tif",
        "sr_velocity": out / "sr_velocity.tif",
        "sr_direction": out / "sr_direction.tif",
        "sr_count": out / "sr_count.tif",
        "power_doppler": out / "power_doppler.tif",
        "preview": out / "preview.png",
    }
    sr = {"pipeline": result.pipeline, "upsampling": maps.upsampling}
    write_map_tiff(paths["sr_density"], maps.density, sr_px, info={**sr, "unit": "passages per SR pixel"})
    write_map_tiff(paths["sr_velocity"], maps.velocity, sr_px, info={**sr, "unit": maps.velocity_unit})
    write_map_tiff(paths["sr_direction"], maps.direction, sr_px, info={**sr, "unit": "rad"})
    write_map_tiff(paths["sr_count"], maps.count, sr_px, info={**sr, "unit": "localisations per SR pixel"})
    write_map_tiff(paths["power_doppler"], result.power_doppler, px,
                   info={"pipeline": result.pipeline, "unit": "mean squared intensity"})
    to_png(maps.density, paths["preview"], cmap="hot", pixel_size_um=sr_px, scale_bar_mm=1.0 if sr_px else None)
    return {k: str(v) for k, v in paths.items()}
