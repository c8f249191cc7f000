"""Generalisation benchmark: every pipeline on acquisitions no network was trained on.

Each setting is one simulated acquisition (200 frames of 160 x 160, 50 um
pixels, 500 Hz unless the setting says otherwise) with its own seed (7101 and
up, used nowhere else in the project: not for training, not for choosing a
default).  Together they span CEUS PSFs of about 2-13 px FWHM (with depth
dependence), residual clutter from -20 to +12 dB with frame-to-frame
correlation from 0.9 to 0.999 or slowly drifting, tissue motion, noise,
3-150 bubbles per frame and intensity spread; several lie outside the ranges
the shipped networks were trained on, and two use the simulator's second
forward model (``clutter_model="lowrank"`` and a PSF shape other than the
default), see :data:`SETTINGS`.

For each setting, like a user with no ground truth (automatic PSF from the
first frames, default thresholds; never a threshold chosen with the truth):

1. the five localising pipelines (baseline1, baseline2, cycleulm-ncc,
   cycleulm-decon, cycleulm-loc) with the shipped weights (or ``--mbdt`` /
   ``--mblnet``) are scored against the ground truth: recall, precision and
   F1 at a 1 px tolerance (``metrics.match_localisations``);
2. the SR density maps of every pipeline run (cycleulm-e2e included) are
   compared with the ground-truth map: RMSE (``metrics.rmse``, both maps
   normalised to their maximum, as ``benchmarks/accuracy.py``) and *spill*,
   the fraction of the map's intensity outside the true vessel mask dilated
   by one CEUS pixel;
3. MB-DT's effect on the maximum intensity projection (MIP): contrast CNR
   ``20 log10(|mu_s - mu_b| / sigma_b)`` (the headline) and ratio CNR
   ``20 log10(mu_s / mu_b)`` beside it (``metrics.cnr_db``), with the vessel
   mask as signal and the organ minus the vessels dilated by the true lateral
   FWHM as background (as ``benchmarks/networks.py``); and the FWHM measured
   by one estimator on the CEUS frames and on the MB-only frames alike
   (:func:`triggered_fwhm`: the power average of ``psf.estimate_psf``, at the
   same isolated ground-truth bubbles, without its per-bubble screening,
   which rejects every bubble under strong clutter);
4. with ``--finetune-steps N``: MB-DT is fine-tuned on the setting's own
   frames (``train.train_mbdt(frames, psf, init=..., steps=N)``, label-free,
   automatic PSF) and steps 1-3 are repeated for the CycleULM pipelines with
   the fine-tuned model.

When the automatic PSF fails on a setting, that is the setting's result: the
pipelines that need a PSF are recorded as failed (F1 counted as 0 in the
means) and the fine-tune is skipped; ``--true-psf`` gives every pipeline the
simulation's PSF instead (a Gaussian with the true FWHMs), to separate PSF
estimation from the rest.

Outputs (``--out DIR``): ``generalisation.json`` (every number, written
atomically after each setting, so a stopped run keeps what it finished, and
``--resume`` skips the settings already there) and ``generalisation.md``
(one table per metric: settings as rows, pipelines as columns, the mean row
and the ratio CycleULM-Loc / Baseline 2).

Usage::

    python benchmarks/generalisation.py --out /tmp/gen_shipped
    python benchmarks/generalisation.py --out /tmp/gen_shipped --resume
    python benchmarks/generalisation.py --out /tmp/gen_ft --finetune-steps 2000 --settings lowrank-sparse-gauss
    python benchmarks/generalisation.py --out /tmp/gen_new --mbdt new_mbdt.pt --mblnet new_mblnet.pt
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from accuracy import ground_truth_map
from networks import contrast
from napari_cycleulm._atomic import write_text_atomic
from napari_cycleulm._json import jsonable
from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.evaluate.metrics import fwhm, map_correlation, match_localisations, rmse
from napari_cycleulm.pipeline import CALIBRATION_FRAMES, run_pipeline
from napari_cycleulm.preprocess.clutter_filter import DEFAULT_CLUTTER_FILTER, clutter_filtered
from napari_cycleulm.psf import PSF, bubble_patches, estimate_psf_auto
from napari_cycleulm.simulate import isolated_positions, simulate
from napari_cycleulm.dl.mbdt_inference import iter_translate, translate
from napari_cycleulm.preprocess.evidence_gate import DEFAULT_GATE

#: Pipelines scored on localisations (F1 at 1 px).
LOCALISING = ("baseline1", "baseline2", "cycleulm-ncc", "cycleulm-decon", "cycleulm-loc")
#: All pipelines run by default (cycleulm-e2e: SR maps only).
PIPELINES = LOCALISING + ("cycleulm-e2e",)
#: Pipelines that use MB-DT (rerun after fine-tuning).
MBDT_PIPELINES = ("cycleulm-ncc", "cycleulm-decon", "cycleulm-loc", "cycleulm-e2e")
#: Simulation parameters every setting shares unless it overrides them.
COMMON = dict(n_frames=200, height=160, width=160, pixel_size_um=50.0, frame_rate_hz=500.0)
TOLERANCE_PX = 1.0
UPSAMPLING = 4
#: Dilation of the true vessel mask (CEUS pixels) outside which SR map intensity is spill.
SPILL_DILATION_PX = 1
#: Gaussian (SR pixels) smoothing both maps before their correlation: half a CEUS
#: pixel, the map analogue of the 1 px matching tolerance of the F1.
MAP_CORRELATION_SIGMA_SR_PX = UPSAMPLING / 2

#: The ranges issue 10 asks the shipped networks to be trained over; a setting
#: outside them says so in ``outside``.
TRAINING_RANGES = {"psf_fwhm_px": (2.0, 10.0), "clutter_db": (-20.0, 10.0),
                   "clutter_correlation": (0.9, 0.999), "density": (5.0, 150.0)}


@dataclass(frozen=True)
class Setting:
    """One simulated acquisition of the benchmark.

    Attributes
    ----------
    name : str
        Short identifier (``--settings``).
    seed : int
        Simulation seed, used nowhere else in the project.
    reason : str
        What the setting tests, in one line.
    params : dict
        Keyword arguments of :func:`napari_cycleulm.simulate.simulate` on top of :data:`COMMON`.
    outside : str
        Which part lies outside :data:`TRAINING_RANGES` or the training forward model ("" if none).
    """

    name: str
    seed: int
    reason: str
    params: dict = field(default_factory=dict)
    outside: str = ""

    def simulate_kwargs(self, n_frames: int | None = None) -> dict:
        kw = {**COMMON, **self.params, "seed": self.seed}
        if n_frames is not None:
            kw["n_frames"] = n_frames
        return kw


#: The settings (PSF FWHMs are axial x lateral at mid depth; 50 um pixels unless stated;
#: clutter in dB relative to the mean bubble amplitude, about 1 dB above the median at the default spread).
SETTINGS: list[Setting] = [
    Setting("nominal", 7101,
            "the simulator's defaults (4 x 6 px PSF, -12 dB clutter, 20/frame): the reference every pipeline should handle",
            dict(density=20.0)),
    Setting("invivo-small-psf", 7102,
            "the in vivo PSF of the issue (2.5 x 3.9 px) with sparse bubbles and slow clutter",
            dict(psf_fwhm_um=(125.0, 195.0), density=10.0, clutter_db=-15.0, clutter_correlation=0.99)),
    Setting("large-psf-deep", 7103,
            "a wide PSF (8 x 10 px at mid depth) that widens strongly with depth (beyond 12 px at the bottom)",
            dict(psf_fwhm_um=(400.0, 500.0), depth_dependence=0.8, density=15.0)),
    Setting("static-strong-clutter", 7104,
            "nearly static clutter (correlation 0.999) as bright as the mean bubble (0 dB): time separates them",
            dict(clutter_db=0.0, clutter_correlation=0.999, density=20.0)),
    Setting("fast-clutter-noise", 7105,
            "fast-decorrelating clutter (0.9) and strong noise (-12 dB), small PSF (3 x 5 px), 30/frame",
            dict(psf_fwhm_um=(150.0, 250.0), clutter_db=-6.0, clutter_correlation=0.9, noise_db=-12.0,
                 density=30.0)),
    Setting("tissue-motion", 7106,
            "3 px tissue motion moving clutter as strong as the bubbles (0 dB), 40/frame",
            dict(psf_fwhm_um=(200.0, 350.0), clutter_db=0.0, clutter_correlation=0.995, tissue_motion_px=3.0,
                 density=40.0)),
    Setting("dense-spread", 7107,
            "150 bubbles per frame with a wide intensity spread (log sigma 1.0), 3 x 5 px PSF, weak clutter",
            dict(psf_fwhm_um=(150.0, 250.0), clutter_db=-20.0, density=150.0, amplitude_spread=1.0)),
    Setting("lowrank-sparse-gauss", 7108,
            "the issue's failure case from another forward model: sparse bubbles (8/frame) over slowly evolving "
            "low-rank clutter (-6 dB), Gaussian PSF without side lobes or modulation (3 x 4.5 px)",
            dict(clutter_model="lowrank", clutter_timescale_frames=300.0, clutter_db=-6.0, psf_shape="gauss",
                 psf_fwhm_um=(150.0, 225.0), density=8.0),
            outside="forward model (low-rank clutter, Gaussian PSF)"),
    Setting("lowrank-strong-sinc", 7109,
            "another forward model, hard: slowly evolving clutter 10 dB above the bubbles with 1 px motion, "
            "strong lateral side lobes (-14 dB), 5 x 8 px PSF, 30/frame, intensity spread 0.8",
            dict(clutter_model="lowrank", clutter_timescale_frames=150.0, clutter_db=10.0, tissue_motion_px=1.0,
                 psf_shape="sinc", psf_fwhm_um=(250.0, 400.0), density=30.0, amplitude_spread=0.8),
            outside="forward model (low-rank clutter, sinc PSF)"),
    Setting("coarse-pixels-tiny-psf", 7110,
            "100 um pixels at 1 kHz: a 1.8 x 2.2 px PSF below the trained range, 40/frame",
            dict(pixel_size_um=100.0, frame_rate_hz=1000.0, psf_fwhm_um=(180.0, 220.0), density=40.0),
            outside="PSF < 2 px"),
    Setting("huge-psf-strong-clutter", 7111,
            "PSF (11 x 13 px) and clutter (+12 dB) beyond the trained ranges, 10/frame",
            dict(psf_fwhm_um=(550.0, 650.0), clutter_db=12.0, clutter_correlation=0.95, density=10.0),
            outside="PSF > 10 px, clutter > +10 dB"),
    Setting("very-sparse-noisy", 7112,
            "fewer bubbles than trained (3/frame) in strong noise (-10 dB), round 6 x 6 px PSF",
            dict(psf_fwhm_um=(300.0, 300.0), density=3.0, noise_db=-10.0, clutter_db=-20.0),
            outside="density < 5/frame"),
]
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


# ---------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------
def true_psf(meta: dict) -> PSF:
    """The simulation's PSF as a Gaussian with its true mid-depth FWHMs."""
    return PSF(sigma_y_px=meta["psf_sigma_y_px"], sigma_x_px=meta["psf_sigma_x_px"],
               pixel_size_um=meta["pixel_size_um"])


