"""Accuracy of the localisation methods and pipelines against simulated ground truth.

On a simulated acquisition (a seed that no default was tuned on), this script

1. sweeps the localisation threshold of each localisation method (after the
   pipeline's own denoising) and records precision-recall points at a
   tolerance of 1 pixel;
2. runs each pipeline with its default settings and at a matched number of
   localisations (the paper's fair comparison), and scores localisations
   (recall, precision, F1, mean error) and SR density maps (RMSE and SSIM
   against the ground-truth SR map rendered from the true tracks);
3. writes ``accuracy.json``, ``pr_curves.csv``, a precision-recall plot and a
   figure of the SR maps beside the ground-truth map.

Usage::

    python benchmarks/accuracy.py --out docs/results --seed 2026
    python benchmarks/accuracy.py --pipelines baseline1 baseline2 --frames 400
    python benchmarks/accuracy.py --out docs/results/finetuned --finetune-steps 2000

With ``--finetune-steps N`` MB-DT is first fine-tuned on the acquisition
itself for N steps (the user's workflow: unsupervised, automatic PSF, whole
frame as ROI, no ground truth), and the CycleULM pipelines use that model.

The PSF is estimated automatically from the data, as a headless user would.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from napari_cycleulm.evaluate.metrics import match_localisations, precision_recall_sweep, rmse, ssim
from napari_cycleulm.pipeline import PIPELINES, iter_pipeline
from napari_cycleulm.progress import drive
from napari_cycleulm.psf import estimate_psf_auto
from napari_cycleulm.render import SRRenderer, to_png
from napari_cycleulm.simulate import simulate
from napari_cycleulm.io.tables import Tracks


def ground_truth_map(sim, upsampling: int) -> np.ndarray:
    """SR density of the true tracks, rendered like the pipelines' maps."""
    gt = sim.ground_truth
    tracks = Tracks({k: gt[k] for k in ("track_id", "frame", "y", "x", "vy", "vx")})
    r = SRRenderer(sim.frames.shape[1:], upsampling=upsampling)
    r.add_tracks(tracks.sort("track_id", "frame"))
    return r.density()


def sweep(sim, psf, pipeline: str, thresholds, low: float, tolerance: float, **kw) -> list[dict]:
    """Precision-recall points: run once at a low threshold, then cut the scores."""
    res = drive(iter_pipeline(sim.frames, pipeline, psf, threshold=low, **kw))
    # metrics.precision_recall_sweep keeps detections with score >= threshold.
    curve = precision_recall_sweep(sim.ground_truth, res.localisations, score_column="score",
                                   thresholds=thresholds, tolerance=tolerance)
    return [{"pipeline": pipeline, "threshold": r["threshold"], "n": r["n_detections"],
             "recall": r["recall"], "precision": r["precision"], "f1": r["f1"],
             "mean_error_px": r["mean_error_px"]} for r in curve]


