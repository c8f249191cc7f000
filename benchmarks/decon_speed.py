"""Deconvolution localisation: speed and detections before and after the speed-up (issue 13).

Builds 511 x 659 frames with the simulator as ``bench_stages.py`` does (the
``benchmark`` preset, 100 bubbles per frame, seed 11), prepares them as the two
pipelines that deconvolve do, and localises them with the reference copy of
the previous implementation (``localise/decon.py`` of commit d6a0f92, read from git) and with the
current ``localise_decon``, through the same call the pipelines make
(:func:`napari_cycleulm.stages.localise_block`: the pipeline's threshold,
absolute, default solver settings):

* ``baseline2``: frames scaled by the run's intensity scale, Bradley-Roth
  adaptive thresholding with the CEUS PSF, deconvolution with that PSF.
* ``cycleulm-decon``: MB-DT (shipped weights) on the scaled frames, gated by the
  pipeline's evidence gate, deconvolution with the MB-only PSF.

Old and new run alternately ``--repeats`` times on the same frames; the best
time of each is reported (the machine is shared).  Detections are compared
frame by frame with a one-to-one (Hungarian) matching: the fraction of the old
detections with a new one within 0.1 px, and the ratio of the counts.

Usage::

    nice -n 10 python benchmarks/decon_speed.py                  # 16 frames, torch's default threads
    nice -n 10 python benchmarks/decon_speed.py --threads 1      # one CPU thread
    python benchmarks/decon_speed.py --device cuda               # on a GPU machine

Writes ``docs/results/decon_speed.json`` (``--out``; one entry per device and thread count).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
MATCH_PX = 0.1


def pipeline_inputs(n_frames: int, device: str | None) -> dict:
    """``{pipeline: (frames, psf, threshold)}`` as each pipeline hands them to the localiser."""
    from napari_cycleulm.pipeline import PIPELINES
    from napari_cycleulm.preprocess import adaptive_threshold
    from napari_cycleulm.psf import PSF
    from napari_cycleulm.simulate import PRESETS, simulate
    from napari_cycleulm.stages import run_scale
    from napari_cycleulm.preprocess.evidence_gate import block_gate
    from napari_cycleulm.dl.mbdt_inference import translate

    sim = simulate(seed=11, **dict(PRESETS["benchmark"], n_frames=n_frames, density=100.0))
    raw = sim.frames
    psf = PSF(sigma_y_px=float(sim.metadata["psf_sigma_y_px"]),
              sigma_x_px=float(sim.metadata["psf_sigma_x_px"]))
    scale = run_scale(raw)
    block = (raw * np.float32(scale)).astype(np.float32)
    kw = {} if device is None else {"device": device}
    out = {}
    spec = PIPELINES["baseline2"]
    out["baseline2"] = (adaptive_threshold(block, psf=psf, **kw), psf, spec.threshold)
    spec = PIPELINES["cycleulm-decon"]
    mb = translate(block, "default", scale=1.0, **kw)
    gate = block_gate(raw, block, 0, len(raw), scale=scale, psf=psf, mode=spec.gate)
    if gate is not None:
        mb = mb * gate
    out["cycleulm-decon"] = (mb.astype(np.float32), psf.mbonly(), spec.threshold)
    return out


def agreement(old, new, tol_px: float = MATCH_PX) -> dict:
    """Matched fraction (one-to-one, within ``tol_px``) of ``old`` in ``new``, and the count ratio."""
    from napari_cycleulm.evaluate.metrics import match_localisations

    matched = match_localisations(old, new, tolerance=tol_px).tp if len(old) and len(new) else 0
    n_old, n_new = len(old), len(new)
    return {
        "old_detections": n_old,
        "new_detections": n_new,
        "matched_within_0.1px": matched,
        "matched_fraction": matched / max(n_old, 1),
        "count_ratio": n_new / max(n_old, 1),
        "count_difference_fraction": abs(n_new - n_old) / max(n_old, 1),
    }


#: The commit whose ``localise/decon.py`` is the "before" of the comparison.
REFERENCE_COMMIT = "d6a0f92"


def reference_module(commit: str):
    """``localise/decon.py`` as it was at ``commit``, read from git and imported as a module.

    Its relative imports are made absolute so that it runs against the
    installed package; nothing else is changed.
    """
    import importlib.util
    import subprocess
    import tempfile

    src = subprocess.run(["git", "show", f"{commit}:src/napari_cycleulm/localise/decon.py"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    src = src.replace("from ..", "from napari_cycleulm.").replace("from ._", "from napari_cycleulm.localise._")
    src = src.replace("from .peaks", "from napari_cycleulm.localise.peaks")
    path = Path(tempfile.mkdtemp(prefix="decon_ref_")) / "decon_reference.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("decon_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=16, help="511x659 frames per pipeline")
    ap.add_argument("--repeats", type=int, default=2, help="alternating old/new runs; the best time counts")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default=None, help="torch device (default: CUDA when available)")
    ap.add_argument("--out", type=Path, default=ROOT.parent / "docs" / "results" / "decon_speed.json")
    args = ap.parse_args(argv)

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    reference = reference_module(REFERENCE_COMMIT)

    from napari_cycleulm.stages import localise_block

    def run_old(frames, psf, threshold):
        kw = {} if args.device is None else {"device": args.device}
        return reference.localise_decon(frames, psf, threshold=threshold, absolute_threshold=True, **kw)

    def run_new(frames, psf, threshold):
        return localise_block(frames, "decon", psf, threshold=threshold, device=args.device)

    inputs = pipeline_inputs(args.frames, args.device)
    results = {}
    for name, (frames, psf, threshold) in inputs.items():
        times = {"old": [], "new": []}
        locs = {}
        for _ in range(args.repeats):
            for which, fn in (("old", run_old), ("new", run_new)):
                t0 = time.perf_counter()
                locs[which] = fn(frames, psf, threshold)
                times[which].append(time.perf_counter() - t0)
        best = {k: min(v) for k, v in times.items()}
        results[name] = {
            "frames": int(len(frames)),
            "shape": list(frames.shape[1:]),
            "threshold": threshold,
            "nonzero_pixel_fraction": float((frames != 0).mean()),
            "seconds_old": times["old"],
            "seconds_new": times["new"],
            "fps_old": len(frames) / best["old"],
            "fps_new": len(frames) / best["new"],
            "speedup": best["old"] / best["new"],
            **agreement(locs["old"], locs["new"]),
        }
        r = results[name]
        print(f"{name:15s} old {r['fps_old']:.2f} fps  new {r['fps_new']:.2f} fps  x{r['speedup']:.2f}  "
              f"matched {r['matched_fraction']:.4f}  count ratio {r['count_ratio']:.4f} "
              f"({r['old_detections']} -> {r['new_detections']})", flush=True)
    device = str(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run = {
        "command": "python benchmarks/decon_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "frames_per_pipeline": args.frames,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "machine": platform.processor() or platform.machine(),
        "match_tolerance_px": MATCH_PX,
        "pipelines": results,
    }
    # One file for all runs: each (device, thread count) replaces its own entry.
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report.setdefault("runs", {})[f"{device}, {torch.get_num_threads()} threads"] = run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return run


if __name__ == "__main__":
    main()