def cnr_regions(sim) -> tuple[np.ndarray, np.ndarray, int]:
    """Signal (vessels) and background (organ minus vessels dilated by the true lateral FWHM)."""
    signal = sim.vessel_mask & sim.organ_mask
    grow = int(math.ceil(sim.metadata["psf_fwhm_x_px"]))
    while True:
        background = sim.organ_mask & ~ndimage.binary_dilation(sim.vessel_mask, iterations=grow)
        if background.sum() >= 0.05 * sim.organ_mask.sum() or grow <= 1:
            return signal, background, grow
        grow = max(1, grow // 2)  # dense trees with wide PSFs: keep a background region


def fwhm_radius(meta: dict) -> int:
    """Half-size of the patches :func:`triggered_fwhm` averages: twice the larger true FWHM."""
    return max(6, int(math.ceil(2.0 * max(meta["psf_fwhm_y_px"], meta["psf_fwhm_x_px"]))))


def fwhm_points(sim, n: int = 200) -> np.ndarray:
    """Isolated ground-truth bubbles (frame, y, x) at which the FWHM is measured."""
    fx = sim.metadata["psf_fwhm_x_px"]
    pos, shape = sim.ground_truth.positions, sim.frames.shape[1:]
    dist, border = max(16.0, 2.5 * fx), fwhm_radius(sim.metadata) + 3.0  # whole patches
    rows = isolated_positions(pos, shape, min_distance_px=dist, border_px=border, n=n)
    while len(rows) < 10 and dist > 1.5 * fx:
        dist *= 0.8
        rows = isolated_positions(pos, shape, min_distance_px=dist, border_px=border, n=n)
    return pos[rows]


#: Frame offsets of the local background of :func:`triggered_fwhm` (the same place, other times).
BACKGROUND_OFFSETS = (-50, -40, -30, -20, -10, 10, 20, 30, 40, 50)


def triggered_fwhm(frames, points, radius_px: int) -> dict:
    """FWHM of the mean bubble image at known positions: the estimator used before and after MB-DT.

    For each true position, the power (squared envelope) of its patch minus
    the local background power (the median, over frames 10-50 before and
    after, of the power of the same patch: static and slow clutter cancel) is
    shifted (cubic spline) so that the true position falls on the centre
    pixel; these are averaged, the residual background (median of the
    averaged patch's border) is subtracted and the square root taken.  The
    FWHM is ``metrics.fwhm`` of the centre row and column.  This is the power
    averaging of :func:`napari_cycleulm.psf.estimate_psf` (``average="power"``)
    anchored on the true positions without rejecting any bubble, so that it
    works whatever the clutter, and a bubble that MB-DT moved, dimmed or
    removed counts as what it is.

    Parameters
    ----------
    frames : numpy.ndarray
        ``(T, H, W)`` envelope frames (CEUS or MB-only).
    points : (N, 3) array
        True ``(frame, y, x)`` of isolated bubbles, in pixels.
    radius_px : int
        Half-size of the averaged patch.

    Returns
    -------
    dict
        ``fwhm_y_px``, ``fwhm_x_px`` (None when not measurable) and ``fwhm_bubbles``.
    """
    big = int(radius_px) + 2
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    n_frames = len(frames)
    patches = bubble_patches(frames, pts, radius_px=big).astype(np.float64) ** 2
    others = []
    for off in BACKGROUND_OFFSETS:
        moved = pts.copy()
        moved[:, 0] = np.mod(pts[:, 0] + off, n_frames)
        others.append(bubble_patches(frames, moved, radius_px=big).astype(np.float64) ** 2)
    patches -= np.median(np.stack(others), axis=0)
    ok = np.isfinite(patches).all(axis=(1, 2))
    acc = np.zeros((2 * big + 1, 2 * big + 1))
    for patch, (_, y, x) in zip(patches[ok], pts[ok]):
        acc += ndimage.shift(patch, (np.rint(y) - y, np.rint(x) - x), order=3, mode="nearest")
    n = int(ok.sum())
    if n == 0:
        return {"fwhm_y_px": None, "fwhm_x_px": None, "fwhm_bubbles": 0}
    mean = (acc / n)[2:-2, 2:-2]
    border = np.concatenate([mean[0], mean[-1], mean[1:-1, 0], mean[1:-1, -1]])
    amp = np.sqrt(np.clip(mean - np.median(border), 0.0, None))
    r = big - 2
    out = {"fwhm_bubbles": n}
    for ax, prof in (("y", amp[:, r]), ("x", amp[r, :])):
        v = fwhm(prof, baseline=0.0) if prof.max() > 0 else math.nan
        out[f"fwhm_{ax}_px"] = v if math.isfinite(v) else None
    return out


def describe_frames(frames, signal, background, points, radius_px) -> dict:
    """Contrast and ratio CNR of the MIP and :func:`triggered_fwhm` (one estimator for every stack)."""
    row = dict(contrast(frames.max(axis=0), signal, background))
    row.update(triggered_fwhm(frames, points, radius_px))
    return row


def compare_mip(before: dict, after: dict) -> dict:
    """Changes from the CEUS MIP to the MB-only MIP: CNR gain (dB) and FWHM narrowing (ratio)."""
    out = {"contrast_gain_db": after["contrast_db"] - before["contrast_db"],
           "ratio_gain_db": after["ratio_db"] - before["ratio_db"]}
    for ax in ("y", "x"):
        b, a = before.get(f"fwhm_{ax}_px"), after.get(f"fwhm_{ax}_px")
        out[f"narrowing_{ax}"] = b / a if (b and a) else None
    ny, nx = out["narrowing_y"], out["narrowing_x"]
    out["narrowing"] = math.sqrt(ny * nx) if (ny and nx) else None
    return out


def spill_fraction(density: np.ndarray, vessel_mask: np.ndarray, upsampling: int = UPSAMPLING,
                   dilation_px: int = SPILL_DILATION_PX) -> float | None:
    """Fraction of an SR map's intensity outside the true vessels dilated by ``dilation_px`` CEUS pixels."""
    total = float(np.sum(density))
    if not total > 0:
        return None
    inside = ndimage.binary_dilation(vessel_mask, iterations=dilation_px) if dilation_px else vessel_mask
    inside = np.repeat(np.repeat(inside, upsampling, axis=0), upsampling, axis=1)  # render/sr_maps.py grid
    return float(np.sum(density[~inside]) / total)


def coverage_fraction(density: np.ndarray, gt_map: np.ndarray) -> float | None:
    """Fraction of the SR pixels crossed by true bubbles (``gt_map > 0``) that the map reaches (``density > 0``).

    The counterpart of :func:`spill_fraction`, as recall is of precision: an
    almost empty map has no spill and a low coverage.
    """
    truth = np.asarray(gt_map) > 0
    n = int(truth.sum())
    return float(np.sum((np.asarray(density) > 0) & truth) / n) if n else None


def score_pipeline(sim, name: str, psf, gt_map, **kw) -> dict:
    """Run one pipeline at its defaults and score localisations and SR map; failures are recorded."""
    meta = sim.metadata
    row: dict = {"pipeline": name}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            res = run_pipeline(sim.frames, name, psf, pixel_size_um=meta["pixel_size_um"],
                               frame_rate_hz=meta["frame_rate_hz"], upsampling=UPSAMPLING, **kw)
        except CycleULMError as exc:  # what a user would see (e.g. no PSF found)
            res = None
            row["error"] = str(exc)
        except Exception as exc:  # a bug: recorded so that one crash does not end a long run
            import traceback

            traceback.print_exc()
            res = None
            row["error"] = f"{type(exc).__name__}: {exc}"
    row["seconds"] = round(time.perf_counter() - t0, 1)
    msgs = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    if msgs:
        row["warnings"] = [m[:300] for m in msgs[:5]]
    if res is None:
        if name in LOCALISING:
            row.update(recall=0.0, precision=0.0, f1=0.0, n_localisations=0)
        return row
    row["n_localisations"] = res.n_localisations
    row["n_tracks"] = res.n_tracks
    if name in LOCALISING:
        m = match_localisations(sim.ground_truth, res.localisations, tolerance=TOLERANCE_PX)
        row.update(recall=m.recall, precision=m.precision, f1=m.f1, mean_error_px=m.mean_error_px)
    row["sr_rmse"] = rmse(res.maps.density, gt_map, normalise="max")
    row["spill"] = spill_fraction(res.maps.density, sim.vessel_mask)
    row["coverage"] = coverage_fraction(res.maps.density, gt_map)
    row["sr_correlation"] = map_correlation(res.maps.density, gt_map, sigma_px=MAP_CORRELATION_SIGMA_SR_PX)
    return row


# ---------------------------------------------------------------------------
# one setting
# ---------------------------------------------------------------------------
def run_setting(setting: Setting, args) -> dict:
    """Simulate one setting, run and score every pipeline (and the fine-tune), return its record."""
    t_start = time.perf_counter()
    sim = simulate(**setting.simulate_kwargs(args.frames))
    meta = sim.metadata
    # What the pipelines (and MB-DT, the automatic PSF and the fine-tune) see: the
    # frames after the default clutter filter, the first stage of every pipeline.
    lazy = clutter_filtered(sim.frames, DEFAULT_CLUTTER_FILTER)
    filtered = np.asarray(lazy)
    px = meta["pixel_size_um"]
    rec: dict = {
        "name": setting.name, "seed": setting.seed, "reason": setting.reason, "outside": setting.outside,
        "params": setting.simulate_kwargs(args.frames),
        "truth": {"psf_fwhm_y_px": meta["psf_fwhm_y_px"], "psf_fwhm_x_px": meta["psf_fwhm_x_px"],
                  "n_positions": len(sim.ground_truth),
                  "bubbles_per_frame": meta["mean_bubbles_per_frame"]},
        "weights": _weights_fingerprint(args),
        "clutter_filter": {"method": DEFAULT_CLUTTER_FILTER, "cutoffs": dict(getattr(lazy, "cutoffs", {}))},
    }
    print(f"\n== {setting.name} (seed {setting.seed}): {setting.reason}", flush=True)

    # The automatic PSF a user gets (as `cycleulm run --psf auto` and `cycleulm train mbdt`).
    auto_psf = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            est = estimate_psf_auto(filtered[:CALIBRATION_FRAMES], pixel_size_um=px)
        auto_psf = est.psf
        rec["psf_auto"] = {"fwhm_y_px": auto_psf.fwhm_y_px, "fwhm_x_px": auto_psf.fwhm_x_px,
                           "n_bubbles": est.n_used}
    except CycleULMError as exc:
        rec["psf_auto"] = {"error": str(exc)}
        print(f"   automatic PSF failed: {exc}", flush=True)
    psf = true_psf(meta) if args.true_psf else "auto"
    ft_psf = true_psf(meta) if args.true_psf else auto_psf
    rec["psf_used"] = "true" if args.true_psf else "auto"

    gt_map = ground_truth_map(sim, UPSAMPLING)
    rec["truth"]["gt_map_spill"] = spill_fraction(gt_map, sim.vessel_mask)
    # What an empty map scores: the floor against which the maps' RMSE reads.
    rec["truth"]["empty_map_sr_rmse"] = rmse(np.zeros_like(gt_map), gt_map, normalise="max")
    nets = {"mbdt": args.mbdt, "mblnet": args.mblnet, "mbtnet": args.mbtnet}

    def run_all(names, mbdt, label):
        rows = {}
        for name in names:
            rows[name] = score_pipeline(sim, name, psf, gt_map, mbdt=mbdt, mblnet=nets["mblnet"],
                                        mbtnet=nets["mbtnet"])
            r = rows[name]
            f1 = "" if "f1" not in r else f"F1 {r['f1']:.3f} (R {r['recall']:.3f}, P {r['precision']:.3f}) "
            sr = "" if "sr_rmse" not in r else f"SR RMSE {_fmt(r['sr_rmse'], 4)} spill {_fmt(r['spill'])} "
            print(f"   [{label}] {name:>15}: {f1}{sr}{r.get('error', '')} ({r['seconds']} s)", flush=True)
        return rows

    rec["shipped"] = run_all(args.pipelines, nets["mbdt"], "shipped")

    signal, background, grow = cnr_regions(sim)
    points = fwhm_points(sim)
    radius = fwhm_radius(meta)
    rec["mip_regions"] = {"background_dilation_px": grow, "signal_px": int(signal.sum()),
                          "background_px": int(background.sum()), "fwhm_points": len(points),
                          "fwhm_patch_radius_px": radius}
    t0 = time.perf_counter()
    rec["mip_ceus"] = describe_frames(sim.frames, signal, background, points, radius)
    rec["mip_filtered"] = describe_frames(filtered, signal, background, points, radius)
    mb = translate(filtered, nets["mbdt"])
    rec["mip_mbdt"] = describe_frames(mb, signal, background, points, radius)
    rec["mip_mbdt"]["translate_seconds"] = round(time.perf_counter() - t0, 1)
    rec["mbdt_effect"] = compare_mip(rec["mip_ceus"], rec["mip_mbdt"])
    rec["mbdt_effect_vs_filtered"] = compare_mip(rec["mip_filtered"], rec["mip_mbdt"])
    del mb
    _print_mip(rec["mip_ceus"], rec["mip_mbdt"], "shipped")
    # The MB-DT stage as the CycleULM pipelines run it: with the evidence gate
    # (their default), given the PSF they are given.
    gate_psf = ft_psf
    if gate_psf is not None:
        mb = np.concatenate([m for _, _, m in iter_translate(filtered, nets["mbdt"], gate=DEFAULT_GATE,
                                                             psf=gate_psf)])
        rec["mip_mbdt_gated"] = describe_frames(mb, signal, background, points, radius)
        rec["mip_mbdt_gated"]["gate"] = DEFAULT_GATE
        rec["mbdt_gated_effect"] = compare_mip(rec["mip_ceus"], rec["mip_mbdt_gated"])
        del mb
        _print_mip(rec["mip_ceus"], rec["mip_mbdt_gated"], f"shipped, {DEFAULT_GATE} gate")

    if args.finetune_steps:
        rec["finetune"] = _finetune(sim, filtered, ft_psf, args, run_all, signal, background, points, radius,
                                    rec["mip_ceus"])
    rec["seconds"] = round(time.perf_counter() - t_start, 1)
    print(f"   {setting.name}: {rec['seconds']} s", flush=True)
    return rec


def _finetune(sim, filtered, psf, args, run_all, signal, background, points, radius, mip_ceus) -> dict:
    from napari_cycleulm.train import train_mbdt

    if psf is None:
        print("   fine-tune skipped: no PSF", flush=True)
        return {"error": "the automatic PSF failed, so the label-free fine-tune (which needs it) could not run"}
    out: dict = {"steps": args.finetune_steps, "init": str(args.mbdt)}
    with tempfile.TemporaryDirectory(prefix="cycleulm_gen_") as tmp:  # never into docs/
        ckpt = Path(tmp) / "mbdt_finetuned.pt"
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                res = train_mbdt(filtered, psf, init=args.mbdt, steps=args.finetune_steps, out=ckpt,
                                 checkpoint_every=None, preview_every=None)
        except CycleULMError as exc:
            out["error"] = str(exc)
            return out
        out["seconds"] = round(time.perf_counter() - t0, 1)
        out["steps_done"] = res.steps_done
        print(f"   fine-tuned MB-DT {res.steps_done} steps in {out['seconds']} s", flush=True)
        names = [n for n in args.pipelines if n in MBDT_PIPELINES]
        out["pipelines"] = run_all(names, str(ckpt), "fine-tuned")
        mb = translate(filtered, str(ckpt))
    out["mip_mbdt"] = describe_frames(mb, signal, background, points, radius)
    out["mbdt_effect"] = compare_mip(mip_ceus, out["mip_mbdt"])
    _print_mip(mip_ceus, out["mip_mbdt"], "fine-tuned")
    return out


def _print_mip(before, after, label):
    def fw(r):
        return " x ".join("-" if r.get(k) is None else f"{r[k]:.2f}" for k in ("fwhm_y_px", "fwhm_x_px")) + " px"

    print(f"   [{label}] MIP contrast CNR {before['contrast_db']:.2f} -> {after['contrast_db']:.2f} dB "
          f"(ratio {before['ratio_db']:.2f} -> {after['ratio_db']:.2f} dB); FWHM {fw(before)} -> {fw(after)}",
          flush=True)


def _weights_fingerprint(args) -> dict:
    """SHA-256 (first 12 hex digits) of the weight files used, so runs can be told apart."""
    from napari_cycleulm.dl.models import DEFAULT_WEIGHTS

    out = {}
    for kind, given in (("mbdt", args.mbdt), ("mblnet", args.mblnet), ("mbtnet", args.mbtnet)):
        path = Path(DEFAULT_WEIGHTS[kind]) if given == "default" else Path(given)
        out[kind] = {"path": str(given)}
        if path.is_file():
            out[kind]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return out


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _ratio(a, b) -> float | None:
    return a / b if (a is not None and b) else None


#: Ratio columns of the tables: (numerator pipeline, short label), always over Baseline 2.
RATIOS = {"localisation": [("cycleulm-loc", "Loc / B2")],
          "map": [("cycleulm-loc", "Loc / B2"), ("cycleulm-e2e", "E2E / B2")]}


def _pipeline_table(recs, block: str, metric: str, names, digits=3, ratios=RATIOS["localisation"]) -> list[str]:
    """Settings as rows, pipelines as columns, a mean row and ratios over Baseline 2.

    A failed pipeline has F1, recall and precision 0 (counted in the means) and
    no map scores: the means are over the settings where every column has a
    value (all of them for F1).  The mean row's ratio is the ratio of the
    means; the smallest per-setting ratio follows in brackets.
    """
    names = [n for n in names if any(n in _block(r, block) for r in recs)]
    if not names:
        return []
    ratios = [(n, label) for n, label in ratios if n in names and "baseline2" in names]
    head = "| setting | " + " | ".join(names + [label for _, label in ratios]) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1 + len(ratios))]
    cols = {n: [] for n in names}
    per_setting = {n: [] for n, _ in ratios}
    for r in recs:
        rows = _block(r, block)
        cells = []
        for n in names:
            v = rows.get(n, {}).get(metric)
            cols[n].append(v)
            cells.append(_fmt(v, digits) + (" (fail)" if "error" in rows.get(n, {}) else ""))
        for n, _ in ratios:
            q = _ratio(rows.get(n, {}).get(metric), rows.get("baseline2", {}).get(metric))
            per_setting[n].append(q)
            cells.append(_fmt(q, 2))
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    common = [i for i in range(len(recs)) if all(cols[n][i] is not None for n in names)]
    means = {n: _mean([cols[n][i] for i in common]) for n in names}
    cells = [f"**{_fmt(means[n], digits)}**" for n in names]
    cells += [f"**{_fmt(_ratio(means[n], means['baseline2']), 2)}** (min {_fmt(_min(per_setting[n]), 2)})"
              for n, _ in ratios]
    label = "**mean**" if len(common) == len(recs) else f"**mean** ({len(common)} settings where all ran)"
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _min(values):
    vals = [v for v in values if v is not None]
    return min(vals) if vals else None


