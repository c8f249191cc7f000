"""Choose the localisation thresholds of the pipelines on several simulated settings.

For each setting (clutter level, bubble density, PSF size; seeds that no
accuracy report uses), each pipeline runs once at a low threshold and its
localisations are cut at a range of score thresholds, scoring F1 at a 1 px
tolerance.  A default is defensible when it is near the best F1 on *every*
setting, not just on one; the table shows how much F1 each candidate loses
against each setting's best.

Usage::

    python benchmarks/thresholds.py --pipelines cycleulm-ncc cycleulm-decon cycleulm-loc \
        [--frames 100] [--out bench_out/thresholds]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from napari_cycleulm.evaluate.metrics import match_localisations
from napari_cycleulm.pipeline import PIPELINES, iter_pipeline
from napari_cycleulm.progress import drive
from napari_cycleulm.psf import estimate_psf_auto
from napari_cycleulm.simulate import simulate

#: (clutter dB, MBs per frame, PSF FWHM (axial, lateral) um, seed): weak to strong
#: clutter, sparse to dense, small to large PSF.  Seeds differ from the training
#: (101-106, 999), accuracy (2026) and MB-DT benchmark (2027) seeds.
SETTINGS = [
    dict(clutter_db=-6.0, density=10.0, psf_fwhm_um=(200.0, 300.0), seed=31),
    dict(clutter_db=-12.0, density=20.0, psf_fwhm_um=(150.0, 250.0), seed=32),
    dict(clutter_db=-12.0, density=40.0, psf_fwhm_um=(250.0, 350.0), seed=33),
    dict(clutter_db=-20.0, density=30.0, psf_fwhm_um=(300.0, 400.0), seed=34),
]

#: With ``--with-gate-settings``: the two further selection settings of benchmarks/gate_selection.py
#: (nearly static 0 dB clutter; 3 bubbles per frame in -10 dB noise), so that thresholds and gate
#: are chosen on the same six settings.
GATE_SETTINGS = [
    dict(clutter_db=0.0, clutter_correlation=0.999, density=20.0, psf_fwhm_um=(200.0, 300.0), seed=35),
    dict(clutter_db=-10.0, noise_db=-10.0, density=3.0, psf_fwhm_um=(250.0, 250.0), seed=36),
]


def candidates(base: float) -> np.ndarray:
    return np.unique(np.round(np.geomspace(base / 4, base * 2, 10), 4))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipelines", nargs="+", default=["cycleulm-ncc", "cycleulm-decon", "cycleulm-loc"],
                    choices=[p for p in sorted(PIPELINES) if PIPELINES[p].localise != "e2e"])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", type=int, nargs=2, default=(128, 160))
    ap.add_argument("--tolerance", type=float, default=1.0)
    ap.add_argument("--out", default="bench_out/thresholds")
    ap.add_argument("--with-gate-settings", action="store_true",
                    help="also the two further selection settings of gate_selection.py (seeds 35, 36)")
    ap.add_argument("--candidates", type=float, nargs="+", default=None,
                    help="thresholds to try (default: a geometric grid around each pipeline's default)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table: dict[str, list] = {p: [] for p in args.pipelines}
    for setting in SETTINGS + (GATE_SETTINGS if args.with_gate_settings else []):
        clutter, density, fwhm, seed = (setting["clutter_db"], setting["density"], setting["psf_fwhm_um"],
                                        setting["seed"])
        sim = simulate(args.frames, *args.size, **setting)
        psf = estimate_psf_auto(sim.frames).psf
        for name in args.pipelines:
            ths = (np.asarray(sorted(args.candidates)) if args.candidates
                   else candidates(PIPELINES[name].threshold))
            t0 = time.perf_counter()
            res = drive(iter_pipeline(sim.frames, name, psf, threshold=float(ths[0]), block_size=100))
            locs = res.localisations
            f1 = [match_localisations(sim.ground_truth, locs.select(locs["score"] > t),
                                      tolerance=args.tolerance).f1 for t in ths]
            table[name].append({"setting": [clutter, density, list(fwhm), seed],
                                "thresholds": ths.tolist(), "f1": f1})
            best = int(np.nanargmax(f1))
            print(f"{name:>15} clutter {clutter:5.0f} dB, {density:3.0f}/frame, FWHM {fwhm}: best F1 "
                  f"{f1[best]:.3f} at {ths[best]:.3g}; at default {PIPELINES[name].threshold}: "
                  f"{np.interp(PIPELINES[name].threshold, ths, f1):.3f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    summary = {}
    for name, rows in table.items():
        ths = np.array(rows[0]["thresholds"])
        f1 = np.array([r["f1"] for r in rows])  # settings x thresholds
        loss = f1.max(axis=1, keepdims=True) - f1
        k = int(np.argmin(loss.max(axis=0)))  # the threshold whose worst loss is smallest
        summary[name] = {"thresholds": ths.tolist(), "mean_f1": f1.mean(axis=0).tolist(),
                         "worst_loss": loss.max(axis=0).tolist(), "minimax_threshold": float(ths[k]),
                         "current_default": PIPELINES[name].threshold}
        print(f"\n{name}: threshold / mean F1 / worst loss against each setting's best")
        for t, m, w in zip(ths, f1.mean(axis=0), loss.max(axis=0)):
            print(f"  {t:8.4g}  {m:.3f}  {w:.3f}")
        print(f"  -> minimax threshold {ths[k]:.4g} (default now {PIPELINES[name].threshold})")
    (out / "thresholds.json").write_text(json.dumps({"settings": SETTINGS, "table": table,
                                                     "summary": summary}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
