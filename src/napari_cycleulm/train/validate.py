"""Validation of trained networks: MBL-Net and MBT-Net on fresh synthetic data, MB-DT on a stack.

* :func:`validate_mblnet`: detection recall / precision / F1 and errors of
  MBL-Net on synthetic MB-only patches, decoded as at inference.
* :func:`validate_mbtnet`: trajectory Dice / F1 and velocity error of
  MBT-Net on synthetic MB-only sequences.
* :func:`validate_mbdt`: how much MB-DT helps NCC localisation on a stack
  with ground truth, and the clutter it leaves.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from ..arrays import as_frames
from ..intensity import mbdt_input_scale
from ..dl.checkpoint import Checkpoint
from ..device import resolve_device
from ..errors import CycleULMError
from ..io.tables import Localisations
from ..dl.nets.mbtnet import UPSCALE as MBTNET_UPSCALE
from ..psf import PSF
from ..simulate.mb_only import SyntheticConfig, synthetic_patches, synthetic_sequences
from .loop import _check_int, _sigma_range
from .mbdt import NORMALISATION_PERCENTILE

__all__ = ["validate_mbdt", "validate_mblnet", "validate_mbtnet"]


def _as_module(model) -> nn.Module:
    return model.model if isinstance(model, Checkpoint) else model


def _validation_config(psf_or_range, config: SyntheticConfig | None):
    cfg = dataclasses.replace(config) if config is not None else SyntheticConfig()
    if isinstance(psf_or_range, PSF):
        return psf_or_range, dataclasses.replace(cfg, sigma_range_px=None)
    if psf_or_range is None:
        raise CycleULMError("give the MB-only PSF or a sigma range to validate on.")
    return None, dataclasses.replace(cfg, sigma_range_px=_sigma_range(psf_or_range))


def validate_mblnet(
    model,
    psf_or_range,
    n: int = 256,
    seed: int = 12345,
    *,
    patch_size: int = 40,
    synthetic_config: SyntheticConfig | None = None,
    threshold: float = 0.5,
    tolerance: float = 1.0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> dict:
    """Detection quality of MBL-Net on fresh synthetic MB-only patches.

    Parameters
    ----------
    model : MBLNet or Checkpoint
    psf_or_range : PSF or sigma range
        The MB-only PSF, or a ``sigma_range_px`` (each patch its own PSF).
    n : int
        Number of 40x40 patches.
    seed : int
        Seed of the validation data (keep it different from training seeds).
    tolerance : float
        Matching radius, pixels.

    Returns
    -------
    dict
        ``recall, precision, f1, mean_error_px, rmse_px, n_gt, n_detections``,
        decoding with :func:`napari_cycleulm.localise.mblnet.decode_mblnet`
        (the inference decoder) at ``threshold``.
    """
    from ..localise.mblnet import decode_mblnet  # the decoder used at inference
    from ..evaluate.metrics import match_localisations

    net = _as_module(model)
    dev = resolve_device(device)
    net = net.to(dev).eval()
    psf, cfg = _validation_config(psf_or_range, synthetic_config)
    data = synthetic_patches(_check_int("n", n, 1), patch_size, psf, cfg, seed)
    dets = []
    with torch.no_grad():
        for s in range(0, n, batch_size):
            x = torch.from_numpy(data.images[s : s + batch_size, None]).to(dev)
            det = decode_mblnet(net(x), threshold)
            dets.append(det.with_columns(frame=det["frame"] + s))
    det = Localisations.concat(dets)
    m = match_localisations(data.positions, det, tolerance=tolerance)
    return {
        "recall": m.recall, "precision": m.precision, "f1": m.f1,
        "mean_error_px": m.mean_error_px, "rmse_px": m.rmse_px,
        "n_gt": len(data.positions), "n_detections": len(det),
        "threshold": threshold, "tolerance_px": tolerance,
    }


def _root_mean(squares: np.ndarray) -> float:
    """Square root of the mean of squared values (NaN when there are none)."""
    return float(np.sqrt(squares.mean())) if squares.size else float("nan")


def validate_mbtnet(
    model,
    psf_or_range,
    n: int = 64,
    seed: int = 12345,
    *,
    patch_size: int = 40,
    synthetic_config: SyntheticConfig | None = None,
    threshold: float = 0.5,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> dict:
    """Trajectory and velocity quality of MBT-Net on fresh synthetic sequences.

    Returns
    -------
    dict
        ``dice`` (pixel overlap of the thresholded trajectory map with the
        GT map at 4x resolution), ``trajectory_precision``,
        ``trajectory_recall``, ``trajectory_f1`` (with a tolerance of one
        input pixel, i.e. ``upsampling`` output pixels), the same three with
        a tolerance of one output (SR) pixel (``..._sr1``) and
        ``velocity_rmse_px_per_frame`` (RMS vector error of ``(vy, vx)`` on
        the GT trajectory pixels, input pixels per frame), plus
        ``velocity_rms_px_per_frame`` of the GT for scale; the same two on
        the GT trajectory pixels the thresholded map detects
        (``velocity_rmse_detected_px_per_frame``,
        ``velocity_rms_detected_px_per_frame``: the velocities an E2E map
        shows, since it accumulates them only where a path is detected) and
        the ``detected_path_fraction`` of GT trajectory pixels.
    """
    from scipy import ndimage

    net = _as_module(model)
    dev = resolve_device(device)
    net = net.to(dev).eval()
    psf, cfg = _validation_config(psf_or_range, synthetic_config)
    nf = net.config["n_frames"]
    data = synthetic_sequences(_check_int("n", n, 1), nf, patch_size, psf, cfg, seed, MBTNET_UPSCALE)
    outs = []
    with torch.no_grad():
        for s in range(0, n, batch_size):
            outs.append(net(torch.from_numpy(data.frames[s : s + batch_size]).to(dev)).float().cpu())
    out = torch.cat(outs).numpy()
    pred = 1.0 / (1.0 + np.exp(-out[:, 0])) >= threshold
    gt = data.trajectory > 0.5
    inter = float((pred & gt).sum())
    dice = 2 * inter / max(float(pred.sum() + gt.sum()), 1.0)

    def tolerant(r: int) -> tuple[float, float, float]:
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        disk = (yy**2 + xx**2 <= r * r)[None]
        gt_d = ndimage.binary_dilation(gt, structure=disk)
        pred_d = ndimage.binary_dilation(pred, structure=disk)
        prec = float((pred & gt_d).sum()) / max(float(pred.sum()), 1.0)
        rec = float((gt & pred_d).sum()) / max(float(gt.sum()), 1.0)
        return prec, rec, (2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0)

    prec, rec, f1 = tolerant(MBTNET_UPSCALE)
    prec1, rec1, f1_1 = tolerant(1)
    err_all = ((out[:, 1:3] - data.velocity) ** 2).sum(axis=1)
    speed2 = (data.velocity**2).sum(axis=1)
    err, vgt = err_all[gt], speed2[gt]
    # Where the map reports a path (E2E accumulates velocities only there):
    # the true path pixels the thresholded map detects.
    err_det, vgt_det = err_all[gt & pred], speed2[gt & pred]
    return {
        "dice": dice, "trajectory_precision": prec, "trajectory_recall": rec,
        "trajectory_f1": f1,
        "trajectory_precision_sr1": prec1, "trajectory_recall_sr1": rec1, "trajectory_f1_sr1": f1_1,
        "velocity_rmse_px_per_frame": _root_mean(err),
        "velocity_rms_px_per_frame": _root_mean(vgt),
        "velocity_rmse_detected_px_per_frame": _root_mean(err_det),
        "velocity_rms_detected_px_per_frame": _root_mean(vgt_det),
        "detected_path_fraction": float(err_det.size) / max(float(err.size), 1.0),
        "n_sequences": int(n), "threshold": threshold,
    }


def validate_mbdt(
    model,
    frames,
    psf: PSF,
    gt: Localisations | None = None,
    *,
    tolerance: float = 1.0,
    max_frames: int = 50,
    device: str | torch.device | None = None,
) -> dict:
    """How much MB-DT helps localisation on a stack with ground truth.

    The first ``max_frames`` frames are translated to MB-only frames and
    localised with NCC (:func:`~napari_cycleulm.localise.localise_ncc`, MB-only
    PSF); the raw frames are localised the same way with the CEUS PSF.  For
    each, the best F1 over NCC thresholds (:func:`~napari_cycleulm.evaluate.metrics.precision_recall_sweep`)
    is reported.

    Returns
    -------
    dict
        ``best_f1_mbonly``, ``best_f1_raw`` with their ``recall``/``precision``
        /``mean_error_px`` at the best threshold, and ``background_level``
        (median of the MB-only output, relative to its 99.9th percentile: the
        clutter left).  Without ``gt`` only ``background_level``.
    """
    from ..localise import localise_ncc
    from ..evaluate.metrics import precision_recall_sweep
    from ..dl.mbdt_inference import translate

    net = _as_module(model)
    dev = resolve_device(device)
    net = net.to(dev).eval()
    arr = as_frames(frames, "frames", min_frames=1)[:max_frames]
    scale = mbdt_input_scale(arr, NORMALISATION_PERCENTILE, max_values=2e7)
    mb = translate(arr, net, scale=scale, device=dev)
    ref = float(np.percentile(mb, NORMALISATION_PERCENTILE))
    res = {"background_level": float(np.median(mb) / ref) if ref > 0 else float("nan")}
    if gt is None:
        return res
    gt = gt.in_frames(0, len(arr)) if hasattr(gt, "in_frames") else gt

    def best(images, kernel_psf, tag):
        det = localise_ncc(images, kernel_psf, threshold=0.0, device=dev)
        sweep = precision_recall_sweep(gt, det, thresholds=np.linspace(0.05, 0.95, 19),
                                       tolerance=tolerance)
        b = max(sweep, key=lambda d: d["f1"])
        res.update({f"best_f1_{tag}": b["f1"], f"recall_{tag}": b["recall"],
                    f"precision_{tag}": b["precision"], f"mean_error_px_{tag}": b["mean_error_px"],
                    f"threshold_{tag}": b["threshold"]})

    best(mb, psf.mbonly(), "mbonly")
    best(arr, psf, "raw")
    return res