def _block(rec, block) -> dict:
    """Pipeline rows of a record; after fine-tuning, with the shipped Baseline 2 for reference."""
    if block == "shipped":
        return rec.get("shipped", {})
    rows = (rec.get("finetune") or {}).get("pipelines") or {}
    return {"baseline2": rec.get("shipped", {}).get("baseline2", {}), **rows} if rows else {}


def _mip_table(recs, which: str) -> list[str]:
    lines = ["| setting | CNR CEUS (dB) | CNR MB-only (dB) | gain (dB) | ratio CNR CEUS -> MB-only (dB) "
             "| FWHM CEUS y x x (px) | FWHM MB-only y x x (px) | narrowing y / x |",
             "|---|---|---|---|---|---|---|---|"]
    gains, narrows = [], []
    for r in recs:
        before = r["mip_ceus"]
        if which == "shipped":
            after, eff = r["mip_mbdt"], r["mbdt_effect"]
        elif which == "gated":
            if "mip_mbdt_gated" not in r:
                lines.append(f"| {r['name']} | {_fmt(before['contrast_db'], 2)} | - | - | - | - | - | "
                             "not run (no PSF) |")
                continue
            after, eff = r["mip_mbdt_gated"], r["mbdt_gated_effect"]
        else:
            ft = r.get("finetune") or {}
            if "mip_mbdt" not in ft:
                lines.append(f"| {r['name']} | {_fmt(before['contrast_db'], 2)} | - | - | - | - | - | "
                             f"{ft.get('error', 'not run')[:60]} |")
                continue
            after, eff = ft["mip_mbdt"], ft["mbdt_effect"]
        gains.append(eff["contrast_gain_db"])
        narrows.append(eff["narrowing"])
        lines.append(
            f"| {r['name']} | {_fmt(before['contrast_db'], 2)} | {_fmt(after['contrast_db'], 2)} "
            f"| {_fmt(eff['contrast_gain_db'], 2)} | {_fmt(before['ratio_db'], 1)} -> {_fmt(after['ratio_db'], 1)} "
            f"| {_fmt(before.get('fwhm_y_px'), 2)} x {_fmt(before.get('fwhm_x_px'), 2)} "
            f"| {_fmt(after.get('fwhm_y_px'), 2)} x {_fmt(after.get('fwhm_x_px'), 2)} "
            f"| {_fmt(eff['narrowing_y'], 2)} / {_fmt(eff['narrowing_x'], 2)} |")
    lines.append(f"| **mean** | | | {_fmt(_mean(gains), 2)} (min {_fmt(_min(gains), 2)}) | | | | "
                 f"sqrt(y x): mean {_fmt(_mean(narrows), 2)} (min {_fmt(_min(narrows), 2)}) |")
    return lines


