"""How MB-DT's input convention (:func:`napari_cycleulm.intensity.mbdt_input_scale`) was chosen.

Two measurements, neither on a setting or seed of ``benchmarks/generalisation.py``:

1. **The level** (:data:`~napari_cycleulm.intensity.MBDT_BACKGROUND_LEVEL`): the
   median of each training acquisition of the shipped MB-DT
   (``scripts/train_default_weights.py``'s ``MBDT_SETTINGS``, the first 100
   frames after ``svd:auto``) once scaled by the percentile convention (99.9th
   percentile to 1); the level is their geometric mean (acquisitions whose
   median is 0, where the filter clips the background, left out).
2. **Why a level at all, and the floor**: CycleULM-Loc against Baseline 2
   (F1 at 1 px, automatic PSF, default thresholds) on selection settings (the
   six of ``benchmarks/gate_selection.py``, seeds 31-36, and five more, seeds
   37-41: dense flow with a wide intensity spread, a tiny PSF, a wide PSF,
   low-rank clutter with a Gaussian PSF, clean sparse data) with MB-DT's input
   scale multiplied by fixed factors, beside the factor the rule gives.
3. **The floor** (:data:`~napari_cycleulm.intensity.MBDT_BACKGROUND_FLOOR`):
   for each candidate floor, the F1 the rule would give on each selection
   setting, interpolated (in log factor) between the measured factors; the
   floor with the best worst-case ratio to Baseline 2 wins, the mean ratio
   breaking ties.

Usage::

    python benchmarks/mbdt_input_scale.py --out docs/results/mbdt_input_scale.json [--frames 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from gate_selection import SETTINGS as SELECTION  # noqa: E402
from train_default_weights import MBDT_SETTINGS  # noqa: E402

from napari_cycleulm import io as ulm_io  # noqa: E402
from napari_cycleulm.intensity import (  # noqa: E402
    MBDT_BACKGROUND_FLOOR,
    MBDT_BACKGROUND_LEVEL,
    MBDT_MAX_RAISE,
    intensity_scale,
    mbdt_background_factor,
    mbdt_input_scale,
)
from napari_cycleulm.evaluate.metrics import match_localisations  # noqa: E402
from napari_cycleulm.pipeline import run_pipeline  # noqa: E402
from napari_cycleulm.preprocess import clutter_filtered  # noqa: E402
from napari_cycleulm.simulate import simulate  # noqa: E402

FACTORS = (0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0)

#: Selection settings beyond gate_selection's (``simulate`` keyword arguments, 128 x 160).
MORE_SELECTION = {
    "dense37": dict(density=100.0, amplitude_spread=1.0, psf_fwhm_um=(150.0, 250.0), clutter_db=-20.0, seed=37),
    "tiny38": dict(density=40.0, psf_fwhm_um=(100.0, 120.0), seed=38),
    "wide39": dict(density=15.0, psf_fwhm_um=(400.0, 500.0), clutter_db=-10.0, seed=39),
    "lowrank40": dict(density=10.0, psf_fwhm_um=(150.0, 220.0), clutter_model="lowrank", clutter_db=-6.0,
                      psf_shape="gauss", seed=40),
    "clean41": dict(density=10.0, clutter_db=-30.0, noise_db=-40.0, seed=41),
}

#: Candidate floors (:data:`~napari_cycleulm.intensity.MBDT_BACKGROUND_FLOOR`).
FLOORS = (0.03, 0.04, 0.05, 0.06, 0.07)


def interpolated_f1(f1_by_factor: dict, factor: float) -> float:
    """F1 at ``factor`` interpolated in log factor between the measured ones (clamped at the ends)."""
    xs = np.log([float(k) for k in f1_by_factor])
    ys = [v["f1"] for v in f1_by_factor.values()]
    return float(np.interp(np.log(factor), xs, ys))


def choose_floor(selection: dict) -> dict:
    """Worst-case and mean F1 ratio to Baseline 2 of each candidate floor (interpolated)."""
    out = {}
    for floor in FLOORS:
        ratios = {name: interpolated_f1(row["cycleulm-loc"], mbdt_background_factor(row["median"], floor=floor))
                  / max(row["baseline2"]["f1"], 1e-9) for name, row in selection.items()}
        out[f"{floor:g}"] = {"min": min(ratios.values()), "mean": float(np.mean(list(ratios.values()))),
                             "ratios": ratios}
    best = max(out, key=lambda k: (round(out[k]["min"], 3), out[k]["mean"]))
    return {"candidates": out, "chosen": float(best), "shipped": MBDT_BACKGROUND_FLOOR}


def filtered_calibration(sim, n: int = 100) -> np.ndarray:
    """The first ``n`` frames after the pipelines' clutter filter."""
    return ulm_io.read_block(clutter_filtered(sim.frames, "svd:auto"), 0, min(n, len(sim.frames)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/mbdt_input_scale.json"))
    ap.add_argument("--frames", type=int, default=100)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", UserWarning)
    report: dict = {"training": {}, "selection": {}}
    for kw in MBDT_SETTINGS:
        cal = filtered_calibration(simulate(100, 128, 160, **kw))
        report["training"][f"seed{kw['seed']}"] = float(np.median(cal) * intensity_scale(cal))
    levels = [v for v in report["training"].values() if v > 0]
    report["level_geometric_mean"] = float(np.exp(np.mean(np.log(levels))))
    report["level_shipped"] = MBDT_BACKGROUND_LEVEL
    report["max_raise_shipped"] = MBDT_MAX_RAISE
    print("training medians", {k: round(v, 4) for k, v in report["training"].items()},
          f"geometric mean {report['level_geometric_mean']:.4f}", flush=True)
    for name, kw in {**SELECTION, **MORE_SELECTION}.items():
        sim = simulate(args.frames, 128, 160, **kw)
        cal = filtered_calibration(sim)
        s0 = intensity_scale(cal)
        row = {"median": float(np.median(cal) * s0), "rule_factor": mbdt_input_scale(cal) / s0}

        def score(pipe, scale=None):
            res = run_pipeline(sim.frames, pipe, "auto", pixel_size_um=50.0, frame_rate_hz=500.0, scale=scale)
            m = match_localisations(sim.ground_truth, res.localisations, tolerance=1.0)
            return {"f1": m.f1, "precision": m.precision, "recall": m.recall}

        row["baseline2"] = score("baseline2")
        row["cycleulm-loc"] = {f"{f:g}": score("cycleulm-loc", s0 * f) for f in FACTORS}
        row["cycleulm-loc_rule"] = score("cycleulm-loc")
        # The rule before the floor (lower only), for comparison.
        row["previous_rule_factor"] = mbdt_background_factor(row["median"], floor=0.0)
        row["cycleulm-loc_previous_rule"] = score("cycleulm-loc", s0 * row["previous_rule_factor"])
        report["selection"][name] = row
        print(name, f"median {row['median']:.3f} rule x{row['rule_factor']:.2f}",
              f"B2 {row['baseline2']['f1']:.3f}",
              {k: round(v["f1"], 3) for k, v in row["cycleulm-loc"].items()},
              f"rule {row['cycleulm-loc_rule']['f1']:.3f}",
              f"previous rule {row['cycleulm-loc_previous_rule']['f1']:.3f}", flush=True)
    report["floor"] = choose_floor(report["selection"])
    print("floor", {k: (round(v["min"], 3), round(v["mean"], 3)) for k, v in report["floor"]["candidates"].items()},
          "chosen", report["floor"]["chosen"], "shipped", MBDT_BACKGROUND_FLOOR, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
