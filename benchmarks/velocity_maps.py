"""Velocity maps of the pipelines against simulated ground truth, in mm/s (issue 11).

For each held-out seed the project simulator (``simulate(seed=S,
**PRESETS["sample"])``: 128x160 px, 200 frames, 50 um pixels, 500 Hz) gives
the frames and the true bubble tracks.  The ground-truth velocity map is the
true tracks (``ground_truth`` grouped by ``track_id``, with their true
``vy, vx``) drawn by :class:`napari_cycleulm.render.SRRenderer` at
upsampling 4, so the truth has exactly the renderer's definition: mean speed
of the track passages through each SR pixel, mm/s.  Each pipeline runs with
its defaults (``run_pipeline(frames, NAME, "auto", pixel_size_um=...,
frame_rate_hz=...)``: automatic PSF, default thresholds; nothing chosen with
ground truth), and its ``maps.velocity`` (linked tracks; for
``cycleulm-e2e`` MBT-Net's velocity maps) is compared with the truth on the
SR grid.

True vessels
------------
The simulator's vessel mask ``(H, W)`` upsampled x4 by nearest neighbour
(``np.repeat``; original pixel ``(i, j)`` covers SR pixels ``4i..4i+3,
4j..4j+3``, the render grid convention).  ``gt_outside_vessels`` reports the
fraction of the truth's finite pixels outside that mask (a check: close to 0).

Metrics (per pipeline and seed)
-------------------------------
* on pixels inside the true vessels where both velocity maps are finite
  (``n_compared``): ``mae_mm_s`` (mean absolute speed error),
  ``median_ae_mm_s``, ``bias_mm_s`` (mean of pipeline - truth), ``rel_mae``
  (MAE / mean true speed on the same pixels), ``pearson_r`` and, for the
  signed axial speed map ``axial_velocity``, ``axial_mae_mm_s``;
* ``coverage_vessels``: fraction of the true-vessel SR pixels where the
  pipeline's velocity is finite; ``coverage_gt``: the same over the pixels
  where the truth is finite (the vessel pixels a bubble actually crossed in
  the acquisition, the most a pipeline can hope to fill);
* ``spill``: fraction of the pipeline's finite-velocity pixels outside the
  true vessels; ``spill_1px``: outside the vessels dilated by one original
  pixel (4 SR px), which forgives localisation errors below a pixel.

Usage::

    python benchmarks/velocity_maps.py --out docs/results/velocity_maps.json
    python benchmarks/velocity_maps.py --seeds 9001 --pipelines baseline2 --out /tmp/v.json
    python benchmarks/velocity_maps.py --density 50 --merge --out docs/results/velocity_maps.json

``--density`` sets the simulator's mean number of bubbles per frame (default:
the simulator's, 20).  Seeds 9001-9003 are held out: no default of the
project was tuned on them, and nothing here is tuned on them either.  With
several densities (``--density 20 50``) each is run on every seed and
reported under its own key (``default`` or ``density_50``); ``--merge`` adds
the settings of a later run to an existing report, each setting keeping its
own command, commit, date and wall time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_cycleulm import Tracks
from napari_cycleulm.pipeline import PIPELINES, run_pipeline
from napari_cycleulm.render import SRMaps, SRRenderer
from napari_cycleulm.simulate import PRESETS, simulate

DEFAULT_SEEDS = (9001, 9002, 9003)
DEFAULT_PIPELINES = ("baseline2", "cycleulm-loc", "cycleulm-tracks", "cycleulm-e2e")
UPSAMPLING = 4
METRICS = ("mae_mm_s", "median_ae_mm_s", "bias_mm_s", "rel_mae", "pearson_r", "axial_mae_mm_s",
           "coverage_vessels", "coverage_gt", "spill", "spill_1px")


def ground_truth_tracks(ground_truth) -> Tracks:
    """The true bubble positions as a Tracks table (``track_id, frame, y, x, vy, vx``)."""
    cols = {k: np.asarray(ground_truth[k]) for k in ("track_id", "frame", "y", "x", "vy", "vx")}
    return Tracks(cols).sort("track_id", "frame")


def ground_truth_velocity(tracks, shape, pixel_size_um: float, frame_rate_hz: float,
                          upsampling: int = UPSAMPLING) -> SRMaps:
    """SR maps (velocity in mm/s) of true tracks, drawn by the pipelines' renderer."""
    r = SRRenderer(shape, upsampling=upsampling)
    r.add_tracks(tracks)
    return r.result(pixel_size_um=pixel_size_um, frame_rate_hz=frame_rate_hz)


def vessel_mask_sr(vessel_mask: np.ndarray, upsampling: int = UPSAMPLING) -> np.ndarray:
    """Nearest-neighbour upsampling of an ``(H, W)`` mask to the SR grid."""
    m = np.asarray(vessel_mask, bool)
    return np.repeat(np.repeat(m, upsampling, axis=0), upsampling, axis=1)


def _frac(num, den) -> float | None:
    return float(num) / float(den) if den else None


