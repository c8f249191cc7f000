"""Explicit tracks: the Kalman linker against the motion-prior linker (issue 11).

The paper (section 2) proposes decoding tracks from MBL-Net detections with
the motion priors MBT-Net predicts.  On simulated acquisitions, sparse and
dense with fast flow, this script links the *same* detections three ways:

* ``kalman``: :func:`napari_cycleulm.track.track`, constant-velocity Kalman
  prediction (the pipelines' linker);
* ``prior_true``: the same linker with a motion prior from the true velocity
  field (mean ground-truth ``vy, vx`` per SR pixel,
  :func:`~napari_cycleulm.track.motion_prior.velocity_field_from_tracks`): what a
  perfect prior would give;
* ``prior_mbtnet``: with the mean velocity maps MBT-Net predicts on the
  MB-DT output of the same acquisition (shipped weights, MB-DT + spatial
  gate as in the pipelines, :class:`~napari_cycleulm.render.e2e.E2EAccumulator`).

Detections are (1) the ground-truth positions with Gaussian noise and a
fraction of them dropped (``gt_noisy``), and (2) the localisations of the
``cycleulm-loc`` pipeline (MB-DT + MBL-Net, default settings; unless
``--no-pipeline``).  Every linker uses the same parameters
(``max_distance = 1.2 * fastest speed + 0.5`` px/frame, ``min_length = 2`` so
that every link is scored, other parameters at their defaults, ``prior_noise``
from ``--prior-noise``).  Scores (:func:`napari_cycleulm.evaluate.track_metrics.score_tracks`,
tolerance 1 px): fraction of true links recovered (of all true links and of
those whose two points were detected), fraction of false links, and the
track length distribution.  The priors' own error (RMSE against the true
velocity at the true positions, and coverage) is reported too.

Usage::

    python benchmarks/track_decoder.py --out docs/results
    python benchmarks/track_decoder.py --settings dense --no-pipeline
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from napari_cycleulm._atomic import write_text_atomic
from napari_cycleulm._json import jsonable
from napari_cycleulm.track.motion_prior import VelocityPrior, velocity_field_from_tracks
from napari_cycleulm.simulate import simulate
from napari_cycleulm.io.tables import Localisations
from napari_cycleulm.track import track
from napari_cycleulm.evaluate.track_metrics import score_tracks

#: Simulation settings: mean bubbles per frame and the speed range (mm/s; 500 Hz, 50 um pixels).
SETTINGS = {
    "sparse": dict(density=10.0, speed_range_mm_s=(1.0, 25.0)),
    "dense": dict(density=150.0, speed_range_mm_s=(1.0, 75.0)),
}


def noisy_detections(gt, noise_px: float, drop: float, seed: int) -> Localisations:
    """Ground-truth positions with N(0, noise_px) errors per axis, a fraction ``drop`` removed."""
    rng = np.random.default_rng(seed)
    keep = rng.random(len(gt)) >= drop
    g = gt.select(keep)
    return Localisations(dict(frame=g["frame"], y=g["y"] + rng.normal(0, noise_px, len(g)),
                              x=g["x"] + rng.normal(0, noise_px, len(g))))


def mbtnet_velocity(sim, psf) -> tuple[np.ndarray, np.ndarray, float]:
    """MBT-Net mean velocity maps (x4 grid) on MB-DT's output, as the E2E pipeline makes it."""
    from napari_cycleulm.render.e2e import E2EAccumulator
    from napari_cycleulm.dl.models import load_model
    from napari_cycleulm.preprocess.evidence_gate import DEFAULT_GATE
    from napari_cycleulm.dl.mbdt_inference import iter_translate

    t0 = time.perf_counter()
    mbtnet = load_model("mbtnet", "default")
    acc = E2EAccumulator(sim.frames.shape[1:], 4)
    for _, _, mb in iter_translate(sim.frames, "default", gate=DEFAULT_GATE, psf=psf):
        acc.add(mb, mbtnet)
    vy, vx = acc.mean_velocity()
    return vy, vx, time.perf_counter() - t0


def prior_error(prior, gt) -> dict:
    """RMSE (px/frame) of the prior's velocity against the true one at the true positions."""
    vy, vx = prior(gt["frame"], gt["y"], gt["x"])
    ok = np.isfinite(vy) & np.isfinite(vx)
    err = np.hypot(vy[ok] - gt["vy"][ok], vx[ok] - gt["vx"][ok])
    rms_speed = float(np.sqrt(np.mean(gt["vy"] ** 2 + gt["vx"] ** 2)))
    return {"coverage": float(ok.mean()), "rmse_px_per_frame": float(np.sqrt(np.mean(err**2))) if ok.any() else None,
            "rms_speed_px_per_frame": rms_speed}


