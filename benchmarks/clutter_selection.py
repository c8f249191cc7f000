"""Selection of the automatic SVD clutter-filter rule (``svd:auto``) on settings of its own.

For each selection setting (seeds 31-41; none is a setting or seed of
``benchmarks/generalisation.py``), the 200 simulated frames are filtered by
:func:`napari_cycleulm.preprocess.svd_clutter_filter` with fixed cut-offs
(the positive part of the filtered envelope, as the pipeline stage keeps it),
and Baseline 1 and CycleULM-Loc run on them at their defaults with the
automatic PSF and the stage itself switched off (``clutter_filter="none"``).
F1 at 1 px for every cut-off, the block's static-texture ratio and the
cut-off ``svd:auto`` chooses are written to ``--out`` (JSON), so that the two
decisions of :func:`napari_cycleulm.preprocess.auto_cutoff` (whether: the
ratio; how much: components above the median singular value) can be read
against the best fixed cut-off of each setting.

Usage::

    python benchmarks/clutter_selection.py --out docs/results/clutter_selection.json
    python benchmarks/clutter_selection.py --settings static35,thr32 --cutoffs none,2,5,10
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

from gate_selection import SETTINGS as GATE_SETTINGS
from napari_cycleulm._atomic import write_text_atomic
from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.evaluate.metrics import match_localisations
from napari_cycleulm.pipeline import run_pipeline
from napari_cycleulm.preprocess import auto_cutoff, static_texture_ratio, svd_clutter_filter
from napari_cycleulm.simulate import simulate

COMMON = dict(n_frames=200, height=160, width=160, pixel_size_um=50.0, frame_rate_hz=500.0)
#: Selection settings: the threshold selection's four (31-34), the gate selection's two (35, 36), and five more.
SETTINGS = {
    **GATE_SETTINGS,
    "motion37": dict(clutter_db=0.0, clutter_correlation=0.995, tissue_motion_px=2.0, density=30.0,
                     psf_fwhm_um=(200.0, 300.0), seed=37),
    "dense38": dict(clutter_db=-15.0, density=120.0, amplitude_spread=0.8, psf_fwhm_um=(150.0, 250.0), seed=38),
    "slow39": dict(clutter_db=-6.0, clutter_correlation=0.998, density=10.0, psf_fwhm_um=(250.0, 350.0), seed=39),
    "slow40": dict(clutter_db=6.0, clutter_correlation=0.9995, density=30.0, psf_fwhm_um=(150.0, 200.0), seed=40),
    "slow41": dict(clutter_db=-3.0, clutter_correlation=0.997, tissue_motion_px=1.0, density=20.0,
                   psf_fwhm_um=(300.0, 450.0), seed=41),
}
PIPELINES = ("cycleulm-loc", "baseline1")
CUTOFFS = ("none", "1", "2", "3", "5", "10", "20")


def score(frames, sim, pipeline: str):
    """F1, recall, precision at 1 px of one pipeline on (already filtered) frames, or the error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = run_pipeline(frames, pipeline, "auto", pixel_size_um=COMMON["pixel_size_um"],
                               frame_rate_hz=COMMON["frame_rate_hz"], clutter_filter="none")
        except CycleULMError as exc:
            return {"error": str(exc)}
    m = match_localisations(sim.ground_truth, res.localisations, tolerance=1.0)
    return {"f1": m.f1, "recall": m.recall, "precision": m.precision}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/clutter_selection.json")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--cutoffs", default=",".join(CUTOFFS))
    ap.add_argument("--pipelines", default=",".join(PIPELINES))
    args = ap.parse_args(argv)
    out: dict = {}
    for name in args.settings.split(","):
        sim = simulate(**COMMON, **SETTINGS[name])
        frames = sim.frames.astype(np.float32)
        rec = {"params": SETTINGS[name], "static_texture_ratio": static_texture_ratio(frames),
               "auto_cutoff": auto_cutoff(frames), "f1": {}}
        print(f"{name}: ratio {rec['static_texture_ratio']:.3f}, svd:auto removes {rec['auto_cutoff']}", flush=True)
        for cut in args.cutoffs.split(","):
            x = frames if cut == "none" else np.clip(
                svd_clutter_filter(frames, int(cut), return_complex=True).real, 0, None).astype(np.float32)
            for p in args.pipelines.split(","):
                t0 = time.perf_counter()
                rec["f1"][f"{cut}|{p}"] = r = score(x, sim, p)
                print(f"  cut-off {cut:>4} {p:>13}: {r} ({time.perf_counter() - t0:.0f} s)", flush=True)
        out[name] = rec
        write_text_atomic(args.out, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