def velocity_metrics(pred: SRMaps, truth: SRMaps, vessels: np.ndarray, upsampling: int = UPSAMPLING) -> dict:
    """Compare a pipeline's velocity maps with the truth's (module notes)."""
    if pred.velocity.shape != truth.velocity.shape or vessels.shape != truth.velocity.shape:
        raise ValueError(f"maps differ in shape: {pred.velocity.shape}, {truth.velocity.shape}, {vessels.shape}")
    if pred.velocity_unit != "mm/s" or truth.velocity_unit != "mm/s":
        raise ValueError(f"velocity units must be mm/s, got {pred.velocity_unit!r} and {truth.velocity_unit!r}")
    pv = np.asarray(pred.velocity, np.float64)
    tv = np.asarray(truth.velocity, np.float64)
    pfin, tfin = np.isfinite(pv), np.isfinite(tv)
    both = vessels & pfin & tfin
    near = ndimage.binary_dilation(vessels, structure=np.ones((3, 3), bool), iterations=upsampling)
    out = {
        "n_vessel_px": int(vessels.sum()),
        "n_gt_px": int((vessels & tfin).sum()),
        "n_pred_px": int(pfin.sum()),
        "n_compared": int(both.sum()),
        "coverage_vessels": _frac((vessels & pfin).sum(), vessels.sum()),
        "coverage_gt": _frac((vessels & tfin & pfin).sum(), (vessels & tfin).sum()),
        "spill": _frac((pfin & ~vessels).sum(), pfin.sum()),
        "spill_1px": _frac((pfin & ~near).sum(), pfin.sum()),
    }
    if both.sum() == 0:
        out.update({k: None for k in ("mae_mm_s", "median_ae_mm_s", "bias_mm_s", "rel_mae", "pearson_r",
                                      "mean_true_mm_s", "mean_pred_mm_s", "axial_mae_mm_s")})
        return out
    p, t = pv[both], tv[both]
    err = p - t
    mae = float(np.abs(err).mean())
    out.update(
        mae_mm_s=mae,
        median_ae_mm_s=float(np.median(np.abs(err))),
        bias_mm_s=float(err.mean()),
        mean_true_mm_s=float(t.mean()),
        mean_pred_mm_s=float(p.mean()),
        rel_mae=mae / float(t.mean()) if t.mean() > 0 else None,
        pearson_r=float(np.corrcoef(p, t)[0, 1]) if both.sum() > 2 and p.std() > 0 and t.std() > 0 else None,
    )
    pa = np.asarray(pred.axial_velocity, np.float64)
    ta = np.asarray(truth.axial_velocity, np.float64)
    ab = vessels & np.isfinite(pa) & np.isfinite(ta)
    out["axial_mae_mm_s"] = float(np.abs(pa[ab] - ta[ab]).mean()) if ab.any() else None
    out["axial_sign_agreement"] = float((np.sign(pa[ab]) == np.sign(ta[ab])).mean()) if ab.any() else None
    return out


def run_seed(seed: int, pipelines, density: float | None) -> dict:
    kw = dict(PRESETS["sample"])
    if density is not None:
        kw["density"] = density
    t0 = time.perf_counter()
    sim = simulate(seed=seed, **kw)
    px, fr = float(sim.metadata["pixel_size_um"]), float(sim.metadata["frame_rate_hz"])
    shape = sim.frames.shape[1:]
    truth = ground_truth_velocity(ground_truth_tracks(sim.ground_truth), shape, px, fr)
    vessels = vessel_mask_sr(sim.vessel_mask)
    tfin = np.isfinite(truth.velocity)
    rec = {
        "seed": seed,
        "density": kw.get("density", sim.metadata.get("density")),
        "simulate_s": round(time.perf_counter() - t0, 2),
        "truth": {
            "n_tracks": int(np.unique(sim.ground_truth["track_id"]).size),
            "n_points": len(sim.ground_truth),
            "n_vessel_px": int(vessels.sum()),
            "n_gt_px": int(tfin.sum()),
            "gt_outside_vessels": _frac((tfin & ~vessels).sum(), tfin.sum()),
            "gt_coverage_of_vessels": _frac((tfin & vessels).sum(), vessels.sum()),
            "mean_true_speed_mm_s": float(np.nanmean(truth.velocity[vessels])) if (tfin & vessels).any() else None,
        },
        "pipelines": {},
    }
    print(f"seed {seed}: {rec['truth']['n_tracks']} true tracks, truth on {rec['truth']['n_gt_px']} SR px "
          f"({100 * rec['truth']['gt_coverage_of_vessels']:.1f} % of {rec['truth']['n_vessel_px']} vessel px)",
          flush=True)
    for name in pipelines:
        t1 = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = run_pipeline(sim.frames, name, "auto", pixel_size_um=px, frame_rate_hz=fr)
            row = velocity_metrics(res.maps, truth, vessels)
            row.update(n_tracks=int(res.n_tracks), n_localisations=int(res.n_localisations),
                       warnings=sorted({str(w.message)[:200] for w in caught}))
        except Exception as exc:  # report and go on with the next pipeline
            row = {"error": f"{type(exc).__name__}: {exc}"}
        row["seconds"] = round(time.perf_counter() - t1, 1)
        rec["pipelines"][name] = row
        if "error" in row:
            print(f"  {name}: {row['error']}", flush=True)
        else:
            print(f"  {name}: MAE {_fmt(row['mae_mm_s'])} mm/s, r {_fmt(row['pearson_r'])}, "
                  f"coverage {_fmt(row['coverage_gt'])} (gt) {_fmt(row['coverage_vessels'])} (vessels), "
                  f"spill {_fmt(row['spill'])}, {row['seconds']} s", flush=True)
    return rec


