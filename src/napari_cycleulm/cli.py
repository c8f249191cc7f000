"""The ``cycleulm`` command line.

Every sub-command is a thin wrapper over a library function; errors in the
input are printed as one clear line (exit status 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import CycleULMError


# -- helpers -----------------------------------------------------------------
def _input_metadata(path: Path) -> dict:
    """Pixel size and frame rate from a ``metadata.json`` beside the input, if any."""
    meta = path.parent / "metadata.json"
    if meta.is_file():
        try:
            return json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
    return {}


def _resolve_units(args, path: Path) -> tuple[float | None, float | None]:
    meta = _input_metadata(path)
    px = args.pixel_size_um if args.pixel_size_um is not None else meta.get("pixel_size_um")
    fr = args.frame_rate_hz if args.frame_rate_hz is not None else meta.get("frame_rate_hz")
    return px, fr


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

    kw = dict(PRESETS[args.preset]) if args.preset else {}
    for key, val in (("n_frames", args.frames), ("height", args.height), ("width", args.width)):
        if val is not None:
            kw[key] = val
    if args.density is not None:
        kw["density"] = args.density
    t0 = time.perf_counter()
    sim = simulate(seed=args.seed, **kw)
    elapsed = time.perf_counter() - t0
    paths = save_simulation(sim, args.out)
    print(
        f"simulated {sim.frames.shape[0]} frames of {sim.frames.shape[1]}x{sim.frames.shape[2]} px "
        f"({len(sim.ground_truth)} ground-truth bubbles) in {elapsed:.2f} s"
    )
    for name, p in paths.items():
        print(f"  {name}: {p}")
    return 0


def cmd_psf(args) -> int:
    from .io import read_stack
    from .psf import estimate_psf, estimate_psf_auto
    from .tables import Localisations

    path = Path(args.input)
    frames = read_stack(path)
    px, _ = _resolve_units(args, path)
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
    from .metrics import match_localisations
    from .tables import Localisations

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
    out = args.out or str(Path(args.detections).with_suffix(".evaluation.json"))
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
    from .io import read_stack
    from .pipeline import iter_pipeline
    from .progress import drive_with_bar

    path = Path(args.input)
    stack = read_stack(path, lazy=True)
    px, fr = _resolve_units(args, path)
    if args.psf == "auto":
        psf = "auto"
    else:
        from .psf import PSF

        psf = PSF.from_json(args.psf)
    track_params = {}
    if args.max_distance is not None:
        track_params["max_distance"] = args.max_distance
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
            upsampling=args.upsampling,
            pixel_size_um=px,
            frame_rate_hz=fr,
            out_dir=args.out,
            device=args.device,
            mbdt=args.mbdt,
            mblnet=args.mblnet,
            mbtnet=args.mbtnet,
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


def _iter_translate_to_tiff(stack, model, out: Path, block_size: int, device):
    """Progress generator: translate ``stack`` block by block into a TIFF written page by page."""
    import tifffile

    from ._atomic import atomic_path
    from .checkpoint import Checkpoint
    from .models import load_model
    from .progress import Progress
    from .translate import iter_translate

    ckpt = model if isinstance(model, Checkpoint) else load_model("mbdt", model, device)
    n = len(stack)
    yield Progress(0, n, "MB-DT")
    with atomic_path(out) as tmp, tifffile.TiffWriter(tmp, bigtiff=stack.nbytes > 2**31) as tif:
        for start, stop, mb in iter_translate(stack, ckpt, block_size=block_size, device=device):
            for frame in mb:
                tif.write(frame, contiguous=True, photometric="minisblack")
            yield Progress(stop, n, "MB-DT")
    return ckpt


def cmd_translate(args) -> int:
    from .io import read_stack
    from .progress import drive_with_bar

    out = Path(args.out)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise CycleULMError(f"--out must be a .tif or .tiff file, got {str(out)!r}.")
    if args.block_size < 1:
        raise CycleULMError(f"--block-size must be >= 1, got {args.block_size}.")
    from .models import load_model

    stack = read_stack(Path(args.input), lazy=True)
    t0 = time.perf_counter()
    ckpt = load_model("mbdt", args.mbdt, args.device)  # errors before the progress bar
    ckpt = drive_with_bar(
        _iter_translate_to_tiff(stack, ckpt, out, args.block_size, args.device),
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
    from .psf import PSF, estimate_psf_auto

    if value == "auto":
        if frames is None:
            raise CycleULMError("--psf auto needs an input stack; pass a PSF JSON from `cycleulm psf`.")
        return estimate_psf_auto(frames[: min(len(frames), 100)], pixel_size_um=pixel_size_um).psf
    return PSF.from_json(value)


def _report_training(kind: str, result, desc: str) -> None:
    losses = {k: v[-1] for k, v in result.history.items() if isinstance(v, list) and v and k != "step"}
    shown = ", ".join(f"{k} {float(v):.4g}" for k, v in list(losses.items())[:6] if isinstance(v, (int, float)))
    print(f"{desc}: {result.steps_done} steps in {result.seconds:.1f} s" + (f" (last {shown})" if shown else ""))
    print(f"  written to {result.checkpoint_path}")


def cmd_train(args) -> int:
    from .progress import drive_with_bar

    try:
        from . import train
    except ImportError as exc:  # pragma: no cover - train.py ships with the package
        raise CycleULMError(f"training is not available in this installation ({exc}).") from exc
    out = Path(args.out)
    if args.steps is not None and args.steps < 1:
        raise CycleULMError(f"--steps must be >= 1, got {args.steps}.")
    steps = {} if args.steps is None else {"steps": args.steps}
    if args.network == "mbdt":
        from .io import read_stack

        if args.input is None:
            raise CycleULMError("`cycleulm train mbdt` needs the CEUS stack to train on (INPUT).")
        path = Path(args.input)
        frames = read_stack(path)
        px, _ = _resolve_units(args, path)
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
        if rng is not None and not (0 < rng[0] <= rng[1]):
            raise CycleULMError(f"--sigma-range needs 0 < LO <= HI, got {rng[0]} {rng[1]}.")
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
    from .metrics import match_localisations
    from .pipeline import PIPELINES, iter_pipeline
    from .progress import drive_with_bar
    from .psf import estimate_psf_auto
    from .simulate import PRESETS, save_simulation, simulate
    from .train import iter_train_mbdt

    out = Path(args.out)
    t0 = time.perf_counter()
    sim = simulate(seed=args.seed, **PRESETS["sample"])
    t_sim = time.perf_counter() - t0
    save_simulation(sim, out / "sample")
    meta = sim.metadata
    px, fr = meta["pixel_size_um"], meta["frame_rate_hz"]
    print(
        f"1. simulated the sample: {sim.frames.shape[0]} frames of {sim.frames.shape[1]}x{sim.frames.shape[2]} px, "
        f"{len(sim.ground_truth)} ground-truth bubble positions, {t_sim:.2f} s -> {out / 'sample'}"
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
            iter_train_mbdt(sim.frames, psf, steps=args.finetune_steps, out=out / "mbdt_finetuned.pt",
                            preview_every=None),
            desc="fine-tune MB-DT", disable=args.quiet,
        )
        mbdt = out / "mbdt_finetuned.pt"
        print(f"3. MB-DT fine-tuned on the sample (no labels) for {ft.steps_done} steps in "
              f"{time.perf_counter() - t0:.0f} s -> {mbdt}")
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
        if PIPELINES[name].localise != "e2e":  # E2E makes SR maps only
            m = match_localisations(sim.ground_truth, res.localisations, tolerance=args.tolerance)
            row.update(recall=m.recall, precision=m.precision, F1=m.f1, error_um=m.mean_error_px * px)
        rows.append({**row, "seconds": elapsed})
    tuned = mbdt != "default"
    print(f"{4 if tuned else 3}. pipelines scored against the ground truth (tolerance {args.tolerance} px = "
          f"{args.tolerance * px:.0f} um; MB-DT: {'fine-tuned' if tuned else 'shipped default'}):")
    _print_table(rows, list(rows[0]))
    print(f"outputs in {out}/ (SR maps as TIFF, preview.png, CSV tables, run.json)")
    return 0


# -- parser ------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .pipeline import PIPELINES

    p = argparse.ArgumentParser(
        prog="cycleulm",
        description="Ultrasound localisation microscopy with CycleULM (headless).",
    )
    p.add_argument("--version", action="version", version=f"napari-cycleulm {__version__}")
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
                    help="pipelines to run (default: all six)")
    sp.add_argument("--finetune-steps", type=int, default=0,
                    help="first fine-tune MB-DT on the sample for N steps (unsupervised; e.g. 2000, ~7 min "
                         "on 2 CPU cores); default 0: the shipped MB-DT")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("simulate", help="simulate a CEUS sequence with ground truth")
    sp.add_argument("out", help="output folder")
    sp.add_argument("--preset", choices=["sample", "benchmark"], default="sample")
    sp.add_argument("--frames", type=int, default=None)
    sp.add_argument("--height", type=int, default=None)
    sp.add_argument("--width", type=int, default=None)
    sp.add_argument("--density", type=float, default=None, help="mean bubbles per frame")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("psf", help="estimate the PSF from clicked or automatically picked bubbles")
    sp.add_argument("input", help="CEUS stack (tif, npy, mat, h5)")
    sp.add_argument("--points", default=None, help="CSV of bubble positions (frame,y,x); automatic when omitted")
    sp.add_argument("--out", required=True, help="PSF JSON to write")
    sp.add_argument("--n", type=int, default=20, help="bubbles to pick in automatic mode")
    units(sp)
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
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("run", help="run a ULM pipeline on a CEUS stack")
    sp.add_argument("input")
    sp.add_argument("--pipeline", required=True, choices=sorted(PIPELINES))
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--psf", default="auto", help="'auto' or a PSF JSON from `cycleulm psf`")
    sp.add_argument("--block-size", type=int, default=200, help="frames per block (memory scales with it)")
    sp.add_argument("--threshold", type=float, default=None, help="localisation threshold")
    sp.add_argument("--target-count", type=int, default=None, help="keep exactly N best localisations")
    sp.add_argument("--max-distance", type=float, default=None, help="tracking gate, pixels per frame")
    sp.add_argument("--upsampling", type=int, default=4)
    sp.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    sp.add_argument("--quiet", action="store_true")
    for kind, name in (("mbdt", "MB-DT"), ("mblnet", "MBL-Net"), ("mbtnet", "MBT-Net")):
        sp.add_argument(f"--{kind}", default="default", metavar="MODEL.pt",
                        help=f"{name} checkpoint for the cycleulm-* pipelines, or 'default' (shipped weights)")
    units(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("translate", help="translate CEUS frames to the MB-only domain with MB-DT")
    sp.add_argument("input", help="CEUS stack (tif, npy, mat, h5)")
    sp.add_argument("--mbdt", default="default", metavar="MODEL.pt",
                    help="MB-DT checkpoint, or 'default' (shipped weights)")
    sp.add_argument("--out", required=True, help="MB-only stack to write (.tif)")
    sp.add_argument("--block-size", type=int, default=64, help="frames per block (memory scales with it)")
    sp.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    sp.add_argument("--quiet", action="store_true")
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
    sp.add_argument("--init", default=None,
                    help="start from 'default' weights, 'none' (scratch) or a checkpoint "
                         "(mbdt default: 'default'; others: 'none')")
    sp.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    sp.add_argument("--quiet", action="store_true")
    units(sp)
    sp.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CycleULMError as exc:
        # One line, even when the message quotes a multi-line library error.
        msg = " ".join(str(exc).split())
        print(f"cycleulm {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cycleulm {args.command}: interrupted; files already complete were kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
