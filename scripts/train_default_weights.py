"""Train the default CycleULM weights shipped in ``src/napari_cycleulm/weights/``.

Usage::

    python scripts/train_default_weights.py                      # all three, documented settings
    python scripts/train_default_weights.py --which mblnet --steps-mblnet 8000
    python scripts/train_default_weights.py --quick              # a few steps each, into a temp dir

Settings (the reasons are in the comments next to each constant below):

* MBL-Net and MBT-Net are *generalists*: trained on synthetic MB-only data
  whose PSF is drawn per patch with sigma_y, sigma_x in 0.5-2.5 px and a
  rotation in +-0.2 rad, with 0-20 MBs per 40x40 patch (intensities
  0.1-1).  They serve any MB-only PSF inside that range; the range is
  stored in ``checkpoint.extra["sigma_range_px"]`` for the run-time check.
* MB-DT is trained on several simulated acquisitions (``simulate.simulate``)
  spanning clutter -6..-20 dB, 10-60 MBs per frame and PSF FWHMs of
  150-400 um at 50 um pixels, each with its own automatically estimated
  PSF (``psf.estimate_psf_auto``) and its organ mask as ROI: broad, not
  tuned to one setting.  It is the starting point for fine-tuning on a
  user's data (``cycleulm train mbdt`` / the training widget).

The script prints validation numbers and timings and writes a JSON report
(``docs/model_card.json`` by default; with ``--quick`` next to the weights in
the temporary folder) that becomes docs/model_card.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_cycleulm import __version__ as package_version
from napari_cycleulm._atomic import write_text_atomic
from napari_cycleulm.dl.checkpoint import load_checkpoint, save_checkpoint
from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.dl.nets import count_parameters
from napari_cycleulm.psf import PSF, estimate_psf_auto
from napari_cycleulm.roi import count_patches
from napari_cycleulm.simulate import simulate
from napari_cycleulm.simulate.mb_only import SyntheticConfig
from napari_cycleulm.train import (
    DEFAULT_GENERALIST_SIGMA_RANGE_PX,
    train_mbdt,
    train_mblnet,
    train_mbtnet,
    validate_mbdt,
    validate_mblnet,
    validate_mbtnet,
)

ROOT = Path(__file__).resolve().parents[1]

#: Generalist MB-only PSF range (per axis, pixels): see train.DEFAULT_GENERALIST_SIGMA_RANGE_PX.
SIGMA_RANGE_PX = DEFAULT_GENERALIST_SIGMA_RANGE_PX

#: Synthetic data of the generalists: 0-20 MBs per 40x40 patch (from empty
#: background to ~9 px mean spacing), intensities 0.1-1, PSF rotation +-0.2 rad
#: (ultrasound PSFs are nearly axis-aligned), speeds 0-2 px/frame.
GENERALIST_CONFIG = SyntheticConfig(sigma_range_px=SIGMA_RANGE_PX, theta_range_rad=(-0.2, 0.2))

#: MBL-Net's MB-only PSF range (per axis, pixels).  Real CEUS PSFs span about
#: 2-10 px FWHM (lambda/2 to lambda/5 pixels); MB-DT halves them, so MB-only
#: FWHMs of 1-5 px, sigmas of 0.42-2.12 px.  0.4-2.3 covers that with a margin.
MBLNET_SIGMA_RANGE_PX = ((0.4, 2.3), (0.4, 2.3))

#: MBL-Net sees MB-DT's output, never a perfectly clean image: weak Gaussian
#: noise (2 % of the brightest bubble) teaches it to ignore the faint residue
#: MB-DT leaves, and intensities down to 0.1 keep dim bubbles detectable.
MBLNET_CONFIG = SyntheticConfig(sigma_range_px=MBLNET_SIGMA_RANGE_PX, theta_range_rad=(-0.2, 0.2),
                                noise_std=0.02)

#: Default steps.  Measured on 2 CPU cores (quiet machine): MBL-Net ~0.18 s/step
#: (batch 16), MBT-Net ~1.0-1.2 s/step (batch 8), MB-DT ~0.15 s/step (batch 8).
STEPS = {"mblnet": 5000, "mbtnet": 2000, "mbdt": 3000}

#: Simulated acquisitions for MB-DT (``simulate`` keyword arguments; 50 um pixels, 500 Hz),
#: deliberately broad: CEUS PSF FWHM 2-10 px with depth dependence, residual clutter
#: -20..+3 dB from fast (0.9) to nearly static (0.999) decorrelation, tissue motion,
#: noise, 5-120 bubbles per frame and intensity spread.  None of these seeds is used by a
#: benchmark (benchmarks/generalisation.py uses 7101-7112 and another forward model).
MBDT_SETTINGS = [
    dict(clutter_db=-6.0, density=20.0, psf_fwhm_um=(200.0, 300.0), seed=101),
    dict(clutter_db=-12.0, density=40.0, psf_fwhm_um=(150.0, 250.0), seed=102),
    dict(clutter_db=-20.0, density=60.0, psf_fwhm_um=(250.0, 400.0), seed=103),
    dict(clutter_db=-12.0, density=10.0, psf_fwhm_um=(300.0, 300.0), seed=104),
    dict(clutter_db=-9.0, density=30.0, psf_fwhm_um=(200.0, 350.0), seed=105),
    dict(clutter_db=-16.0, density=25.0, psf_fwhm_um=(175.0, 225.0), seed=106),
    # small PSF (2-2.6 px), as in vivo at lambda/2 sampling
    dict(clutter_db=-10.0, density=20.0, psf_fwhm_um=(100.0, 130.0), clutter_correlation=0.95, seed=107),
    # large PSF (9-10 px) widening with depth
    dict(clutter_db=-8.0, density=15.0, psf_fwhm_um=(450.0, 500.0), depth_dependence=0.5, seed=108),
    # nearly static clutter brighter than the bubbles
    dict(clutter_db=3.0, density=20.0, psf_fwhm_um=(200.0, 300.0), clutter_correlation=0.999, seed=109),
    # fast clutter and strong noise
    dict(clutter_db=-6.0, density=30.0, psf_fwhm_um=(150.0, 250.0), clutter_correlation=0.9,
         noise_db=-12.0, seed=110),
    # tissue motion under strong clutter
    dict(clutter_db=0.0, density=30.0, psf_fwhm_um=(200.0, 350.0), clutter_correlation=0.99,
         tissue_motion_px=2.0, seed=111),
    # dense, wide intensity spread
    dict(clutter_db=-15.0, density=120.0, psf_fwhm_um=(150.0, 250.0), amplitude_spread=0.8, seed=112),
    # sparse in noise
    dict(clutter_db=-10.0, density=5.0, psf_fwhm_um=(250.0, 300.0), noise_db=-15.0, seed=113),
]
#: Held-out acquisition for MB-DT validation (not in the training set).
MBDT_VALIDATION = dict(clutter_db=-12.0, density=30.0, psf_fwhm_um=(200.0, 300.0), seed=999)

#: PSFs the generalists are validated on (MB-only sigmas, pixels).
VALIDATION_SIGMAS = [(0.5, 0.5), (1.0, 1.0), (1.0, 1.5), (1.5, 2.0), (2.5, 2.5)]
#: MBL-Net is validated over the MB-only PSFs of CEUS FWHMs 2, 4, 6, 8 and 10 px (and an anisotropic one).
MBLNET_VALIDATION_SIGMAS = [(0.425, 0.425), (0.85, 0.85), (1.27, 1.27), (1.7, 1.7), (2.12, 2.12), (0.85, 1.7)]


def _sim(setting, n_frames, size):
    h, w = size
    return simulate(n_frames, h, w, **setting)


def _log(ev, name):
    if ev.info and ev.info.get("losses") and (ev.done % 100 == 0 or ev.done == ev.total):
        losses = " ".join(f"{k}={v:.3f}" for k, v in ev.info["losses"].items())
        print(f"  {name} {ev.done}/{ev.total} {losses} ({ev.info.get('steps_per_s', 0):.2f} steps/s)",
              flush=True)


def _clean(d):
    """JSON-safe floats (NaN -> None)."""
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_clean(v) for v in d]
    if isinstance(d, float) and not np.isfinite(d):
        return None
    if isinstance(d, (np.floating, np.integer)):
        return _clean(d.item())
    return d


def train_generalist(kind, steps, out_dir, seed, quick, device, init=None, lr=None):
    fn = train_mblnet if kind == "mblnet" else train_mbtnet
    sigma_range, config, sigmas = (
        (MBLNET_SIGMA_RANGE_PX, MBLNET_CONFIG, MBLNET_VALIDATION_SIGMAS) if kind == "mblnet"
        else (SIGMA_RANGE_PX, GENERALIST_CONFIG, VALIDATION_SIGMAS)
    )
    out = out_dir / f"{kind}_default.pt"
    print(f"{kind}: {steps} steps, sigma range {sigma_range} px, init {init} -> {out}", flush=True)
    t0 = time.perf_counter()
    res = fn(sigma_range_px=sigma_range, synthetic_config=config, steps=steps,
             out=out, seed=seed, init=init, checkpoint_every=500, device=device,
             progress=lambda ev: _log(ev, kind), **({} if lr is None else {"lr": lr}))
    seconds = time.perf_counter() - t0
    validate = validate_mblnet if kind == "mblnet" else validate_mbtnet
    n = 16 if quick else (256 if kind == "mblnet" else 64)
    val = {"range": validate(res.model, sigma_range, n=n, device=device)}
    for sy, sx in sigmas:
        val[f"sigma_{sy}_{sx}"] = validate(res.model, PSF(sy, sx), n=n, device=device)
    for k, v in val.items():
        print(f"  {kind} validation {k}: " + ", ".join(
            f"{m}={x:.3f}" for m, x in v.items() if isinstance(x, float)), flush=True)
    return {
        "file": out.name, "steps": res.steps_done, "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(res.steps_done, 1), 4),
        "batch_size": res.config["batch_size"], "lr": res.config["lr"],
        "patch_size": res.config["patch_size"], "parameters": count_parameters(res.model),
        "sigma_range_px": [list(r) for r in sigma_range], "init": str(init),
        "synthetic_config": res.config["synthetic_config"],
        "final_losses": {k: float(np.mean(v[-50:])) for k, v in res.history.items() if k != "step"},
        "validation": val, "validation_seed": 12345,
    }


def train_default_mbdt(steps, out_dir, seed, quick, device, model_config=None, count_factor=None, init=None,
                       domain_b_count="measured"):
    n_frames, size = (40, (96, 96)) if quick else (200, (128, 160))
    settings = MBDT_SETTINGS[:2] if quick else MBDT_SETTINGS
    stacks, psfs, rois, data, counts = [], [], [], [], []
    t0 = time.perf_counter()
    for s in settings:
        sim = _sim(s, n_frames, size)
        try:
            est = estimate_psf_auto(sim.frames)
            psf_source = "automatic"
        except CycleULMError:  # too few isolated bubbles (strong clutter): the simulator's PSF, as a user's clicks would give
            m = sim.metadata
            est = None
            psf_source = "simulator (automatic estimate failed)"
        roi = sim.organ_mask
        if count_patches(roi, 40) < 50:  # organ too small for varied patches: whole frame
            roi = None
        stacks.append(sim.frames)
        psfs.append(est.psf if est is not None else PSF(m["psf_sigma_y_px"], m["psf_sigma_x_px"]))
        rois.append(roi if roi is not None else np.ones(sim.frames.shape[1:], bool))
        # The simulator's true density (bubbles per 40 x 40 patch of the ROI): domain B uncapped
        # by the conventional detector.  Positions are never used.
        true_count = sim.metadata["mean_bubbles_per_frame"] * 40 ** 2 / float(rois[-1].sum())
        counts.append(true_count if domain_b_count == "true" else None)
        data.append({
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()},
            "frames": list(sim.frames.shape),
            "psf_source": psf_source,
            "psf_fwhm_px_used": [round(psfs[-1].fwhm_y_px, 3), round(psfs[-1].fwhm_x_px, 3)],
            "true_psf_fwhm_px": [round(sim.metadata["psf_fwhm_y_px"], 3),
                                 round(sim.metadata["psf_fwhm_x_px"], 3)],
            "psf_bubbles": None if est is None else est.n_used, "roi": "organ mask" if roi is not None else "whole frame",
        })
    sim_seconds = time.perf_counter() - t0
    out = out_dir / "mbdt_default.pt"
    print(f"mbdt: {steps} steps on {len(stacks)} simulated stacks ({sim_seconds:.0f} s to "
          f"simulate) -> {out}", flush=True)
    t0 = time.perf_counter()
    res = train_mbdt(stacks, psfs, roi_mask=rois, init=init, steps=steps, out=out, seed=seed,
                     model_config=model_config,
                     **({} if count_factor is None else {"domain_b_count_factor": count_factor}),
                     domain_b_counts=counts,
                     checkpoint_every=500, preview_every=None, device=device,
                     progress=lambda ev: _log(ev, "mbdt"))
    seconds = time.perf_counter() - t0
    vsim = _sim(MBDT_VALIDATION, 30 if quick else 100, size)
    vpsf = estimate_psf_auto(vsim.frames).psf
    val = validate_mbdt(res.model, vsim.frames, vpsf, vsim.ground_truth,
                        max_frames=10 if quick else 50, device=device)
    print("  mbdt validation: " + ", ".join(
        f"{k}={v:.3f}" for k, v in val.items() if isinstance(v, float)), flush=True)
    return {
        "file": out.name, "steps": res.steps_done, "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(res.steps_done, 1), 4),
        "simulation_seconds": round(sim_seconds, 1),
        "batch_size": res.config["batch_size"], "lr": res.config["lr"],
        "patch_size": res.config["patch_size"], "parameters": count_parameters(res.model),
        "parameters_g_ab": count_parameters(res.model.g_ab), "architecture": res.model.config,
        "training_data": data,
        "final_losses": {k: float(np.mean(v[-50:])) for k, v in res.history.items() if k != "step"},
        "validation": {"setting": {k: (list(v) if isinstance(v, tuple) else v)
                                   for k, v in MBDT_VALIDATION.items()}, **val},
    }


def ship(checkpoint: Path, out_dir: Path) -> Path:
    """Copy a trained checkpoint into ``out_dir`` as ``<kind>_default.pt`` without its optimiser state.

    The optimiser state (Adam: two tensors per weight) doubles the file and is
    only needed to resume training; the weights, configuration, PSF range and
    training record are kept.
    """
    ck = load_checkpoint(checkpoint)
    dst = out_dir / f"{ck.kind}_default.pt"
    save_checkpoint(dst, ck.model, kind=ck.kind, config=ck.config, step=ck.step, psf=ck.psf, extra=ck.extra)
    print(f"shipped {checkpoint} -> {dst} ({dst.stat().st_size / 1e6:.1f} MB)")
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--which", nargs="+", choices=("mbdt", "mblnet", "mbtnet"),
                    default=["mblnet", "mbtnet", "mbdt"])
    for k in ("mbdt", "mblnet", "mbtnet"):
        ap.add_argument(f"--steps-{k}", type=int, default=None,
                        help=f"training steps of {k} (default {STEPS[k]}; 3 with --quick)")
    ap.add_argument("--out", type=Path, default=None,
                    help="weights folder (default src/napari_cycleulm/weights; a temp dir with --quick)")
    ap.add_argument("--report", type=Path, default=None,
                    help="JSON report (default docs/model_card.json; <out>/model_card.json with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count-factor", type=float, default=None,
                    help="MB-DT domain-B bubbles relative to the data's measured count (default: the trainer's)")
    ap.add_argument("--domain-b-count", choices=("measured", "true"), default="measured",
                    help="MB-DT domain-B bubbles per patch: measured on each stack by thresholding + NCC "
                         "(what fine-tuning on a user's data does) or the simulator's true density (uncapped)")
    ap.add_argument("--mbdt-config", type=json.loads, default=None,
                    help='MB-DT architecture as JSON, e.g. \'{"output_activation": "none"}\' (default: MBDT())')
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ap.add_argument("--quick", action="store_true", help="a few steps of each, for testing")
    ap.add_argument("--init", default=None,
                    help="start from 'default' (the shipped weights) or a checkpoint (default: scratch)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate of MBL-Net / MBT-Net (default: the trainer's)")
    ap.add_argument("--ship", type=Path, nargs="+", default=None, metavar="CHECKPOINT",
                    help="only copy these trained checkpoints into --out without optimiser state")
    args = ap.parse_args(argv)
    if args.ship:
        out = args.out or ROOT / "src" / "napari_cycleulm" / "weights"
        for ck in args.ship:
            ship(ck, out)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="cycleulm_weights_")) if args.quick else (
            ROOT / "src" / "napari_cycleulm" / "weights")
    if args.report is None:
        args.report = args.out / "model_card.json" if args.quick else ROOT / "docs" / "model_card.json"
    args.out.mkdir(parents=True, exist_ok=True)

    report = {
        "package_version": package_version, "quick": args.quick, "seed": args.seed,
        "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "device": args.device, "networks": {},
    }
    if args.report.is_file() and not args.quick:
        # Keep the entries of networks not retrained in this run.
        try:
            report["networks"] = json.loads(args.report.read_text())["networks"]
        except (ValueError, KeyError):
            pass
    t_all = time.perf_counter()
    for kind in args.which:
        steps = getattr(args, f"steps_{kind}") or (3 if args.quick else STEPS[kind])
        if kind == "mbdt":
            report["networks"][kind] = train_default_mbdt(steps, args.out, args.seed, args.quick,
                                                          args.device, args.mbdt_config, args.count_factor,
                                                          args.init, args.domain_b_count)
        else:
            report["networks"][kind] = train_generalist(kind, steps, args.out, args.seed,
                                                        args.quick, args.device, args.init, args.lr)
        # Written after every network, so a long run that is stopped keeps what it finished.
        report["total_seconds"] = round(time.perf_counter() - t_all, 1)
        write_text_atomic(args.report, json.dumps(_clean(report), indent=1) + "\n")
    print(f"weights in {args.out}; report {args.report} ({report['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