def score_run(sim, res, gt_map, tolerance: float) -> dict:
    row = {"pipeline": res.pipeline, "n_localisations": res.n_localisations, "n_tracks": res.n_tracks,
           "seconds": round(sum(res.timings_s.values()), 2)}
    if res.localisations is not None and len(res.localisations):
        m = match_localisations(sim.ground_truth, res.localisations, tolerance=tolerance)
        row.update(recall=m.recall, precision=m.precision, f1=m.f1, mean_error_px=m.mean_error_px)
    row["sr_rmse"] = rmse(res.maps.density, gt_map, normalise="max")
    row["sr_ssim"] = ssim(res.maps.density, gt_map)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/accuracy")
    ap.add_argument("--seed", type=int, default=2026, help="simulation seed (not used to tune any default)")
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--density", type=float, default=20.0)
    ap.add_argument("--clutter-db", type=float, default=-12.0)
    ap.add_argument("--tolerance", type=float, default=1.0)
    ap.add_argument("--pipelines", nargs="+", default=sorted(PIPELINES), choices=sorted(PIPELINES))
    ap.add_argument("--mbdt", default="default", help="MB-DT checkpoint of the CycleULM pipelines")
    ap.add_argument("--finetune-steps", type=int, default=0,
                    help="fine-tune MB-DT on this acquisition first (unsupervised; 0: no)")
    ap.add_argument("--matched-count", type=int, default=None,
                    help="localisations per pipeline for the matched comparison (default: the smallest default count)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", UserWarning)

    sim = simulate(n_frames=args.frames, height=args.height, width=args.width, density=args.density,
                   clutter_db=args.clutter_db, seed=args.seed)
    meta = sim.metadata
    px, fr = meta["pixel_size_um"], meta["frame_rate_hz"]
    est = estimate_psf_auto(sim.frames, pixel_size_um=px)
    psf = est.psf
    u = 4
    gt_map = ground_truth_map(sim, u)
    mbdt, finetune = args.mbdt, None
    if args.finetune_steps:
        from napari_cycleulm.train import train_mbdt

        t0 = time.perf_counter()
        ckpt = Path(tempfile.mkdtemp(prefix="cycleulm_acc_")) / "mbdt_finetuned.pt"  # not into docs/
        ft = train_mbdt(sim.frames, psf, init=args.mbdt, steps=args.finetune_steps, out=ckpt,
                        checkpoint_every=None, preview_every=None)
        finetune = {"steps": ft.steps_done, "seconds": time.perf_counter() - t0, "init": str(args.mbdt),
                    "domain_b_measured": ft.config.get("domain_b_measured")}
        mbdt = str(ckpt)
        print(f"fine-tuned MB-DT for {ft.steps_done} steps in {finetune['seconds']:.0f} s", flush=True)
    common = dict(block_size=100, pixel_size_um=px, frame_rate_hz=fr, upsampling=u, mbdt=mbdt)
    report = {
        "data": {"seed": args.seed, "frames": args.frames, "shape": [args.height, args.width],
                 "density": args.density, "clutter_db": args.clutter_db, "n_ground_truth": len(sim.ground_truth),
                 "pixel_size_um": px, "frame_rate_hz": fr},
        "psf": {"n_bubbles": est.n_used, "fwhm_y_px": psf.fwhm_y_px, "fwhm_x_px": psf.fwhm_x_px,
                "true_fwhm_y_px": meta["psf_fwhm_y_px"], "true_fwhm_x_px": meta["psf_fwhm_x_px"]},
        "tolerance_px": args.tolerance,
        "mbdt": str(args.mbdt), "mbdt_finetune": finetune,
    }

    # 1. precision-recall sweeps
    pr_rows = []
    for name in args.pipelines:
        spec = PIPELINES[name]
        if getattr(spec, "localise", "") == "e2e":
            continue
        base = spec.threshold
        thresholds = np.unique(np.round(np.geomspace(base / 4, base * 4, 13), 4))
        t0 = time.perf_counter()
        pr_rows += sweep(sim, psf, name, thresholds, thresholds[0], args.tolerance, **common)
        print(f"swept {name} in {time.perf_counter() - t0:.1f} s", flush=True)
    with open(out / "pr_curves.csv", "w") as fh:
        keys = ["pipeline", "threshold", "n", "recall", "precision", "f1", "mean_error_px"]
        fh.write(",".join(keys) + "\n")
        for r in pr_rows:
            fh.write(",".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + "\n")
    report["pr_curves"] = pr_rows

    # 2. pipelines at default settings, then at a matched count
    defaults, maps = [], {}
    for name in args.pipelines:
        res = drive(iter_pipeline(sim.frames, name, psf, **common))
        defaults.append(score_run(sim, res, gt_map, args.tolerance))
        maps[name] = res.maps.density
        print(f"default {name}: {defaults[-1]}", flush=True)
    report["defaults"] = defaults
    counts = [r["n_localisations"] for r in defaults if r["n_localisations"]]
    matched_n = args.matched_count or (min(counts) if counts else None)
    matched = []
    if matched_n:
        for name in args.pipelines:
            if getattr(PIPELINES[name], "localise", "") == "e2e":
                continue
            low = PIPELINES[name].threshold / 4
            res = drive(iter_pipeline(sim.frames, name, psf, threshold=low, target_count=matched_n, **common))
            matched.append(score_run(sim, res, gt_map, args.tolerance))
            print(f"matched {name}: {matched[-1]}", flush=True)
    report["matched_count"] = matched_n
    report["matched"] = matched
    (out / "accuracy.json").write_text(json.dumps(report, indent=2, default=float))
    to_png(gt_map, out / "sr_ground_truth.png", cmap="hot", pixel_size_um=px / u, scale_bar_mm=1.0)
    for name, m in maps.items():
        to_png(m, out / f"sr_{name}.png", cmap="hot", pixel_size_um=px / u, scale_bar_mm=1.0)
    _figures(out, pr_rows, gt_map, maps)
    print(json.dumps({"defaults": defaults, "matched": matched}, indent=1, default=float))
    return 0


def _figures(out: Path, pr_rows, gt_map, maps) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name in dict.fromkeys(r["pipeline"] for r in pr_rows):
        rows = [r for r in pr_rows if r["pipeline"] == name and r["n"] > 0]
        ax.plot([r["recall"] for r in rows], [r["precision"] for r in rows], "o-", ms=3, label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("localisation, tolerance 1 px")
    fig.tight_layout()
    fig.savefig(out / "precision_recall.png", dpi=120)

    panels = [("ground truth", gt_map)] + list(maps.items())
    fig = Figure(figsize=(3.2 * len(panels), 3.0))
    FigureCanvasAgg(fig)
    for i, (name, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        vmax = np.percentile(img[img > 0], 99) if (img > 0).any() else 1
        ax.imshow(np.sqrt(np.clip(img / vmax, 0, 1)), cmap="hot", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "sr_maps.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
