"""MBL-Net and MBT-Net training on synthetic MB-only data (paper, sections 3.2-3.3).

* :func:`iter_train_mblnet` (and :func:`train_mblnet`): MBL-Net on synthetic
  MB-only patches (:func:`~napari_cycleulm.simulate.mb_only.synthetic_patches`).
* :func:`iter_train_mbtnet` (and :func:`train_mbtnet`): MBT-Net on synthetic
  MB-only sequences (:func:`~napari_cycleulm.simulate.mb_only.synthetic_sequences`).

Both take the MB-only PSF or a sigma range (a generalist over PSF widths,
:data:`DEFAULT_GENERALIST_SIGMA_RANGE_PX` for the shipped weights), share
their set-up (:func:`_synthetic_setup`, :func:`_synthetic_job_common`) and
run in the shared loop of :mod:`.loop`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import torch

from ..dl import losses as L
from ..device import resolve_device
from ..errors import CycleULMError
from ..dl.nets import DISPLAY_NAMES
from ..dl.nets.mbtnet import UPSCALE as MBTNET_UPSCALE
from ..progress import Progress, drive
from ..psf import PSF
from ..simulate.mb_only import SyntheticConfig, synthetic_patches, synthetic_sequences
from .loop import (
    TrainResult,
    _check_int,
    _check_loop_args,
    _cosine,
    _initial_model,
    _Job,
    _OptimizerGroup,
    _plain_config,
    _Precision,
    _resume,
    _run,
    _sigma_range,
)

__all__ = [
    "DEFAULT_GENERALIST_SIGMA_RANGE_PX",
    "MBTNET_LOSS_PARAMS",
    "iter_train_mblnet",
    "iter_train_mbtnet",
    "train_mblnet",
    "train_mbtnet",
]

#: MB-only PSF sigma range (pixels, per axis) of the shipped generalist MBL-Net
#: and MBT-Net: MB-only PSFs are half the CEUS PSF, so this covers CEUS
#: sigmas of 1-5 px (FWHM 2.4-12 px), i.e. typical ULM data sampled at
#: lambda/2 to lambda/4 with FWHMs of 1-3 wavelengths.
DEFAULT_GENERALIST_SIGMA_RANGE_PX = ((0.5, 2.5), (0.5, 2.5))

#: Default MBT-Net loss (``loss_params`` of :func:`iter_train_mbtnet`, arguments of
#: :func:`~napari_cycleulm.dl.losses.mbtnet_loss`): unweighted trajectory BCE
#: plus a soft Dice term, and the velocity MSE weighted 2.  Thin trajectories
#: cover ~2 % of the x4 grid.  Plain BCE learns to predict no trajectory at all;
#: the positive-class weight of 10 used for the first shipped weights fixed that
#: but drew trajectories 3-4x wider than the truth (Dice 0.23 on fresh
#: sequences); the Dice term keeps them thin (Dice 0.51 after 1500 steps from
#: those weights; docs/model_card.md).  The shipped ``mbtnet_default.pt``
#: records the values it was last trained with in ``extra["training"]["loss_params"]``.
MBTNET_LOSS_PARAMS = {"pos_weight": None, "dice_weight": 1.0, "velocity_weight": 2.0}


def _synthetic_setup(psf, sigma_range_px, synthetic_config, what: str):
    """Config and stored range for MBL-Net / MBT-Net training data."""
    if psf is not None and not isinstance(psf, PSF):
        raise CycleULMError(f"psf must be a napari_cycleulm.psf.PSF, got {type(psf).__name__}.")
    if synthetic_config is not None and not isinstance(synthetic_config, SyntheticConfig):
        raise CycleULMError("synthetic_config must be a synthetic.SyntheticConfig.")
    cfg = dataclasses.replace(synthetic_config) if synthetic_config else SyntheticConfig()
    if sigma_range_px is not None:
        rng_px = _sigma_range(sigma_range_px)
        cfg = dataclasses.replace(cfg, sigma_range_px=rng_px)
    elif cfg.sigma_range_px is not None:
        rng_px = _sigma_range(cfg.sigma_range_px)
    elif psf is not None:
        rng_px = ((psf.sigma_y_px,) * 2, (psf.sigma_x_px,) * 2)
    else:
        raise CycleULMError(
            f"{what} needs the MB-only PSF (pass estimate.psf.mbonly()) or a sigma_range_px "
            "to train a generalist over PSF widths."
        )
    cfg.validate()
    return cfg, rng_px


def _synthetic_job_common(kind, psf, sigma_range_px, synthetic_config, init, resume,
                          model_config, seed, device, steps, batch_size, lr, log_every,
                          checkpoint_every, preview_every, patch_size):
    p = _check_int("patch_size", patch_size, 8)
    _check_loop_args(steps, log_every, checkpoint_every, preview_every, batch_size, lr)
    cfg, rng_px = _synthetic_setup(psf, sigma_range_px, synthetic_config, DISPLAY_NAMES[kind])
    dev = resolve_device(device)
    notes: list[str] = []
    history: dict[str, list] = {}
    if resume is not None:
        ck, model, history = _resume(kind, resume, notes)
        start, origin, prior = ck.step, "resume", float(ck.extra.get("seconds", 0.0))
    else:
        model, origin = _initial_model(kind, init, model_config, seed, notes)
        ck, start, prior = None, 0, 0.0
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    optim = _OptimizerGroup(net=opt)
    if ck is not None:
        optim.load_state_dict(ck.optimizer_state, f"checkpoint {ck.path}")
    config = {
        "steps": int(steps), "batch_size": int(batch_size), "lr": float(lr), "patch_size": p,
        "seed": int(seed), "init": origin, "device": str(dev), "schedule": "cosine to 1%",
        "synthetic_config": _plain_config(cfg), "notes": notes,
    }
    extra = {
        "sigma_range_px": rng_px,
        "psf_domain": "mbonly",
        "theta_range_rad": list(cfg.theta_range_rad) if cfg.sigma_range_px is not None else None,
    }
    return p, cfg, dev, model, opt, optim, start, prior, history, config, extra


def iter_train_mblnet(
    psf: PSF | None = None,
    *,
    sigma_range_px=None,
    steps: int = 3000,
    batch_size: int = 16,
    lr: float = 1e-3,
    patch_size: int = 40,
    synthetic_config: SyntheticConfig | None = None,
    init=None,
    out: str | os.PathLike | None = None,
    resume=None,
    checkpoint_every: int | None = 500,
    preview_every: int | None = 250,
    log_every: int = 10,
    device: str | torch.device | None = None,
    seed: int = 0,
    save_on_stop: bool = False,
    model_config: dict | None = None,
    loss_params: dict | None = None,
) -> Generator[Progress, None, TrainResult]:
    """Train MBL-Net on synthetic MB-only patches; a progress generator.

    Parameters
    ----------
    psf : PSF, optional
        The **MB-only** PSF the network will see (pass ``estimate.psf.mbonly()``,
        not the CEUS PSF).
    sigma_range_px : (lo, hi) or ((y_lo, y_hi), (x_lo, x_hi)), optional
        Train a generalist: every patch gets its own PSF with sigmas drawn
        from this range (and a rotation from ``synthetic_config.theta_range_rad``).
        Stored in ``checkpoint.extra["sigma_range_px"]`` (per axis) for the
        run-time range check; with only ``psf`` the degenerate range of its sigmas
        is stored.
    steps, batch_size, lr : int, int, float
        3000 steps of 16 40x40 patches at 1e-3 (Adam, cosine decay to 1%).
    patch_size : int
        Patch side (paper: 40).
    synthetic_config : SyntheticConfig, optional
        MB densities and intensities.
    init : None, "default", path or Checkpoint
        Start from scratch (default) or fine-tune existing weights.
    out, resume, checkpoint_every, preview_every, log_every, device, seed, save_on_stop
        As in :func:`iter_train_mbdt`.  The preview is the probability map of a
        fixed synthetic 64x64 image.
    model_config : dict, optional
        :class:`~napari_cycleulm.dl.nets.MBLNet` arguments (from scratch).
    loss_params : dict, optional
        Extra arguments of :func:`~napari_cycleulm.dl.losses.mblnet_loss`
        (``pos_weight``, ``localisation_weight``, ``count_weight``).

    Returns
    -------
    TrainResult
        Losses ``total, presence, localisation, count``.
    """
    p, cfg, dev, model, opt, optim, start, prior, history, config, extra = _synthetic_job_common(
        "mblnet", psf, sigma_range_px, synthetic_config, init, resume, model_config, seed,
        device, steps, batch_size, lr, log_every, checkpoint_every, preview_every, patch_size,
    )
    if model.config["in_channels"] != 1:
        raise CycleULMError("MBL-Net training on synthetic patches supports in_channels=1 only.")
    lp = dict(loss_params or {})
    config["loss_params"] = lp
    amp = _Precision(dev)
    rng = np.random.default_rng([seed, start])
    bs = int(batch_size)

    def step_fn(step: int) -> dict[str, float]:
        b = synthetic_patches(bs, p, psf, cfg, rng)
        x = torch.from_numpy(b.images[:, None]).to(dev)
        with amp.autocast():
            y = model(x)
        loss = L.mblnet_loss(
            y.float(), torch.from_numpy(b.presence).to(dev)[:, None],
            torch.from_numpy(b.targets).to(dev), torch.from_numpy(b.mask).to(dev), **lp,
        )
        amp.step(loss["total"], opt, "net")
        return {k: float(v.detach()) for k, v in loss.items()}

    pv = synthetic_patches(1, 64, psf, cfg, np.random.default_rng([seed, 999])).images[:, None]

    def preview_fn() -> np.ndarray:
        return torch.sigmoid(model(torch.from_numpy(pv).to(dev))[0, 0]).float().cpu().numpy()

    job = _Job(
        kind="mblnet", model=model, optim=optim, step_fn=step_fn, steps=int(steps),
        lr_factor=lambda s: _cosine(s, int(steps)), config=config, psf=psf, extra=extra,
        preview_fn=preview_fn, start_step=start, history=history, prior_seconds=prior,
    )
    return _run(job, out=out, checkpoint_every=checkpoint_every, preview_every=preview_every,
                log_every=log_every, save_on_stop=save_on_stop)


def iter_train_mbtnet(
    psf: PSF | None = None,
    *,
    sigma_range_px=None,
    steps: int = 2000,
    batch_size: int = 8,
    lr: float = 1e-3,
    patch_size: int = 40,
    n_frames: int = 8,
    upsampling: int = 4,
    synthetic_config: SyntheticConfig | None = None,
    init=None,
    out: str | os.PathLike | None = None,
    resume=None,
    checkpoint_every: int | None = 500,
    preview_every: int | None = 250,
    log_every: int = 10,
    device: str | torch.device | None = None,
    seed: int = 0,
    save_on_stop: bool = False,
    model_config: dict | None = None,
    loss_params: dict | None = None,
) -> Generator[Progress, None, TrainResult]:
    """Train MBT-Net on synthetic MB-only sequences; a progress generator.

    Parameters
    ----------
    psf, sigma_range_px, synthetic_config
        As in :func:`iter_train_mblnet` (``psf`` is the MB-only PSF).  Speeds
        and their per-frame changes come from ``synthetic_config``.
    steps, batch_size, lr
        2000 steps of 8 sequences at 1e-3 (Adam, cosine decay to 1%).
    patch_size : int
        40 (paper, rabbit data; 80 for fast flow).
    n_frames : int
        Frames per input sequence (paper: 8).
    upsampling : int
        Output resolution factor; fixed at 4 by the network.
    init, out, resume, checkpoint_every, preview_every, log_every, device, seed, save_on_stop
        As in :func:`iter_train_mblnet`; the preview is the trajectory
        probability map (4x resolution) of a fixed synthetic sequence.
    model_config : dict, optional
        :class:`~napari_cycleulm.dl.nets.MBTNet` arguments (``n_frames`` is set
        from ``n_frames``).
    loss_params : dict, optional
        Extra arguments of :func:`~napari_cycleulm.dl.losses.mbtnet_loss`;
        Each key defaults to :data:`MBTNET_LOSS_PARAMS` (the shipped weights'
        values); e.g. ``{"dice_weight": 0, "pos_weight": 10}`` for the
        weighted-BCE loss of the first shipped weights.

    Returns
    -------
    TrainResult
        Losses ``total, trajectory, velocity``.
    """
    nf = _check_int("n_frames", n_frames, 1)
    if upsampling != MBTNET_UPSCALE:
        raise CycleULMError(
            f"MBT-Net outputs maps at {MBTNET_UPSCALE}x the input resolution; upsampling must be "
            f"{MBTNET_UPSCALE}, got {upsampling!r}."
        )
    mc = dict(model_config or {})
    mc["n_frames"] = nf
    p, cfg, dev, model, opt, optim, start, prior, history, config, extra = _synthetic_job_common(
        "mbtnet", psf, sigma_range_px, synthetic_config, init, resume, mc, seed,
        device, steps, batch_size, lr, log_every, checkpoint_every, preview_every, patch_size,
    )
    if model.config["n_frames"] != nf:
        raise CycleULMError(
            f"the starting MBT-Net takes {model.config['n_frames']} frames but n_frames={nf}."
        )
    lp = {**MBTNET_LOSS_PARAMS, **(loss_params or {})}
    config.update(n_frames=nf, upsampling=MBTNET_UPSCALE, loss_params=lp)
    amp = _Precision(dev)
    rng = np.random.default_rng([seed, start])
    bs = int(batch_size)

    def step_fn(step: int) -> dict[str, float]:
        b = synthetic_sequences(bs, nf, p, psf, cfg, rng, upsampling=MBTNET_UPSCALE)
        x = torch.from_numpy(b.frames).to(dev)
        with amp.autocast():
            y = model(x)
        loss = L.mbtnet_loss(
            y.float(), torch.from_numpy(b.trajectory).to(dev)[:, None],
            torch.from_numpy(b.velocity).to(dev), **lp,
        )
        amp.step(loss["total"], opt, "net")
        return {k: float(v.detach()) for k, v in loss.items()}

    pv = synthetic_sequences(1, nf, p, psf, cfg, np.random.default_rng([seed, 999])).frames

    def preview_fn() -> np.ndarray:
        return torch.sigmoid(model(torch.from_numpy(pv).to(dev))[0, 0]).float().cpu().numpy()

    job = _Job(
        kind="mbtnet", model=model, optim=optim, step_fn=step_fn, steps=int(steps),
        lr_factor=lambda s: _cosine(s, int(steps)), config=config, psf=psf, extra=extra,
        preview_fn=preview_fn, start_step=start, history=history, prior_seconds=prior,
    )
    return _run(job, out=out, checkpoint_every=checkpoint_every, preview_every=preview_every,
                log_every=log_every, save_on_stop=save_on_stop)


def train_mblnet(psf: PSF | None = None, *, progress: Callable[[Progress], Any] | None = None,
                 **kw) -> TrainResult:
    """Run :func:`iter_train_mblnet` to the end (see :func:`~napari_cycleulm.train.mbdt.train_mbdt`)."""
    return drive(iter_train_mblnet(psf, **kw), progress)


def train_mbtnet(psf: PSF | None = None, *, progress: Callable[[Progress], Any] | None = None,
                 **kw) -> TrainResult:
    """Run :func:`iter_train_mbtnet` to the end (see :func:`~napari_cycleulm.train.mbdt.train_mbdt`)."""
    return drive(iter_train_mbtnet(psf, **kw), progress)
