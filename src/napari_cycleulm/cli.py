"""The ``cycleulm`` command line.

Every sub-command is a thin wrapper over a library function.  Failures are
one line on stderr, never a traceback (``--debug`` shows it):

* exit status 2: bad input or an impossible request (the line names the file
  or option and what to do), including files that cannot be read or written;
* exit status 1: an internal error (a bug), with a hint to rerun with
  ``--debug``;
* 130 / 143: interrupted by SIGINT (Ctrl-C) / SIGTERM; temporary files are
  removed and earlier outputs are left as they were.

Outputs are checked before any work: an output is never an input (nor, for a
folder, contains one), an existing output is replaced only with
``--overwrite``, and folders (``run``, ``simulate``, ``demo``) are written
into a hidden sibling folder that replaces the old one as a unit at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

from ._outputs import check_output_dir, check_output_file
from .errors import CycleULMError


# -- helpers -----------------------------------------------------------------
def _warn(msg: str) -> None:
    """One warning line on stderr."""
    print(f"cycleulm: warning: {' '.join(str(msg).split())}", file=sys.stderr)


def _input_metadata(path: Path) -> dict:
    """Pixel size and frame rate from a ``metadata.json`` beside the input, if any.

    A metadata file that cannot be used is reported in one warning line (its
    units are then unknown), never ignored silently.
    """
    meta = path.parent / "metadata.json"
    if not meta.is_file():
        return {}
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        _warn(f"{meta} is not readable JSON ({exc}); ignoring it: give --pixel-size-um and "
              "--frame-rate-hz for physical units.")
        return {}
    if not isinstance(data, dict):
        _warn(f"{meta} is not a JSON object; ignoring it: give --pixel-size-um and --frame-rate-hz.")
        return {}
    good = {}
    for key, option in (("pixel_size_um", "--pixel-size-um"), ("frame_rate_hz", "--frame-rate-hz")):
        v = data.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            _warn(f"{meta}: {key} is {v!r}, not a positive number; ignoring it (give {option}).")
            continue
        good[key] = float(v)
    return good


def _positive_option(value, option: str) -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise CycleULMError(f"{option} must be a positive number, got {value}.")


def _resolve_units(args, path: Path) -> tuple[float | None, float | None]:
    _positive_option(args.pixel_size_um, "--pixel-size-um")
    _positive_option(args.frame_rate_hz, "--frame-rate-hz")
    meta = {} if (args.pixel_size_um is not None and args.frame_rate_hz is not None) else _input_metadata(path)
    px = args.pixel_size_um if args.pixel_size_um is not None else meta.get("pixel_size_um")
    fr = args.frame_rate_hz if args.frame_rate_hz is not None else meta.get("frame_rate_hz")
    return px, fr


def _read_input(args, path: Path, lazy: bool = False):
    """The input stack, with ``--variable`` for MAT / HDF5 files."""
    from .io import read_stack

    return read_stack(path, variable=getattr(args, "variable", None), lazy=lazy, keep_phase=lazy)


def _check_device(args) -> None:
    """An unknown --device is refused before any work."""
    if getattr(args, "device", None) is not None:
        from .device import resolve_device

        try:
            resolve_device(args.device)
        except CycleULMError as exc:
            raise CycleULMError(f"--device: {exc}") from None


def _load_psf_json(value: str, frame_shape=None):
    """A PSF JSON given with --psf, checked against the frames."""
    from .psf import PSF, check_psf_extent

    psf = PSF.from_json(value)
    check_psf_extent(psf, frame_shape, what=f"the PSF in {value!r}")
    return psf


def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


# -- sub-commands ----------------------------------------------------------
def cmd_simulate(args) -> int:
    from .simulate import PRESETS, save_simulation, simulate

    from ._atomic import staged_dir

    out = check_output_dir(args.out, overwrite=args.overwrite, marker="metadata.json",
                           kind="`cycleulm simulate`")
    kw = dict(PRESETS[args.preset]) if args.preset else {}
    for key, val in (("n_frames", args.frames), ("height", args.height), ("width", args.width)):
        if val is not None:
            kw[key] = val
    if args.density is not None:
        kw["density"] = args.density
    t0 = time.perf_counter()
    sim = simulate(seed=args.seed, **kw)
    elapsed = time.perf_counter() - t0
    with staged_dir(out) as stage:
        paths = {k: out / Path(p).name for k, p in save_simulation(sim, stage).items()}
    print(
        f"simulated {sim.frames.shape[0]} frames of {sim.frames.shape[1]}x{sim.frames.shape[2]} px "
        f"({len(sim.ground_truth)} ground-truth bubbles) in {elapsed:.2f} s"
    )
    for name, p in paths.items():
        print(f"  {name}: {p}")
    return 0


def cmd_psf(args) -> int:
    from .psf import estimate_psf, estimate_psf_auto
    from .io.tables import Localisations

    path = Path(args.input)
    check_output_file(args.out, inputs=[path, args.points], overwrite=args.overwrite,
                      suffixes=(".json",))
    if args.n < 1:
        raise CycleULMError(f"--n must be >= 1, got {args.n}.")
    px, _ = _resolve_units(args, path)
    frames = _read_input(args, path)
    if args.points:
        pts = Localisations.from_csv(args.points)
        est = estimate_psf(frames, pts, pixel_size_um=px)
    else:
        est = estimate_psf_auto(frames, n=args.n, pixel_size_um=px)
    psf = est.psf
    psf.to_json(args.out)
    mode = "given" if args.points else "automatically picked"
    print(f"PSF from {est.n_used} {mode} bubbles ({len(est.rejected)} rejected): "
          f"FWHM y = {psf.fwhm_y_px:.3f} px, x = {psf.fwhm_x_px:.3f} px")
    for index, reason in est.rejected[:10]:
        print(f"  rejected point {index}: {reason}")
    if px:
        print(f"  FWHM y = {psf.fwhm_y_px * px:.1f} um, x = {psf.fwhm_x_px * px:.1f} um")
    print(f"  fit residual (RMS, fraction of peak): {psf.residual:.4f}")
    print(f"  written to {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from ._atomic import write_text_atomic
    from .evaluate.metrics import match_localisations
    from .io.tables import Localisations

    out = args.out or str(Path(args.detections).with_suffix(".evaluation.json"))
    inputs = [args.ground_truth, args.detections]
    check_output_file(out, inputs=inputs, overwrite=args.overwrite, suffixes=(".json",))
    if args.plot:
        check_output_file(args.plot, inputs=inputs, overwrite=args.overwrite, option="--plot",
                          suffixes=(".png",))
        from ._outputs import same_file

        if same_file(args.plot, out):
            raise CycleULMError("--plot and --out name the same file; give two different names.")
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise CycleULMError(f"--tolerance must be a positive number of pixels, got {args.tolerance}.")
    _positive_option(args.pixel_size_um, "--pixel-size-um")
    gt = Localisations.from_csv(args.ground_truth)
    det = Localisations.from_csv(args.detections)
    res = match_localisations(gt, det, tolerance=args.tolerance)
    d = res.to_dict()
    rows = [{k: d[k] for k in ("tp", "fp", "fn", "recall", "precision", "f1", "jaccard", "mean_error_px")}]
    if args.pixel_size_um:
        # mean_error_px is None without any match
        d["mean_error_um"] = None if d["mean_error_px"] is None else d["mean_error_px"] * args.pixel_size_um
        rows[0]["mean_error_um"] = d["mean_error_um"]
    print(f"tolerance {args.tolerance} px: {len(gt)} ground truth, {len(det)} detections")
    _print_table(rows, list(rows[0]))
    if args.sweep or args.plot:
        from ._json import jsonable
        from .evaluate import sweep_localisations

        name = Path(args.detections).stem
        sweep = sweep_localisations(gt, {name: det}, args.tolerance)[name]
        d["sweep"] = jsonable(sweep)
        print(f"precision-recall over the 'score' threshold ({len(sweep)} thresholds):")
        _print_table(sweep, ["threshold", "n_detections", "recall", "precision", "f1", "mean_error_px"])
        if args.plot:
            _save_pr_plot(args.plot, {name: sweep}, {name: (res.recall, res.precision)})
            print(f"precision-recall plot written to {args.plot}")
    write_text_atomic(out, json.dumps(d, indent=2))
    print(f"written to {out}")
    return 0


def _save_pr_plot(path: str, sweeps: dict, points: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ._atomic import atomic_path
    from .evaluate import plot_precision_recall

    if Path(path).suffix.lower() != ".png":
        raise CycleULMError(f"--plot must be a .png file, got {path!r}.")
    fig = Figure(figsize=(4.5, 4), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    plot_precision_recall(fig.add_subplot(111), sweeps, points)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def cmd_export(args) -> int:
    from .export import export_run

    formats = [f for f, on in (("tif", args.tiff), ("png", args.png), ("csv", args.csv)) if on]
    if args.scale_bar_mm is not None and args.scale_bar_mm < 0:
        raise CycleULMError(f"--scale-bar-mm must be >= 0 (0 = no bar), got {args.scale_bar_mm}.")
    report = export_run(
        args.inputs, args.out,
        formats=formats or ("tif", "png", "csv"),
        colormap=args.colormap,
        gamma=args.gamma,
        scale_bar_mm="auto" if args.scale_bar_mm is None else (args.scale_bar_mm or None),
        pixel_size_um=args.pixel_size_um,
        frame_rate_hz=args.frame_rate_hz,
        upsampling=args.upsampling,
        mip=args.mip,
        physical=args.physical_units,
        overwrite=args.overwrite,
    )
    for f in report.files:
        extra = []
        if f.get("pixel_size_um"):
            extra.append(f"{f['pixel_size_um']:.4g} um/px")
        if f.get("scale_bar_mm"):
            extra.append(f"scale bar {f['scale_bar_mm']:g} mm")
        if f.get("colormap"):
            extra.append(str(f["colormap"]))
        if "rows" in f:
            extra.append(f"{f['rows']} rows" + (f", {f['tracks']} tracks" if "tracks" in f else ""))
        print(f"  {f['path']}" + (f"  ({', '.join(extra)})" if extra else ""))
    for note in report.notes:
        print(f"  note: {note}")
    print(f"exported {len(report.files)} file(s) to {report.out_dir} (list in {report.manifest})")
    return 0


def cmd_run(args) -> int:
    from .render.sr_maps import check_sr_memory

    path = Path(args.input)
    check_output_dir(args.out, inputs=[path, args.psf, args.mbdt, args.mblnet, args.mbtnet],
                     overwrite=args.overwrite)
    _check_device(args)
    if args.upsampling < 1:
        raise CycleULMError(f"--upsampling must be an integer >= 1, got {args.upsampling}.")
    if args.block_size < 1:
        raise CycleULMError(f"--block-size must be >= 1, got {args.block_size}.")
    if args.target_count is not None and args.target_count < 1:
        raise CycleULMError(f"--target-count must be >= 1, got {args.target_count}.")
    if args.max_distance is not None and not (math.isfinite(args.max_distance) and args.max_distance > 0):
        raise CycleULMError(f"--max-distance must be a positive number of pixels, got {args.max_distance}.")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise CycleULMError(f"--threshold must be a finite number, got {args.threshold}.")
    if args.dask_scheduler is not None and args.dask_workers is not None:
        raise CycleULMError("give --dask-scheduler or --dask-workers, not both.")
    if args.dask_workers is not None and args.dask_workers < 1:
        raise CycleULMError(f"--dask-workers must be >= 1, got {args.dask_workers}.")
    px, fr = _resolve_units(args, path)
    stack = _read_input(args, path, lazy=True)
    if args.frames is not None:
        from .io import frame_range

        stack = frame_range(stack, *_parse_frames(args.frames, len(stack)))
    check_sr_memory(stack.shape, args.upsampling)
    psf = "auto" if args.psf == "auto" else _load_psf_json(args.psf, stack.shape)
    track_params = {}
    if args.max_distance is not None:
        track_params["max_distance"] = args.max_distance
    client = None
    if args.dask_scheduler is not None or args.dask_workers is not None:
        from .pipeline.distributed import make_client

        client = make_client(args.dask_scheduler, args.dask_workers)
        if not args.quiet:
            n = len(client.scheduler_info().get("workers", {}))
            print(f"dask: {n} worker(s) at {client.scheduler.address}", file=sys.stderr)
    try:
        return _run_and_report(args, stack, psf, track_params, px, fr, client)
    finally:
        if client is not None:
            from .pipeline.distributed import close_client

            close_client(client)


def _parse_frames(text: str, n_frames: int) -> tuple[int, int]:
    """``--frames N`` or ``START:STOP`` as a checked ``(start, stop)`` within ``n_frames``."""
    try:
        parts = [int(v) for v in text.split(":")] if ":" in text else [0, int(text)]
    except ValueError:
        parts = []
    if len(parts) != 2 or not (0 <= parts[0] < parts[1]):
        raise CycleULMError(f"--frames must be N or START:STOP with 0 <= START < STOP, got {text!r}.")
    if parts[0] >= n_frames:
        raise CycleULMError(f"--frames {text} starts after the last frame: the input has {n_frames} frames.")
    return parts[0], min(parts[1], n_frames)


def _run_and_report(args, stack, psf, track_params, px, fr, client) -> int:
    from .pipeline import PIPELINES, iter_pipeline
    from .preprocess import parse_clutter_filter
    from .progress import drive_with_bar

    t0 = time.perf_counter()
    result = drive_with_bar(
        iter_pipeline(
            stack,
            args.pipeline,
            psf,
            block_size=args.block_size,
            threshold=args.threshold,
            target_count=args.target_count,
            track_params=track_params,
            gate=args.gate,
            denoise_params={"tta": args.mbdt_tta} if PIPELINES[args.pipeline].denoise == "mbdt" else None,
            clutter_filter=parse_clutter_filter(args.clutter_filter, args.svd_block),
            upsampling=args.upsampling,
            pixel_size_um=px,
            frame_rate_hz=fr,
            out_dir=args.out,
            device=args.device,
            mbdt=args.mbdt,
            mblnet=args.mblnet,
            mbtnet=args.mbtnet,
            client=client,
        ),
        desc=args.pipeline,
        disable=args.quiet,
    )
    elapsed = time.perf_counter() - t0
    print(
        f"{args.pipeline}: {result.n_frames} frames, {result.n_localisations} localisations, "
        f"{result.n_tracks} tracks in {elapsed:.1f} s ({result.n_frames / elapsed:.1f} frames/s)"
    )
    for name, p in result.outputs.items():
        print(f"  {name}: {p}")
    return 0


def _iter_translate_to_tiff(stack, model, out: Path, block_size: int, device, tta: str):
    """Progress generator: translate ``stack`` block by block into a TIFF written page by page."""
    import tifffile

    from ._atomic import atomic_path
    from .dl.checkpoint import Checkpoint
    from .dl.models import load_model
    from .progress import Progress
    from .dl.mbdt_inference import iter_translate

    ckpt = model if isinstance(model, Checkpoint) else load_model("mbdt", model, device)
    n = len(stack)
    yield Progress(0, n, "MB-DT")
    with atomic_path(out) as tmp, tifffile.TiffWriter(tmp, bigtiff=stack.nbytes > 2**31) as tif:
        for start, stop, mb in iter_translate(stack, ckpt, block_size=block_size, device=device, tta=tta):
            for frame in mb:
                tif.write(frame, contiguous=True, photometric="minisblack")
            yield Progress(stop, n, "MB-DT")
    return ckpt


def cmd_translate(args) -> int:
    from .progress import drive_with_bar

    out = check_output_file(args.out, inputs=[args.input, args.mbdt], overwrite=args.overwrite,
                            suffixes=(".tif", ".tiff"))
    if args.block_size < 1:
        raise CycleULMError(f"--block-size must be >= 1, got {args.block_size}.")
    _check_device(args)
    from .dl.models import load_model

    stack = _read_input(args, Path(args.input), lazy=True)
    t0 = time.perf_counter()
    ckpt = load_model("mbdt", args.mbdt, args.device)  # errors before the progress bar
    ckpt = drive_with_bar(
        _iter_translate_to_tiff(stack, ckpt, out, args.block_size, args.device, args.mbdt_tta),
        desc="translate", disable=args.quiet,
    )
    elapsed = time.perf_counter() - t0
    n = len(stack)
    print(f"translated {n} frames to the MB-only domain with {ckpt.path} in {elapsed:.1f} s "
          f"({n / max(elapsed, 1e-9):.1f} frames/s)")
    print(f"  written to {out}")
    return 0


def _psf_arg(value: str, frames=None, pixel_size_um=None):
    """A PSF from 'auto' (estimated on the first frames) or a PSF JSON file."""
    from .psf import estimate_psf_auto

    if value == "auto":
        if frames is None:
            raise CycleULMError("--psf auto needs an input stack; pass a PSF JSON from `cycleulm psf`.")
        return estimate_psf_auto(frames[: min(len(frames), 100)], pixel_size_um=pixel_size_um).psf
    return _load_psf_json(value, None if frames is None else frames.shape)


def _report_training(kind: str, result, desc: str) -> None:
    losses = {k: v[-1] for k, v in result.history.items() if isinstance(v, list) and v and k != "step"}
    shown = ", ".join(f"{k} {float(v):.4g}" for k, v in list(losses.items())[:6] if isinstance(v, (int, float)))
    print(f"{desc}: {result.steps_done} steps in {result.seconds:.1f} s" + (f" (last {shown})" if shown else ""))
    print(f"  written to {result.checkpoint_path}")


def cmd_train(args) -> int:
    import numpy as np

    from .preprocess import clutter_filtered, parse_clutter_filter
    from .progress import drive_with_bar

    try:
        from . import train
    except ImportError as exc:  # pragma: no cover - train/ ships with the package
        raise CycleULMError(f"training is not available in this installation ({exc}).") from exc
    out = check_output_file(args.out, inputs=[args.input, args.psf, args.roi, args.init],
                            overwrite=args.overwrite)
    _check_device(args)
    if args.steps is not None and args.steps < 1:
        raise CycleULMError(f"--steps must be >= 1, got {args.steps}.")
    steps = {} if args.steps is None else {"steps": args.steps}
    if args.network == "mbdt":
        if args.input is None:
            raise CycleULMError("`cycleulm train mbdt` needs the CEUS stack to train on (INPUT).")
        path = Path(args.input)
        px, _ = _resolve_units(args, path)
        frames = _read_input(args, path)
        # MB-DT learns the frames the pipelines will give it: after the same clutter filter.
        frames = np.asarray(clutter_filtered(frames, parse_clutter_filter(args.clutter_filter, args.svd_block)))
        psf = _psf_arg(args.psf or "auto", frames, px)
        roi = None
        if args.roi:
            from .roi import roi_from_csv

            roi = roi_from_csv(args.roi)
        init_arg = args.init or "default"
        init = None if init_arg.lower() == "none" else init_arg
        gen = train.iter_train_mbdt(
            frames, psf, roi_mask=roi, init=init, out=out, device=args.device, **steps
        )
        desc = f"MB-DT on {path.name} (CEUS PSF FWHM {psf.fwhm_y_px:.2f} x {psf.fwhm_x_px:.2f} px)"
    else:
        if args.input is not None:
            raise CycleULMError(
                f"`cycleulm train {args.network}` trains on synthetic MB-only data and takes no "
                "INPUT stack; give --psf PSF.json or --sigma-range LO HI."
            )
        if (args.psf is None) == (args.sigma_range is None):
            raise CycleULMError(
                f"`cycleulm train {args.network}` needs exactly one of --psf PSF.json (the CEUS PSF; "
                "its MB-only version is used) or --sigma-range LO HI (MB-only sigmas, pixels)."
            )
        if args.psf == "auto":
            raise CycleULMError("--psf auto needs a CEUS stack; give a PSF JSON from `cycleulm psf`.")
        psf = None if args.psf is None else _psf_arg(args.psf).mbonly()
        rng = None if args.sigma_range is None else tuple(args.sigma_range)
        if rng is not None and not (0 < rng[0] <= rng[1] <= 100):
            raise CycleULMError(f"--sigma-range needs 0 < LO <= HI <= 100 (pixels), got {rng[0]} {rng[1]}.")
        fn = train.iter_train_mblnet if args.network == "mblnet" else train.iter_train_mbtnet
        init = None if args.init is None or args.init.lower() == "none" else args.init
        gen = fn(psf, sigma_range_px=rng, init=init, out=out, device=args.device, **steps)
        what = (f"MB-only PSF sigma {psf.sigma_y_px:.2f} x {psf.sigma_x_px:.2f} px" if psf is not None
                else f"MB-only sigma range {rng[0]:g}-{rng[1]:g} px")
        desc = f"{'MBL-Net' if args.network == 'mblnet' else 'MBT-Net'} ({what})"
    result = drive_with_bar(gen, desc=f"train {args.network}", disable=args.quiet)
    _report_training(args.network, result, desc)
    return 0


def cmd_demo(args) -> int:
    from .evaluate.metrics import match_localisations
    import numpy as np

    from .pipeline import PIPELINES, iter_pipeline
    from .preprocess import clutter_filtered
    from .progress import drive_with_bar
    from .psf import estimate_psf_auto
    from .simulate import PRESETS, save_simulation, simulate
    from ._atomic import staged_dir
    from .dl.models import load_model
    from .train import iter_train_mbdt

    final = check_output_dir(args.out, overwrite=args.overwrite, marker="psf.json",
                             kind="`cycleulm demo`")
    if args.finetune_steps < 0:
        raise CycleULMError(f"--finetune-steps must be >= 0, got {args.finetune_steps}.")
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise CycleULMError(f"--tolerance must be a positive number of pixels, got {args.tolerance}.")
    # Everything is made in a hidden sibling folder that replaces ``final`` at the end.
    with staged_dir(final) as out:
        t0 = time.perf_counter()
        sim = simulate(seed=args.seed, **PRESETS["sample"])
        t_sim = time.perf_counter() - t0
        save_simulation(sim, out / "sample")
        meta = sim.metadata
        px, fr = meta["pixel_size_um"], meta["frame_rate_hz"]
        print(
            f"1. simulated the sample: {sim.frames.shape[0]} frames of {sim.frames.shape[1]}x{sim.frames.shape[2]} px, "
            f"{len(sim.ground_truth)} ground-truth bubble positions, {t_sim:.2f} s -> {final / 'sample'}"
        )
        t0 = time.perf_counter()
        est = estimate_psf_auto(sim.frames, pixel_size_um=px)
        psf = est.psf
        psf.to_json(out / "psf.json")
        true_y, true_x = meta["psf_fwhm_y_px"], meta["psf_fwhm_x_px"]
        print(
            f"2. PSF estimated automatically from {est.n_used} isolated bubbles in {time.perf_counter() - t0:.2f} s:\n"
            f"   FWHM y = {psf.fwhm_y_px:.2f} px (true {true_y:.2f}, error {100 * (psf.fwhm_y_px / true_y - 1):+.1f}%), "
            f"x = {psf.fwhm_x_px:.2f} px (true {true_x:.2f}, error {100 * (psf.fwhm_x_px / true_x - 1):+.1f}%)"
        )
        mbdt = "default"
        if args.finetune_steps and any(PIPELINES[n].denoise == "mbdt" for n in args.pipelines):
            t0 = time.perf_counter()
            ft = drive_with_bar(
                iter_train_mbdt(np.asarray(clutter_filtered(sim.frames)), psf, steps=args.finetune_steps,
                                out=out / "mbdt_finetuned.pt",
                                preview_every=None),
                desc="fine-tune MB-DT", disable=args.quiet,
            )
            # Loaded from the staging folder, recorded (run.json) under its final name.
            mbdt = load_model("mbdt", out / "mbdt_finetuned.pt")
            mbdt.path = final / "mbdt_finetuned.pt"
            print(f"3. MB-DT fine-tuned on the sample (no labels) for {ft.steps_done} steps in "
                  f"{time.perf_counter() - t0:.0f} s -> {mbdt.path}")
        rows = []
        for name in args.pipelines:
            t0 = time.perf_counter()
            res = drive_with_bar(
                iter_pipeline(
                    sim.frames, name, psf, pixel_size_um=px, frame_rate_hz=fr,
                    out_dir=out / name, keep_tables=True, mbdt=mbdt,
                ),
                desc=name,
                disable=args.quiet,
            )
            elapsed = time.perf_counter() - t0
            row = {"pipeline": name, "localisations": res.n_localisations, "tracks": res.n_tracks,
                   "recall": None, "precision": None, "F1": None, "error_um": None}
            if not PIPELINES[name].end_to_end:  # E2E makes SR maps only
                m = match_localisations(sim.ground_truth, res.localisations, tolerance=args.tolerance)
                row.update(recall=m.recall, precision=m.precision, F1=m.f1, error_um=m.mean_error_px * px)
            rows.append({**row, "seconds": elapsed})
        tuned = mbdt != "default"
        print(f"{4 if tuned else 3}. pipelines scored against the ground truth (tolerance {args.tolerance} px = "
              f"{args.tolerance * px:.0f} um; MB-DT: {'fine-tuned' if tuned else 'shipped default'}):")
        _print_table(rows, list(rows[0]))
    print(f"outputs in {final}/ (SR maps as TIFF, preview.png, CSV tables, run.json)")
    return 0


# -- parser ------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (exit status 2), like every other error."""

    def error(self, message: str):  # noqa: D401 - argparse API
        msg = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {msg} (see `{self.prog} --help`)\n")


