"""What MB-DT does to contrast and resolution, and what fine-tuning costs.

On a simulated acquisition with a seed no network was trained on:

1. translates it with the shipped MB-DT and reports the CNR of the maximum
   intensity projection (MIP) before and after (signal: the vessel mask;
   background: the organ outside vessels dilated by the PSF), with both CNR
   definitions (contrast and the paper's ratio), and the PSF FWHM before and
   after, estimated at the same isolated ground-truth bubbles;
2. fine-tunes MB-DT with default settings on the same stack (the user's
   workflow: automatic PSF, whole frame as ROI) and reports the time and the
   CNR after fine-tuning.

Usage::

    python benchmarks/networks.py --out docs/results [--seed 2027] [--steps 2000]
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
from scipy import ndimage

from napari_cycleulm.evaluate.metrics import cnr_db
from napari_cycleulm.psf import estimate_psf, estimate_psf_auto
from napari_cycleulm.simulate import isolated_positions, simulate
from napari_cycleulm.train import train_mbdt
from napari_cycleulm.dl.mbdt_inference import translate


def contrast(mip: np.ndarray, signal: np.ndarray, background: np.ndarray) -> dict:
    return {"contrast_db": cnr_db(mip, signal, background),
            "ratio_db": cnr_db(mip, signal, background, definition="ratio")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/networks")
    ap.add_argument("--seed", type=int, default=2027)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, nargs=2, default=(160, 160))
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the trainer's; 0: evaluate --mbdt only)")
    ap.add_argument("--mbdt", default="default", help="MB-DT checkpoint to evaluate before fine-tuning")
    ap.add_argument("--checkpoint", default=None,
                    help="where to keep the fine-tuned MB-DT (default: a temporary folder, deleted afterwards)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    sim = simulate(n_frames=args.frames, height=args.size[0], width=args.size[1], density=20.0, seed=args.seed)
    est = estimate_psf_auto(sim.frames, pixel_size_um=sim.metadata["pixel_size_um"])
    psf = est.psf
    px = sim.metadata["pixel_size_um"]
    grow = int(np.ceil(psf.fwhm_x_px))
    signal = sim.vessel_mask & sim.organ_mask
    background = sim.organ_mask & ~ndimage.binary_dilation(sim.vessel_mask, iterations=grow)
    points = sim.ground_truth.positions[isolated_positions(sim.ground_truth.positions, sim.frames.shape[1:], n=40)]

    def describe(frames, label: str, average: str) -> dict:
        mip = frames.max(axis=0)
        row = {"label": label, **contrast(mip, signal, background)}
        e = estimate_psf(frames, points, average=average, pixel_size_um=px)
        row.update(fwhm_y_px=e.psf.fwhm_y_px, fwhm_x_px=e.psf.fwhm_x_px,
                   fwhm_y_um=e.psf.fwhm_y_px * px, fwhm_x_um=e.psf.fwhm_x_px * px, psf_bubbles=e.n_used)
        return row

    rows = [describe(sim.frames, "CEUS (raw)", "power")]
    t0 = time.perf_counter()
    mb = translate(sim.frames, args.mbdt)
    t_translate = time.perf_counter() - t0
    rows.append(describe(mb, "MB-only, shipped MB-DT", "amplitude"))

    res, t_train, mb_ft = None, float("nan"), None
    if args.steps != 0:  # 0: only the given MB-DT, no fine-tuning
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = train_mbdt(sim.frames, psf, init=args.mbdt,
                             out=args.checkpoint or Path(tmp) / "mbdt_finetuned.pt",
                             **({"steps": args.steps} if args.steps else {}))
            t_train = time.perf_counter() - t0
        mb_ft = translate(sim.frames, res.model)
        rows.append(describe(mb_ft, f"MB-only, fine-tuned {res.steps_done} steps", "amplitude"))

    report = {
        "data": {"seed": args.seed, "frames": args.frames, "shape": list(args.size),
                 "true_psf_fwhm_px": [sim.metadata["psf_fwhm_y_px"], sim.metadata["psf_fwhm_x_px"]],
                 "isolated_bubbles_for_fwhm": len(points)},
        "rows": rows,
        "translate_seconds": t_translate,
        "translate_fps": args.frames / t_translate,
        "mbdt": str(args.mbdt),
        "finetune": None if res is None else {
            "steps": res.steps_done, "seconds": t_train, "batch_size": res.config.get("batch_size"),
            "init": str(args.mbdt), "notes": res.config.get("notes")},
    }
    (out / "networks.json").write_text(json.dumps(report, indent=2, default=float))
    for r in rows:
        print(f"{r['label']:>34}: CNR {r['contrast_db']:6.2f} dB (ratio {r['ratio_db']:6.2f} dB), "
              f"FWHM y {r['fwhm_y_um']:6.1f} um, x {r['fwhm_x_um']:6.1f} um")
    if res is not None:
        print(f"fine-tuning: {res.steps_done} steps in {t_train:.0f} s")
    print(f"translation {args.frames / t_translate:.1f} frames/s")
    _figure(out, sim.frames, mb, mb_ft)
    return 0


def _figure(out: Path, raw, mb, mb_ft) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(raw) // 2
    cols = [("CEUS", raw), ("MB-only (shipped)", mb)] + ([("MB-only (fine-tuned)", mb_ft)] if mb_ft is not None else [])
    panels = [(f"{n} frame", a[k]) for n, a in cols] + [(f"{n} MIP", a.max(0)) for n, a in cols]
    fig = Figure(figsize=(3.4 * len(cols), 6.6))
    FigureCanvasAgg(fig)
    for i, (name, img) in enumerate(panels):
        ax = fig.add_subplot(2, len(cols), i + 1)
        ax.imshow(img, cmap="gray", vmin=0, vmax=np.percentile(img, 99.9))
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "mbdt_translation.png", dpi=100)


if __name__ == "__main__":
    sys.exit(main())