def run_setting(name: str, args) -> dict:
    cfg = SETTINGS[name]
    t0 = time.perf_counter()
    sim = simulate(n_frames=args.frames, height=args.height, width=args.width, seed=args.seed, **cfg)
    meta = sim.metadata
    gt = sim.ground_truth
    vmax = meta["speed_range_px_per_frame"][1]
    params = dict(max_distance=round(1.2 * vmax + 0.5, 3), min_length=2)
    out = {"simulation": {**cfg, "n_frames": args.frames, "height": args.height, "width": args.width,
                          "seed": args.seed, "mean_bubbles_per_frame": meta["mean_bubbles_per_frame"],
                          "max_speed_px_per_frame": vmax, "seconds": time.perf_counter() - t0},
           "linker_params": {**params, "prior_noise": args.prior_noise}}
    shape = sim.frames.shape[1:]
    true_vy, true_vx = velocity_field_from_tracks(gt, shape, 4)
    priors = {"prior_true": VelocityPrior(true_vy, true_vx, 4, fill_sigma=2.0)}
    detections = {"gt_noisy": noisy_detections(gt, args.noise_px, args.drop, args.seed + 1)}
    out["detections"] = {"gt_noisy": {"noise_px": args.noise_px, "drop": args.drop}}
    if not args.no_pipeline:
        from napari_cycleulm.pipeline import iter_pipeline
        from napari_cycleulm.progress import drive
        from napari_cycleulm.psf import estimate_psf_auto

        psf = estimate_psf_auto(sim.frames, pixel_size_um=meta["pixel_size_um"]).psf
        vy, vx, sec = mbtnet_velocity(sim, psf)
        priors["prior_mbtnet"] = VelocityPrior(vy, vx, 4)
        out["mbtnet_seconds"] = sec
        t1 = time.perf_counter()
        res = drive(iter_pipeline(sim.frames, "cycleulm-loc", psf))
        locs = res.localisations
        detections["cycleulm-loc"] = Localisations({k: locs[k] for k in locs.names if k not in ("track_id", "vy", "vx")})
        out["detections"]["cycleulm-loc"] = {"n": len(locs), "seconds": time.perf_counter() - t1}
    out["prior_error"] = {k: prior_error(p, gt) for k, p in priors.items()}
    rows = []
    for dname, det in detections.items():
        for lname, prior in [("kalman", None)] + list(priors.items()):
            kw = {} if prior is None else dict(motion_prior=prior, prior_noise=args.prior_noise)
            t1 = time.perf_counter()
            tracks = track(det, **params, **kw)
            sec = time.perf_counter() - t1
            score = score_tracks(gt, tracks, args.tolerance).to_dict()
            rows.append({"detections": dname, "linker": lname, "seconds": sec, **score})
            print(f"{name:6s} {dname:12s} {lname:12s} true links {score['true_link_fraction']:.4f} "
                  f"(of detected {score['true_link_fraction_detected']:.4f})  false links "
                  f"{score['false_link_fraction']:.4f}  mean length {score['track_length']['mean']:.2f} "
                  f"(true {score['true_track_length']['mean']:.2f})  {sec:.1f} s", flush=True)
    out["results"] = rows
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/track_decoder")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seed", type=int, default=2027)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--noise-px", type=float, default=0.2, help="localisation error of gt_noisy, px per axis")
    ap.add_argument("--drop", type=float, default=0.1, help="fraction of true positions missed in gt_noisy")
    ap.add_argument("--prior-noise", type=float, default=0.5, help="Linker prior_noise, px/frame")
    ap.add_argument("--tolerance", type=float, default=1.0, help="matching radius, px")
    ap.add_argument("--no-pipeline", action="store_true",
                    help="skip MB-DT/MBL-Net detections and the MBT-Net prior (ground-truth detections only)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": "python benchmarks/track_decoder.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "settings": {}}
    for name in args.settings:
        report["settings"][name] = run_setting(name, args)
    path = out / "track_decoder.json"
    write_text_atomic(path, json.dumps(jsonable(report, nonfinite="string"), indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