def markdown(report: dict) -> str:
    """The markdown tables of a report."""
    recs = list(report["settings"].values())
    meta = report["meta"]
    out = [f"# Generalisation benchmark ({meta['date']}, commit {meta['commit']})", "",
           f"Command: `{meta['command']}`", "",
           f"Weights: MB-DT `{meta['mbdt']}`, MBL-Net `{meta['mblnet']}`; PSF: {meta['psf']}; "
           f"F1 at {TOLERANCE_PX:g} px, default thresholds; {meta['frames'] or COMMON['n_frames']} frames per setting."]
    if meta.get("dirty"):
        out.append(f"Uncommitted changes in the working tree at the start: {', '.join(meta['dirty'])}.")
    out += ["", "## Settings", "", "| setting | seed | outside training | true PSF y x x (px) | auto PSF y x x (px) "
            "| bubbles/frame | seconds | what it tests |", "|---|---|---|---|---|---|---|---|"]
    for r in recs:
        pa = r["psf_auto"]
        auto = "failed" if "error" in pa else f"{pa['fwhm_y_px']:.2f} x {pa['fwhm_x_px']:.2f} ({pa['n_bubbles']})"
        t = r["truth"]
        out.append(f"| {r['name']} | {r['seed']} | {r['outside'] or '-'} | {t['psf_fwhm_y_px']:.2f} x "
                   f"{t['psf_fwhm_x_px']:.2f} | {auto} | {t['bubbles_per_frame']:.1f} | {r['seconds']:.0f} "
                   f"| {r['reason']} |")
    loc_names = [n for n in LOCALISING]
    for title, block in (("shipped weights", "shipped"), ("after fine-tuning MB-DT", "finetune")):
        if block == "finetune" and not any((r.get("finetune") or {}).get("pipelines") for r in recs):
            continue
        names = loc_names if block == "shipped" else ["baseline2"] + [n for n in loc_names if n in MBDT_PIPELINES]
        for metric in ("f1", "recall", "precision"):
            table = _pipeline_table(recs, block, metric, names)
            if table:
                out += ["", f"## {metric.upper() if metric == 'f1' else metric.capitalize()} at "
                            f"{TOLERANCE_PX:g} px, {title}", ""] + table
    out += ["", "Failed pipelines count as 0 in the means; `(fail)` marks them (the reason is in the JSON).",
            "", "## MB-DT on the MIP, shipped weights", "",
            "Contrast CNR = 20 log10(|mu_s - mu_b| / sigma_b) (headline); ratio CNR = 20 log10(mu_s / mu_b). "
            "Signal: the vessel mask; background: the organ minus the vessels dilated by the true lateral FWHM. "
            "FWHM: `triggered_fwhm`, the power average of the frames around up to 200 isolated true bubbles "
            "(local background of the same place at other times subtracted), the same estimator on CEUS and "
            "MB-only frames; narrowing = FWHM CEUS / FWHM MB-only; `-` where it is not measurable.", ""] + _mip_table(recs, "shipped")
    if any("mip_mbdt_gated" in r for r in recs):
        out += ["", "## The MB-DT stage as the pipelines run it (evidence gate on), shipped weights", "",
                "The same measures on MB-DT's output multiplied by the pipelines' default evidence gate "
                "(`preprocess.evidence_gate.DEFAULT_GATE`, given the automatic PSF): what every CycleULM "
                "pipeline works on.", ""] + _mip_table(recs, "gated")
    if any(r.get("finetune") for r in recs):
        out += ["", "## MB-DT on the MIP, after fine-tuning", ""] + _mip_table(recs, "finetune")
    empty = [r["truth"].get("empty_map_sr_rmse") for r in recs]
    empty_note = (f"An empty map scores {_fmt(_mean([e for e in empty if e is not None]), 4)} on average "
                  "(per setting in the JSON, `truth.empty_map_sr_rmse`): read the RMSE beside the correlation, spill and coverage."
                  if any(e is not None for e in empty) else "")
    for metric, title in (("sr_correlation", "SR density map correlation with the ground-truth map (Pearson, "
                                             f"both smoothed by a Gaussian of {MAP_CORRELATION_SIGMA_SR_PX:g} SR px; "
                                             "an empty map scores 0): the headline map score"),
                          ("sr_rmse", "SR density map RMSE against the ground-truth map (max-normalised)"),
                          ("spill", f"Spill: fraction of SR map intensity outside the true vessels "
                                    f"dilated by {SPILL_DILATION_PX} px"),
                          ("coverage", "Coverage: fraction of the SR pixels crossed by true bubbles that the "
                                       "map reaches (density > 0)")):
        for block, label in (("shipped", "shipped weights"), ("finetune", "after fine-tuning MB-DT")):
            if block == "finetune" and not any((r.get("finetune") or {}).get("pipelines") for r in recs):
                continue
            if not any(metric in row for r in recs for row in _block(r, block).values()):
                continue  # a report made before the metric existed
            table = _pipeline_table(recs, block, metric, list(PIPELINES), digits=4 if metric == "sr_rmse" else 3,
                                    ratios=RATIOS["map"])
            if table:
                note = [empty_note, ""] if (metric == "sr_rmse" and empty_note) else []
                out += ["", f"## {title}, {label}", ""] + note + table
    return "\n".join(out) + "\n"