def summarise(records, pipelines) -> dict:
    """Mean, standard deviation, min and max over seeds of every metric, per pipeline."""
    out = {}
    for name in pipelines:
        rows = [r["pipelines"][name] for r in records if name in r["pipelines"] and "error" not in r["pipelines"][name]]
        out[name] = {"n_seeds": len(rows)}
        for m in METRICS + ("n_tracks",):
            vals = np.array([r[m] for r in rows if r.get(m) is not None], np.float64)
            if vals.size:
                out[name][m] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
                                "min": float(vals.min()), "max": float(vals.max())}
            else:
                out[name][m] = None
    return out


def _fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(means: dict, title: str) -> str:
    cols = [("MAE mm/s", "mae_mm_s", 2), ("median AE", "median_ae_mm_s", 2), ("bias", "bias_mm_s", 2),
            ("rel. MAE", "rel_mae", 3), ("Pearson r", "pearson_r", 3), ("axial MAE", "axial_mae_mm_s", 2),
            ("coverage (truth px)", "coverage_gt", 3), ("coverage (vessel px)", "coverage_vessels", 3),
            ("spill", "spill", 3), ("spill > 1 px", "spill_1px", 3)]
    lines = [f"### {title}", "", "| pipeline | " + " | ".join(c[0] for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for name, row in means.items():
        cells = []
        for _, key, d in cols:
            s = row.get(key)
            cells.append("-" if s is None else f"{s['mean']:.{d}f} ± {s['std']:.{d}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Mean ± standard deviation over seeds (n = "
                 + ", ".join(f"{n}: {r['n_seeds']}" for n, r in means.items()) + ").")
    return "\n".join(lines) + "\n"


def _git(*cmd) -> str | None:
    try:
        return subprocess.run(["git", *cmd], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                    help="simulator seeds (default: the held-out 9001 9002 9003)")
    ap.add_argument("--pipelines", nargs="+", default=list(DEFAULT_PIPELINES), choices=list(PIPELINES), metavar="NAME",
                    help=f"pipelines to score (default: {' '.join(DEFAULT_PIPELINES)})")
    ap.add_argument("--density", type=float, nargs="+", default=None,
                    help="simulator bubbles per frame; several values run each (default: the simulator's)")
    ap.add_argument("--out", default="docs/results/velocity_maps.json", help="JSON report")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--merge", action="store_true",
                    help="add the settings run now to an existing --out report (others are kept)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    argv_used = list(sys.argv[1:] if argv is None else argv)
    t_all = time.perf_counter()
    dirty = _git("status", "--porcelain", "--", "src", "benchmarks")
    report = {
        "meta": {
            "command": "python benchmarks/velocity_maps.py " + " ".join(argv_used),
            "commit": _git("rev-parse", "--short", "HEAD"),
            "dirty": [ln[3:] for ln in (dirty or "").splitlines()],
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "preset": "sample",
            "upsampling": UPSAMPLING,
            "vessel_mask": "simulator vessel_mask upsampled x4 by nearest neighbour",
            "psf": "auto",
            "thresholds": "pipeline defaults",
            "note": "meta describes the latest run; each setting keeps its own command, commit, date and wall_s",
        },
        "settings": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and out.exists():
        report["settings"] = json.loads(out.read_text()).get("settings", {})
    text = []
    for density in (args.density or [None]):
        key = "default" if density is None else f"density_{density:g}"
        t_set = time.perf_counter()
        records = [run_seed(s, args.pipelines, density) for s in args.seeds]
        means = summarise(records, args.pipelines)
        report["settings"][key] = {"density": records[0]["density"], "seeds": args.seeds,
                                   "command": report["meta"]["command"], "commit": report["meta"]["commit"],
                                   "date": report["meta"]["date"],
                                   "wall_s": round(time.perf_counter() - t_set, 1),
                                   "means": means, "per_seed": records}
        text.append(markdown(means, f"Velocity maps vs ground truth, {key} "
                                    f"(density {records[0]['density']}, seeds {' '.join(map(str, args.seeds))})"))
        report["meta"]["wall_s"] = round(time.perf_counter() - t_all, 1)
        out.write_text(json.dumps(report, indent=1) + "\n")  # after each setting
    report["meta"]["wall_s"] = round(time.perf_counter() - t_all, 1)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print()
    print("\n".join(text))
    print(f"{report['meta']['wall_s']:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
