"""How MB-DT's input convention (:func:`napari_cycleulm.intensity.mbdt_input_scale`) was chosen.

Two measurements, neither on a setting or seed of ``benchmarks/generalisation.py``:

1. **The level** (:data:`~napari_cycleulm.intensity.MBDT_BACKGROUND_LEVEL`): the
   median of each training acquisition of the shipped MB-DT
   (``scripts/train_default_weights.py``'s ``MBDT_SETTINGS``, the first 100
   frames after ``svd:auto``) once scaled by the percentile convention (99.9th
   percentile to 1); the level is their geometric mean (acquisitions whose
   median is 0, where the filter clips the background, left out).
2. **Why a level at all**: CycleULM-Loc against Baseline 2 (F1 at 1 px,
   automatic PSF, default thresholds) on the six selection settings of
   ``benchmarks/gate_selection.py`` (seeds 31-36) with MB-DT's input scale
   multiplied by fixed factors, beside the factor the rule gives.

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
from napari_cycleulm.intensity import MBDT_BACKGROUND_LEVEL, intensity_scale, mbdt_input_scale  # noqa: E402
from napari_cycleulm.evaluate.metrics import match_localisations  # noqa: E402
from napari_cycleulm.pipeline import run_pipeline  # noqa: E402
from napari_cycleulm.preprocess import clutter_filtered  # noqa: E402
from napari_cycleulm.simulate import simulate  # noqa: E402

FACTORS = (0.35, 0.5, 0.7, 1.0, 1.4)


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
    print("training medians", {k: round(v, 4) for k, v in report["training"].items()},
          f"geometric mean {report['level_geometric_mean']:.4f}", flush=True)
    for name, kw in SELECTION.items():
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
        report["selection"][name] = row
        print(name, f"median {row['median']:.3f} rule x{row['rule_factor']:.2f}",
              f"B2 {row['baseline2']['f1']:.3f}",
              {k: round(v["f1"], 3) for k, v in row["cycleulm-loc"].items()},
              f"rule {row['cycleulm-loc_rule']['f1']:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