def _git(*cmd) -> str | None:
    try:
        return subprocess.run(["git", *cmd], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/generalisation", help="folder of generalisation.json / .md")
    ap.add_argument("--settings", nargs="+", default=None, choices=list(SETTINGS_BY_NAME), metavar="NAME",
                    help=f"run only these settings (default all: {', '.join(SETTINGS_BY_NAME)})")
    ap.add_argument("--frames", type=int, default=None, help="frames per setting (default 200)")
    ap.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    ap.add_argument("--mbdt", default="default", help="MB-DT checkpoint (default: the shipped weights)")
    ap.add_argument("--mblnet", default="default", help="MBL-Net checkpoint (default: the shipped weights)")
    ap.add_argument("--mbtnet", default="default", help="MBT-Net checkpoint (default: the shipped weights)")
    ap.add_argument("--finetune-steps", type=int, default=0,
                    help="also fine-tune MB-DT on each setting's frames for N steps (label-free; 0: skip)")
    ap.add_argument("--true-psf", action="store_true",
                    help="give the pipelines the simulation's PSF instead of the automatic estimate")
    ap.add_argument("--resume", action="store_true", help="skip the settings already in generalisation.json")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing generalisation.json")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)
    if args.finetune_steps < 0 or (args.frames is not None and args.frames < 3):
        ap.error("--finetune-steps must be >= 0 and --frames >= 3")

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    json_path, md_path = out / "generalisation.json", out / "generalisation.md"
    config = {"frames": args.frames, "pipelines": args.pipelines, "mbdt": args.mbdt, "mblnet": args.mblnet,
              "mbtnet": args.mbtnet,
              "finetune_steps": args.finetune_steps, "psf": "true" if args.true_psf else "auto"}
    report = None
    if json_path.exists():
        if args.resume:
            report = json.loads(json_path.read_text())
            if report.get("config") != config:
                ap.error(f"{json_path} was made with other options ({report.get('config')}); "
                         "use another --out or --overwrite")
        elif not args.overwrite:
            ap.error(f"{json_path} exists: add --resume to continue it or --overwrite to replace it")
    if report is None:
        dirty = _git("status", "--porcelain", "--", "src", "benchmarks")
        report = {"meta": {"date": datetime.date.today().isoformat(), "commit": _git("rev-parse", "--short", "HEAD"),
                           "dirty": [ln[3:] for ln in (dirty or "").splitlines()],
                           "command": "python benchmarks/generalisation.py " + " ".join(argv or sys.argv[1:]),
                           "mbdt": args.mbdt, "mblnet": args.mblnet, "mbtnet": args.mbtnet, "frames": args.frames,
                           "psf": config["psf"], "threads": args.threads},
                  "config": config, "settings": {}}
    out.mkdir(parents=True, exist_ok=True)
    names = args.settings or list(SETTINGS_BY_NAME)
    t_all = time.perf_counter()
    for name in names:
        if name in report["settings"]:
            print(f"{name}: already done, skipped", flush=True)
            continue
        report["settings"][name] = run_setting(SETTINGS_BY_NAME[name], args)
        # Written after every setting, so a run that is stopped keeps what it finished.
        write_text_atomic(json_path, json.dumps(jsonable(report), indent=1) + "\n")
        write_text_atomic(md_path, markdown(report))
    if not json_path.exists():  # every setting skipped: still write the tables
        write_text_atomic(json_path, json.dumps(jsonable(report), indent=1) + "\n")
    write_text_atomic(md_path, markdown(report))
    print(f"\n{len(names)} settings in {time.perf_counter() - t_all:.0f} s -> {md_path}", flush=True)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