def _common(sp, writes: str) -> None:
    """--overwrite and --debug, accepted after the sub-command too."""
    sp.add_argument("--overwrite", action="store_true",
                    help=f"replace an existing {writes} (default: refuse)")
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                    help="print the traceback of an error")


def _variable(sp) -> None:
    sp.add_argument("--variable", default=None, metavar="NAME",
                    help="MAT variable / HDF5 dataset to read (default: the largest 3-D one)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .pipeline import PIPELINES
    from .preprocess.clutter_filter import DEFAULT_CLUTTER_FILTER, SVD_BLOCK_FRAMES
    from .preprocess.evidence_gate import DEFAULT_GATE, GATE_MODES
    from .dl.mbdt_inference import DEFAULT_TTA, TTA_MODES

    p = _Parser(
        prog="cycleulm",
        description="Ultrasound localisation microscopy with CycleULM (headless). Exit status: "
                    "0 done, 2 bad input (one line says what to change), 1 internal error "
                    "(rerun with --debug for the traceback), 130/143 interrupted.",
    )
    p.add_argument("--version", action="version", version=f"napari-cycleulm {__version__}")
    p.add_argument("--debug", action="store_true", default=False,
                   help="print the traceback of an error instead of one line")
    sub = p.add_subparsers(dest="command", required=True)

    def units(sp):
        sp.add_argument("--pixel-size-um", type=float, default=None,
                        help="pixel size in micrometres (default: metadata.json beside the input)")
        sp.add_argument("--frame-rate-hz", type=float, default=None,
                        help="frame rate in Hz (default: metadata.json beside the input)")

    sp = sub.add_parser("demo", help="simulate the sample, estimate its PSF, run the pipelines and score them")
    sp.add_argument("--out", default="cycleulm-demo", help="output folder (default: ./cycleulm-demo)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--tolerance", type=float, default=1.0, help="matching tolerance, pixels")
    sp.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=sorted(PIPELINES),
                    help="pipelines to run (default: all of them)")
    sp.add_argument("--finetune-steps", type=int, default=0,
                    help="first fine-tune MB-DT on the sample for N steps (unsupervised; e.g. 2000, ~7 min "
                         "on 2 CPU cores); default 0: the shipped MB-DT")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    _common(sp, "demo folder (replaced as a whole)")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("simulate", help="simulate a CEUS sequence with ground truth")
    sp.add_argument("out", help="output folder")
    sp.add_argument("--preset", choices=["sample", "benchmark"], default="sample")
    sp.add_argument("--frames", type=int, default=None)
    sp.add_argument("--height", type=int, default=None)
    sp.add_argument("--width", type=int, default=None)
    sp.add_argument("--density", type=float, default=None, help="mean bubbles per frame")
    sp.add_argument("--seed", type=int, default=0)
    _common(sp, "simulation folder (replaced as a whole)")
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("psf", help="estimate the PSF from clicked or automatically picked bubbles")
    sp.add_argument("input", help="CEUS stack (tif, npy, mat, h5)")
    sp.add_argument("--points", default=None, help="CSV of bubble positions (frame,y,x); automatic when omitted")
    sp.add_argument("--out", required=True, help="PSF JSON to write")
    sp.add_argument("--n", type=int, default=20, help="bubbles to pick in automatic mode")
    _variable(sp)
    units(sp)
    _common(sp, "PSF JSON")
    sp.set_defaults(func=cmd_psf)

    sp = sub.add_parser("evaluate", help="score detections against ground truth")
    sp.add_argument("ground_truth")
    sp.add_argument("detections")
    sp.add_argument("--tolerance", type=float, default=1.0, help="matching tolerance, pixels")
    sp.add_argument("--pixel-size-um", type=float, default=None)
    sp.add_argument("--out", default=None, help="JSON to write (default: beside DETECTIONS)")
    sp.add_argument("--sweep", action="store_true",
                    help="also sweep a threshold over the detections' score column (precision-recall)")
    sp.add_argument("--plot", default=None, metavar="PR.png",
                    help="write the precision-recall curve as a PNG (implies --sweep)")
    _common(sp, "JSON / PNG")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser(
        "export",
        help="calibrated TIFFs and colour PNGs with a scale bar from a run's maps; checked CSV tables",
        description="Turn the maps of `cycleulm run` folders (or loose .tif maps) into float32 TIFFs "
                    "with the pixel size in their resolution tags and colour PNGs with a scale bar in "
                    "mm; validate and copy the .csv tables. Without --tiff/--png/--csv, all three.",
    )
    sp.add_argument("inputs", nargs="+", metavar="RUN_DIR_OR_FILE",
                    help="folders written by `cycleulm run`, or .tif maps and .csv tables")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--tiff", action="store_true", help="write calibrated float32 TIFFs")
    sp.add_argument("--png", action="store_true", help="write colour PNGs with a scale bar")
    sp.add_argument("--csv", action="store_true", help="write the validated CSV tables")
    sp.add_argument("--colormap", default=None,
                    help="matplotlib colormap for every PNG (default per map: hot density, turbo "
                         "velocity, twilight direction, gray power Doppler)")
    sp.add_argument("--gamma", type=float, default=None,
                    help="PNG display gamma (default per map: 0.5 density, 1 velocity)")
    sp.add_argument("--scale-bar-mm", type=float, default=None, metavar="MM",
                    help="scale bar length in mm (default: a round length of about 1/5 of the width; 0: none)")
    sp.add_argument("--upsampling", type=int, default=None,
                    help="SR upsampling of sr_* maps (default: run.json)")
    sp.add_argument("--mip", action="store_true",
                    help="export stacks (e.g. MB-only frames) as their maximum-intensity projection")
    sp.add_argument("--physical-units", action="store_true",
                    help="add y_um, x_um, t_s (and vy/vx/speed in mm/s for tracks) to the CSVs")
    sp.add_argument("--pixel-size-um", type=float, default=None,
                    help="CEUS pixel size in micrometres (default: run.json / metadata.json / the TIFF)")
    sp.add_argument("--frame-rate-hz", type=float, default=None,
                    help="frame rate in Hz for --physical-units (default: run.json / metadata.json)")
    _common(sp, "export in --out (files of the old export are removed)")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("run", help="run a ULM pipeline on a CEUS stack")
    sp.add_argument("input")
    sp.add_argument("--pipeline", required=True, choices=sorted(PIPELINES))
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--psf", default="auto", help="'auto' or a PSF JSON from `cycleulm psf`")
    sp.add_argument("--block-size", type=int, default=200, help="frames per block (memory scales with it)")
    sp.add_argument("--threshold", type=float, default=None, help="localisation threshold")
    sp.add_argument("--gate", default=None, choices=GATE_MODES,
                    help="CycleULM pipelines: evidence MB-DT's bubbles must have in the CEUS frames "
                         f"(default {DEFAULT_GATE!r}; see docs/science.md)")
    sp.add_argument("--mbdt-tta", default=DEFAULT_TTA, choices=sorted(TTA_MODES),
                    help="CycleULM pipelines: mirror averaging of MB-DT's output (default "
                         f"{DEFAULT_TTA!r}: the mean of the frames' and their left-right mirror's "
                         "translations; 'none': one pass, twice as fast; see docs/science.md)")
    sp.add_argument("--clutter-filter", default=DEFAULT_CLUTTER_FILTER, metavar="none|svd[:auto|:N]",
                    help="first stage of every pipeline: SVD clutter filter in blocks, with an automatic "
                         f"(per block) or a fixed number N of removed components (default {DEFAULT_CLUTTER_FILTER}; "
                         "'none' for data already clutter-filtered)")
    sp.add_argument("--svd-block", type=int, default=SVD_BLOCK_FRAMES, metavar="FRAMES",
                    help=f"frames per SVD block of the clutter filter (default {SVD_BLOCK_FRAMES})")
    sp.add_argument("--target-count", type=int, default=None, help="keep exactly N best localisations")
    sp.add_argument("--max-distance", type=float, default=None, help="tracking gate, pixels per frame")
    sp.add_argument("--upsampling", type=int, default=4)
    sp.add_argument("--frames", default=None, metavar="N|START:STOP",
                    help="process only the first N frames, or frames START to STOP-1 (default: all)")
    sp.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    sp.add_argument("--dask-scheduler", default=None, metavar="tcp://HOST:8786",
                    help="spread the blocks over the workers of a running dask scheduler "
                         "(the input must be readable at the same path on every worker; docs/guide/cluster.md)")
    sp.add_argument("--dask-workers", type=int, default=None, metavar="N",
                    help="spread the blocks over N worker processes of a local dask cluster")
    sp.add_argument("--quiet", action="store_true")
    for kind, name in (("mbdt", "MB-DT"), ("mblnet", "MBL-Net"), ("mbtnet", "MBT-Net")):
        sp.add_argument(f"--{kind}", default="default", metavar="MODEL.pt",
                        help=f"{name} checkpoint for the cycleulm-* pipelines, or 'default' (shipped weights)")
    _variable(sp)
    units(sp)
    _common(sp, "run folder (replaced as a whole when the run completes)")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("translate", help="translate CEUS frames to the MB-only domain with MB-DT")
    sp.add_argument("input", help="CEUS stack (tif, npy, mat, h5)")
    sp.add_argument("--mbdt", default="default", metavar="MODEL.pt",
                    help="MB-DT checkpoint, or 'default' (shipped weights)")
    sp.add_argument("--out", required=True, help="MB-only stack to write (.tif)")
    sp.add_argument("--block-size", type=int, default=64, help="frames per block (memory scales with it)")
    sp.add_argument("--mbdt-tta", default=DEFAULT_TTA, choices=sorted(TTA_MODES),
                    help=f"mirror averaging of MB-DT's output (default {DEFAULT_TTA!r}; 'none': one pass)")
    sp.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    sp.add_argument("--quiet", action="store_true")
    _variable(sp)
    _common(sp, "output TIFF")
    sp.set_defaults(func=cmd_translate)

    sp = sub.add_parser(
        "train", help="train MB-DT on a CEUS stack, or MBL-Net / MBT-Net on synthetic MB-only data",
        description="cycleulm train mbdt INPUT --out MODEL.pt [--roi ROI.csv] [--psf auto|PSF.json] "
                    "[--init default|none|PATH]; cycleulm train mblnet|mbtnet --psf PSF.json|"
                    "--sigma-range LO HI --out MODEL.pt",
    )
    sp.add_argument("network", choices=["mbdt", "mblnet", "mbtnet"])
    sp.add_argument("input", nargs="?", default=None, help="CEUS stack (mbdt only)")
    sp.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    sp.add_argument("--steps", type=int, default=None, help="training steps (default: the trainer's)")
    sp.add_argument("--psf", default=None,
                    help="CEUS PSF JSON from `cycleulm psf` (mbdt: or 'auto', the default)")
    sp.add_argument("--sigma-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="mblnet/mbtnet: MB-only PSF sigma range in pixels (a generalist network)")
    sp.add_argument("--roi", default=None, help="mbdt: ROI CSV (shape_id,y,x or napari shapes CSV)")
    sp.add_argument("--clutter-filter", default=DEFAULT_CLUTTER_FILTER, metavar="none|svd[:auto|:N]",
                    help="mbdt: the clutter filter applied before training, as `cycleulm run` does "
                         f"(default {DEFAULT_CLUTTER_FILTER})")
    sp.add_argument("--svd-block", type=int, default=SVD_BLOCK_FRAMES, metavar="FRAMES",
                    help=f"mbdt: frames per SVD block (default {SVD_BLOCK_FRAMES})")
    sp.add_argument("--init", default=None,
                    help="start from 'default' weights, 'none' (scratch) or a checkpoint "
                         "(mbdt default: 'default'; others: 'none')")
    sp.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    sp.add_argument("--quiet", action="store_true")
    _variable(sp)
    units(sp)
    _common(sp, "checkpoint (it is replaced at the first periodic checkpoint)")
    sp.set_defaults(func=cmd_train)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` removes its temporary files."""


def _on_signal(signum, frame):
    # Further signals during the clean-up would leave it half done: ignore them.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _install_signal_handlers() -> dict:
    """SIGINT and SIGTERM raise in the main thread (also when SIGINT was inherited as ignored)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.getsignal(sig)
        signal.signal(sig, _on_signal)
    return old


def _one_line_warnings(command: str):
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"cycleulm {command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    warnings.showwarning = show


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    import logging
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    cmd = f"cycleulm {args.command}"
    old_handlers = _install_signal_handlers()
    old_showwarning = warnings.showwarning
    _one_line_warnings(args.command)
    # The readers report damaged files themselves, in one line.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except CycleULMError as exc:
        # One line, even when the message quotes a multi-line library error.
        if debug:
            import traceback

            traceback.print_exc()
        print(f"{cmd}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"{cmd}: terminated (SIGTERM); temporary files were removed and earlier outputs "
              "left as they were.", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{cmd}: interrupted; temporary files were removed and earlier outputs left as "
              "they were (training keeps its last complete checkpoint).", file=sys.stderr)
        return 130
    except OSError as exc:
        # Disk full, permission denied, a file removed meanwhile: the environment, not a bug.
        if debug:
            import traceback

            traceback.print_exc()
        where = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
        print(f"{cmd}: error: cannot read or write{where}: {exc.strerror or _one_line(exc)}; "
              "check the path, its permissions and the free disk space.", file=sys.stderr)
        return 2
    except MemoryError:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"{cmd}: error: out of memory; use smaller inputs, a smaller --block-size or "
              "--upsampling (rerun with --debug for the traceback).", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if debug:
            import traceback

            traceback.print_exc()
            print(f"{cmd}: internal error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        else:
            print(f"{cmd}: internal error: {type(exc).__name__}: {_one_line(exc)[:300]} "
                  f"(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = old_showwarning
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
