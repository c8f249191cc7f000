"""MB-DT training: the CycleGAN between CEUS data and synthetic MB-only images (paper, section 3.1).

* :func:`iter_train_mbdt` (and :func:`train_mbdt`, which runs it to the end):
  the CycleGAN between 3 consecutive CEUS frames (domain A, random 40x40
  patches inside an ROI of the user's data) and synthetic MB-only images
  (domain B, rendered with the data's PSF shrunk by 0.5), unpaired, in the
  shared loop of :mod:`.loop`.
* :class:`_CeusSource`: the domain-A patch source (3-frame patches inside
  the ROI, normalised, with time reversal and flips) and its domain B.
* :func:`domain_b_config`: domain-B bubble counts and intensities measured
  on the data, so that MB-DT does not learn to invent bubbles.

Normalisation
-------------
CEUS input to MB-DT is multiplied by one scale for the whole stack,
:func:`~napari_cycleulm.intensity.mbdt_input_scale` (its 99.9th percentile to 1,
lowered until its median is at most ``MBDT_BACKGROUND_LEVEL``, raised at most
``MBDT_MAX_RAISE`` times until it is at least ``MBDT_BACKGROUND_FLOOR``; the
CycleULM pipelines use the same rule); the scale and the convention are stored in
``checkpoint.extra["normalisation"]``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..dl import losses as L
from ..arrays import as_frames, robust_sigma
from ..intensity import MBDT_BACKGROUND_FLOOR, MBDT_BACKGROUND_LEVEL, MBDT_MAX_RAISE, mbdt_input_scale
from ..device import resolve_device
from ..errors import CycleULMError
from ..progress import Progress, drive
from ..psf import PSF
from ..roi import count_patches, patch_corners, rois_to_mask
from ..simulate.mb_only import SyntheticConfig, synthetic_patches
from .loop import (
    TrainResult,
    _check_int,
    _check_loop_args,
    _cyclegan_schedule,
    _initial_model,
    _Job,
    _OptimizerGroup,
    _plain_config,
    _Precision,
    _resume,
    _run,
)

__all__ = ["domain_b_config", "iter_train_mbdt", "train_mbdt"]

#: Frames of a stack MB-DT is fine-tuned on (the first ones): patches of 3 frames are drawn
#: at random, and 2,000 frames (4 s at 500 Hz) hold far more than a fine-tuning run sees,
#: while a 25,000-frame acquisition would not fit in memory.
FINETUNE_MAX_FRAMES = 2000

#: Percentile of the CEUS stack mapped to 1 (library-wide intensity convention).
NORMALISATION_PERCENTILE = 99.9

#: PSF rotation (radians) below which single-axis flips are used as augmentation:
#: a Gaussian is mirror-symmetric only about its principal axes (a rotated one
#: is always symmetric under a 180 degree rotation, which is used regardless).
_FLIP_THETA_TOL = 0.05


#: Mean domain-B bubbles per patch relative to the count measured in the data.
#: 1.0, chosen on the held-out validation acquisition (seed 999, not a training
#: or report seed): MB-DTs trained from scratch for 1500 steps with 2.0 and 1.0
#: gave MIP CNR (ratio) 6.84 and 9.81 dB against 4.14 dB raw, best NCC F1 on
#: the MB-only frames 0.374 and 0.415 (raw 0.371); with 2.0 the generator made
#: bubbles out of speckle peaks.  The measured count misses dim bubbles, so
#: MB-DT learns to leave out the ones hidden in clutter, the lesser error.
DOMAIN_B_COUNT_FACTOR = 1.0


class _CeusSource:
    """Random 3-frame CEUS patches inside an ROI, normalised, with flips."""

    def __init__(self, frames: np.ndarray, psf: PSF, mask: np.ndarray, patch_size: int) -> None:
        self.frames = frames
        self.psf = psf
        self.mb_psf = psf.mbonly()
        self.p = patch_size
        self.corners = patch_corners(mask, patch_size)
        self.scale = mbdt_input_scale(frames, NORMALISATION_PERCENTILE, max_values=2e7)
        self.mask = mask
        self.kernel = L.similarity_blur_kernel(
            psf.sigma_y_px, psf.sigma_x_px, psf.theta_rad, shrink=psf.mbonly_factor
        ) if 0 < psf.mbonly_factor < 1 else None
        self.axis_flips = abs(psf.theta_rad) < _FLIP_THETA_TOL
        self.domain_b: SyntheticConfig | None = None
        self.domain_b_info: dict = {}

    def match_domain_b(self, base: SyntheticConfig | None, count_factor: float, n_frames: int = 40,
                       mean_count: float | None = None) -> None:
        """Set this stack's domain-B counts and intensities from its bubbles (:func:`domain_b_config`)."""
        self.domain_b, self.domain_b_info = domain_b_config(
            self.frames, self.psf, scale=self.scale, mask=self.mask, patch_size=self.p,
            n_frames=n_frames, base=base, count_factor=count_factor, mean_count=mean_count,
        )

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        t_all, p = self.frames.shape[0], self.p
        ts = rng.integers(1, t_all - 1, size=n)  # centre frames with both neighbours
        cs = self.corners[rng.integers(len(self.corners), size=n)]
        out = np.empty((n, 3, p, p), np.float32)
        for i, (t, (y0, x0)) in enumerate(zip(ts, cs)):
            out[i] = self.frames[t - 1 : t + 2, y0 : y0 + p, x0 : x0 + p]
        out *= self.scale
        flips = rng.random((n, 4)) < 0.5
        for i in range(n):
            a = out[i]
            if flips[i, 0]:  # reversed time: the same flow backwards
                a = a[::-1]
            if self.axis_flips:
                if flips[i, 1]:
                    a = a[:, ::-1]
                if flips[i, 2]:
                    a = a[:, :, ::-1]
            elif flips[i, 3]:  # 180 degree rotation: valid for any Gaussian PSF
                a = a[:, ::-1, ::-1]
            out[i] = a
        return out

    def sample_b(self, rng, n, config) -> np.ndarray:
        # Synthetic positions are uniform, so flips would not change their distribution.
        cfg = self.domain_b if self.domain_b is not None else config
        return synthetic_patches(n, self.p, self.mb_psf, cfg, rng).images[:, None]


def domain_b_config(
    frames,
    psf: PSF,
    *,
    scale: float = 1.0,
    mask: np.ndarray | None = None,
    patch_size: int = 40,
    n_frames: int = 40,
    base: SyntheticConfig | None = None,
    count_factor: float = DOMAIN_B_COUNT_FACTOR,
    mean_count: float | None = None,
    device: str | torch.device | None = None,
) -> tuple[SyntheticConfig, dict]:
    """Domain-B (synthetic MB-only) bubble counts and intensities matched to the data.

    CycleGAN learns to make its MB-only output indistinguishable from domain B,
    so domain B must look like the data's bubbles: with far more bubbles per
    patch than the data holds the generator learns to *invent* bubbles from
    speckle (measured: 10 synthetic bubbles per 40x40 patch against ~1.3 in
    the data cut the MIP's CNR by 7 dB instead of raising it).  The count is
    measured the conventional way (Bradley-Roth thresholding + NCC at the
    Baseline 1 threshold) on ``n_frames`` frames spread over the stack, inside
    the ROI; that count misses the dimmest bubbles and includes a few speckle
    peaks, which is the right target: MB-DT can only restore bubbles visible
    above the clutter.

    Parameters
    ----------
    frames : (T, H, W) array
        CEUS stack (only the ``n_frames`` measured frames are read).
    scale : float
        Factor that brings the stack to MB-DT's units
        (:func:`~napari_cycleulm.intensity.mbdt_input_scale`); 1 when ``frames``
        are already scaled.
    psf : PSF
        CEUS PSF of the data.
    mask : (H, W) bool array, optional
        ROI; default the whole frame.
    patch_size : int
        Training patch side, pixels.
    n_frames : int
        Frames measured (evenly spaced).
    base : SyntheticConfig, optional
        Other settings (PSF range, noise, ...) kept as given.
    count_factor : float
        Mean synthetic count per patch relative to the measured one (default
        :data:`DOMAIN_B_COUNT_FACTOR`, 1.0): too many synthetic bubbles make
        MB-DT invent bubbles from speckle, too few make it drop dim ones, and
        the first is the worse error for ULM.
    mean_count : float, optional
        Known bubbles per patch (e.g. of a simulated training stack): used
        instead of the measured count, uncapped by the detector (the
        amplitudes are still measured).

    Returns
    -------
    (SyntheticConfig, dict)
        ``n_min = 0`` and ``n_max`` (at least 2) such that the uniform count's
        mean is ``count_factor`` times the measured count per patch,
        ``intensity_range`` from half the 5th to the 95th percentile of the
        detected peak amplitudes (clipped to 0.05-1.5); and
        a dict of what was measured (``mbs_per_patch``, ``n_detections``,
        ``frames_measured``, ``intensity_percentiles``).
    """
    from ..localise import localise_ncc
    from ..preprocess import adaptive_threshold

    t = len(frames)
    idx = np.unique(np.linspace(0, t - 1, min(n_frames, t)).round().astype(int))
    # Only the measured frames are read and scaled (the stack may be long or lazy).
    sub = as_frames(np.asarray(frames[idx], dtype=np.float32) * np.float32(scale), "frames", min_frames=1)
    _, h, w = sub.shape
    roi = np.ones((h, w), bool) if mask is None else np.asarray(mask, bool)
    det = localise_ncc(adaptive_threshold(sub, psf=psf, device=device), psf, threshold=0.3,
                       device=device)
    iy = np.clip(np.round(det["y"]).astype(int), 0, h - 1)
    ix = np.clip(np.round(det["x"]).astype(int), 0, w - 1)
    fr = det["frame"].astype(int)  # indexes ``sub``
    amp_all = sub[fr, iy, ix]
    # White noise (thermal noise at depth) passes thresholding + NCC as
    # single-pixel specks: keep peaks above median + 3 robust SDs of their frame,
    # which a Rayleigh speckle background exceeds at ~0.1% of its pixels.
    med = np.median(sub, axis=(1, 2))
    mad = robust_sigma(sub, axis=(1, 2), center=med)
    inside = roi[iy, ix] & (amp_all > med[fr] + 3.0 * mad[fr])
    per_px = inside.sum() / (len(idx) * max(roi.sum(), 1))
    measured = float(per_px * patch_size**2)
    if mean_count is None:
        mean_count = measured
    elif not (np.isfinite(mean_count) and mean_count >= 0):
        raise CycleULMError(f"mean_count must be a number of bubbles per patch >= 0, got {mean_count}.")
    amp = amp_all[inside]
    cfg = dataclasses.replace(base) if base is not None else SyntheticConfig()
    # The count misses the dimmer and the overlapping bubbles: on five
    # simulated settings (clutter -6 to -20 dB, 10-60 MBs per frame, PSF FWHM
    # 150-400 um) it found 0.2-0.7 of them (docs/science.md).  Those are the
    # bubbles MB-DT cannot see either.  Draw counts uniformly in 0..n_max with a
    # mean of ``count_factor`` x the measured count.
    cfg.n_min = 0
    cfg.n_max = max(2, int(round(count_factor * 2 * mean_count)))
    if len(amp) >= 10:
        lo, hi = np.percentile(amp, [5, 95])
        lo = float(np.clip(0.5 * lo, 0.05, 1.0))  # dimmer bubbles hide below the detection threshold
        cfg.intensity_range = (lo, float(np.clip(hi, lo + 0.05, 1.5)))
    else:
        lo = hi = float("nan")
    cfg.validate()
    info = {"mbs_per_patch": float(mean_count), "mbs_per_patch_measured": measured,
            "n_detections": int(inside.sum()),
            "frames_measured": int(len(idx)),
            "intensity_percentiles_5_95": [float(lo), float(hi)]}
    return cfg, info


def _set_requires_grad(modules: Sequence[nn.Module], flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def iter_train_mbdt(
    frames,
    psf,
    *,
    roi_mask=None,
    init="default",
    steps: int = 2000,
    batch_size: int = 8,
    lr: float = 2e-4,
    lambda_cycle: float = L.LAMBDA_CYCLE,
    lambda_similarity: float = L.LAMBDA_SIMILARITY,
    patch_size: int = 40,
    out: str | os.PathLike | None = None,
    resume=None,
    checkpoint_every: int | None = 250,
    preview_every: int | None = 250,
    preview_frame: int | None = None,
    log_every: int = 10,
    device: str | torch.device | None = None,
    seed: int = 0,
    synthetic_config: SyntheticConfig | None = None,
    domain_b_count_factor: float = DOMAIN_B_COUNT_FACTOR,
    domain_b_counts=None,
    save_on_stop: bool = False,
    model_config: dict | None = None,
) -> Generator[Progress, None, TrainResult]:
    """Train (or fine-tune) MB-DT on a CEUS acquisition; a progress generator.

    Domain A: random ``patch_size`` patches of 3 consecutive frames
    ``(t-1, t, t+1)`` inside the ROI, scaled so the stack's 99.9th percentile
    is 1, with random time reversal and flips (single-axis flips only for an
    axis-aligned PSF, else 180 degree rotations).  Domain B: synthetic
    MB-only patches rendered with ``psf.mbonly()`` (paper: the data PSF
    shrunk by 0.5), unpaired.  Losses: LSGAN adversarial + L1 cycle + L1
    similarity (the MB-only output blurred back to the CEUS PSF, against the
    centre CEUS frame); Adam(``lr``, betas (0.5, 0.999)) for the generators
    and the discriminators; CycleGAN schedule (constant ``lr`` for the first
    half, then linear decay).

    Parameters
    ----------
    frames : array_like or list of array_like
        ``(T, H, W)`` CEUS stack with ``T >= 3`` and ``H, W >= patch_size``
        (clutter-filtered envelope).  A list of stacks (with a list of PSFs
        and of ROIs) trains one model on all of them: each step draws its
        batch from one stack (used for the shipped default weights).
    psf : PSF or list of PSF
        The CEUS PSF of the data (e.g. ``psf.estimate_psf_auto(frames).psf``).
    roi_mask : (H, W) bool array, list of vertex arrays, or None
        ROI the patches are drawn from (see :mod:`napari_cycleulm.roi`);
        default the whole frame.
    init : "default", None, path or Checkpoint
        ``"default"``: fine-tune the shipped default MB-DT weights when they
        exist, else train from scratch (noted in ``config["notes"]`` and the
        first progress event); None: from scratch (``model_config`` widths);
        a path: fine-tune that checkpoint.
    steps : int
        Total number of steps (including resumed ones).  Default 2000: about
        5 minutes of fine-tuning on 2 CPU cores (measured 0.14 s/step with
        batch 8 on an otherwise idle machine; previews and checkpoints add
        little), so training on the user's own data stays interactive; raise
        it on a GPU or when training from scratch.
    batch_size : int
        Patches per domain per step (8).
    lr : float
        Adam learning rate (2e-4, CycleGAN).
    lambda_cycle, lambda_similarity : float
        Loss weights (10 and 1, see :mod:`napari_cycleulm.dl.losses`).
    patch_size : int
        Patch side (paper: 40).
    out : path, optional
        Checkpoint file written every ``checkpoint_every`` steps and at the end.
    resume : path or Checkpoint, optional
        Continue a run: weights, optimiser state, step and history (overrides ``init``).
    checkpoint_every, preview_every, log_every : int
        Periods in steps (None disables checkpoints / previews).
    preview_frame : int, optional
        Frame translated for the preview (``Progress.info["preview"]``, an
        ``(H, W)`` MB-only image); default the middle frame.
    device : str or torch.device, optional
        Default CUDA when available (mixed precision there), else CPU.
    seed : int
        Seeds the initial weights and the patch sampling.
    synthetic_config : SyntheticConfig, optional
        Domain-B MB counts / intensities.  Default: matched to each stack by
        :func:`domain_b_config` (bubbles per patch and peak amplitudes measured
        with thresholding + NCC), because a domain B denser than the data
        teaches the generator to invent bubbles from speckle.
    domain_b_count_factor : float
        With the default domain B: mean synthetic bubbles per patch relative to
        the count measured in the data (see :func:`domain_b_config`).
    domain_b_counts : float or list of (float or None), optional
        With the default domain B: known bubbles per patch of each stack (a
        simulated training stack's true density), instead of the measured,
        detector-capped count; None for a stack keeps its measured count.
    save_on_stop : bool
        On Stop, write the current weights to ``out`` (atomically) instead of
        keeping only the last periodic checkpoint.
    model_config : dict, optional
        :class:`~napari_cycleulm.dl.nets.MBDT` arguments when training from scratch.

    Yields
    ------
    Progress
        ``done=step, total=steps, stage="train mbdt", info={"step", "losses"
        (running means of total, gan_ab, gan_ba, cycle_a, cycle_b, similarity,
        d_total, d_a, d_b), "preview", "lr", "steps_per_s", "elapsed_s",
        "checkpoint"}``; the first event (step 0 or the resumed step) has
        ``"notes"``.

    Returns
    -------
    TrainResult

    Raises
    ------
    CycleULMError
        Fewer than 3 frames, frames smaller than a patch, a missing PSF, an
        ROI without a single patch, bad parameters or checkpoints.  Raised when
        the function is called (before the first step).
    """
    multi = isinstance(frames, (list, tuple)) and all(np.ndim(f) == 3 for f in frames)
    stacks = list(frames) if multi else [frames]
    psfs = _as_list(psf)
    if psf is None or any(p is None for p in psfs):
        raise CycleULMError(
            "MB-DT training needs the CEUS PSF of the data: estimate it with "
            "psf.estimate_psf_auto(frames).psf (or the PSF widget)."
        )
    if len(psfs) == 1 and len(stacks) > 1:
        psfs = psfs * len(stacks)
    if len(psfs) != len(stacks):
        raise CycleULMError(f"got {len(stacks)} stacks but {len(psfs)} PSFs.")
    for p in psfs:
        if not isinstance(p, PSF):
            raise CycleULMError(f"psf must be a napari_cycleulm.psf.PSF, got {type(p).__name__}.")
    rois = [None] * len(stacks) if roi_mask is None else (
        list(roi_mask) if len(stacks) > 1 else [roi_mask]
    )
    if len(rois) != len(stacks):
        raise CycleULMError(f"got {len(stacks)} stacks but {len(rois)} ROIs.")
    p = _check_int("patch_size", patch_size, 8)
    _check_loop_args(steps, log_every, checkpoint_every, preview_every, batch_size, lr)
    if lambda_cycle < 0 or lambda_similarity < 0:
        raise CycleULMError("lambda_cycle and lambda_similarity must be >= 0.")
    if synthetic_config is not None and not isinstance(synthetic_config, SyntheticConfig):
        raise CycleULMError("synthetic_config must be a synthetic.SyntheticConfig.")
    syn = synthetic_config or SyntheticConfig()
    syn.validate()
    match_data = synthetic_config is None
    known_counts = _as_list(domain_b_counts) if domain_b_counts is not None else [None] * len(stacks)
    if len(known_counts) != len(stacks):
        raise CycleULMError(f"got {len(stacks)} stacks but {len(known_counts)} domain_b_counts.")

    sources = []
    for i, (stack, ps, roi) in enumerate(zip(stacks, psfs, rois)):
        name = "frames" if len(stacks) == 1 else f"frames[{i}]"
        arr = as_frames(stack, name, min_frames=3)
        t, h, w = arr.shape
        if h < p or w < p:
            raise CycleULMError(
                f"{name} are {h}x{w} pixels, smaller than one {p}x{p} training patch; use "
                "larger frames or a smaller patch_size."
            )
        if roi is None:
            mask = np.ones((h, w), bool)
        else:
            mask = rois_to_mask(roi, (h, w))
        if count_patches(mask, p) == 0:
            raise CycleULMError(
                f"the ROI is smaller than one {p}x{p} patch; draw a larger region."
            )
        source = _CeusSource(arr, ps, mask, p)
        if match_data:
            source.match_domain_b(None, domain_b_count_factor, mean_count=known_counts[i])
        sources.append(source)

    dev = resolve_device(device)
    notes: list[str] = []
    history: dict[str, list] = {}
    if resume is not None:
        ck, model, history = _resume("mbdt", resume, notes)
        start, origin, prior = ck.step, "resume", float(ck.extra.get("seconds", 0.0))
    else:
        model, origin = _initial_model("mbdt", init, model_config, seed, notes)
        ck, start, prior = None, 0, 0.0
    model.to(dev)
    disc_min = model.d_a.min_size
    if p < disc_min:
        raise CycleULMError(
            f"patch_size {p} is smaller than the discriminators need ({disc_min}); use a larger patch."
        )
    opt_g = torch.optim.Adam(
        list(model.g_ab.parameters()) + list(model.g_ba.parameters()), lr=lr, betas=(0.5, 0.999)
    )
    opt_d = torch.optim.Adam(
        list(model.d_a.parameters()) + list(model.d_b.parameters()), lr=lr, betas=(0.5, 0.999)
    )
    optim = _OptimizerGroup(g=opt_g, d=opt_d)
    if ck is not None:
        optim.load_state_dict(ck.optimizer_state, f"checkpoint {ck.path}")
    amp = _Precision(dev)
    rng = np.random.default_rng([seed, start])
    kernels = [None if s.kernel is None else s.kernel.to(dev) for s in sources]
    bs = int(batch_size)

    def step_fn(step: int) -> dict[str, float]:
        k = int(rng.integers(len(sources))) if len(sources) > 1 else 0
        src = sources[k]
        real_a = torch.from_numpy(src.sample(rng, bs)).to(dev)
        real_b = torch.from_numpy(src.sample_b(rng, bs, syn)).to(dev)
        _set_requires_grad([model.d_a, model.d_b], False)
        with amp.autocast():
            fake_b = model.g_ab(real_a)
            rec_a = model.g_ba(fake_b)
            fake_a = model.g_ba(real_b)
            rec_b = model.g_ab(fake_a)
            d_b_fake = model.d_b(fake_b)
            d_a_fake = model.d_a(fake_a)
        g = L.cyclegan_generator_objective(
            real_a=real_a, real_b=real_b, fake_a=fake_a.float(), fake_b=fake_b.float(),
            rec_a=rec_a.float(), rec_b=rec_b.float(), d_a_fake=d_a_fake.float(),
            d_b_fake=d_b_fake.float(), lambda_cycle=lambda_cycle,
            lambda_similarity=lambda_similarity, similarity_kernel=kernels[k],
        )
        amp.step(g["total"], opt_g, "g")
        _set_requires_grad([model.d_a, model.d_b], True)
        with amp.autocast():
            da_real, da_fake = model.d_a(real_a), model.d_a(fake_a.detach())
            db_real, db_fake = model.d_b(real_b), model.d_b(fake_b.detach())
        d = L.cyclegan_discriminator_objective(
            d_a_real=da_real.float(), d_a_fake=da_fake.float(),
            d_b_real=db_real.float(), d_b_fake=db_fake.float(),
        )
        amp.step(d["total"], opt_d, "d")
        out_losses = {k2: float(v.detach()) for k2, v in g.items()}
        out_losses.update(d_total=float(d["total"].detach()), d_a=float(d["d_a"].detach()),
                          d_b=float(d["d_b"].detach()))
        return out_losses

    src0 = sources[0]
    t_n = src0.frames.shape[0]
    pf = t_n // 2 if preview_frame is None else int(preview_frame)
    if not 0 <= pf < t_n:
        raise CycleULMError(f"preview_frame {preview_frame} is outside 0..{t_n - 1}.")

    def preview_fn() -> np.ndarray:
        idx = np.clip([pf - 1, pf, pf + 1], 0, t_n - 1)  # edge replication
        x = torch.from_numpy(src0.frames[idx] * src0.scale)[None].to(dev)
        with amp.autocast():
            y = model.g_ab(x)
        return y[0, 0].float().cpu().numpy()

    mb_sig = [(s.mb_psf.sigma_y_px, s.mb_psf.sigma_x_px) for s in sources]
    ceus_sig = [(s.psf.sigma_y_px, s.psf.sigma_x_px) for s in sources]

    def span(vals, i):
        return (min(v[i] for v in vals), max(v[i] for v in vals))

    config = {
        "steps": int(steps), "batch_size": bs, "lr": float(lr), "betas": [0.5, 0.999],
        "lambda_cycle": float(lambda_cycle), "lambda_similarity": float(lambda_similarity),
        "patch_size": p, "seed": int(seed), "init": origin, "device": str(dev),
        "mixed_precision": amp.enabled, "schedule": "constant, then linear decay over the second half",
        "n_stacks": len(sources), "n_patch_positions": [int(len(s.corners)) for s in sources],
        "roi_fraction": [float(s.mask.mean()) for s in sources],
        "stack_shapes": [list(s.frames.shape) for s in sources],
        "synthetic_config": (
            [_plain_config(s.domain_b) for s in sources] if match_data else _plain_config(syn)
        ),
        "domain_b": "matched to the data" if match_data else "given",
        "domain_b_count_factor": float(domain_b_count_factor) if match_data else None,
        "domain_b_counts": "known (given)" if match_data and any(c is not None for c in known_counts)
        else ("measured" if match_data else None),
        "domain_b_measured": [s.domain_b_info for s in sources] if match_data else None,
        "notes": notes,
    }
    extra = {
        "sigma_range_px": (span(mb_sig, 0), span(mb_sig, 1)),  # MB-only PSF sigmas it outputs
        "ceus_sigma_range_px": (span(ceus_sig, 0), span(ceus_sig, 1)),
        "normalisation": {
            "method": "mbdt_input_scale",
            "percentile": NORMALISATION_PERCENTILE,
            "background_level": MBDT_BACKGROUND_LEVEL,
            "background_floor": MBDT_BACKGROUND_FLOOR,
            "max_raise": MBDT_MAX_RAISE,
            "scale": [float(s.scale) for s in sources],
            "rule": "CEUS frames are multiplied by one scale per stack so that the stack's "
                    "99.9th percentile is 1, lowered until its median is at most background_level, "
                    "or raised (at most max_raise times) until it is at least background_floor",
        },
        "psfs": [s.psf.to_dict() | {"kernel": None, "mbonly_kernel": None, "measured": None}
                 for s in sources] if len(sources) > 1 else None,
    }
    job = _Job(
        kind="mbdt", model=model, optim=optim, step_fn=step_fn, steps=int(steps),
        lr_factor=lambda s: _cyclegan_schedule(s, int(steps)), config=config,
        psf=psfs[0], extra=extra, preview_fn=preview_fn, start_step=start, history=history,
        prior_seconds=prior,
    )
    return _run(job, out=out, checkpoint_every=checkpoint_every, preview_every=preview_every,
                log_every=log_every, save_on_stop=save_on_stop)


def train_mbdt(frames, psf, *, progress: Callable[[Progress], Any] | None = None, **kw) -> TrainResult:
    """Run :func:`iter_train_mbdt` to the end; ``progress`` is called with every event
    (return ``False`` from it to stop: :class:`~napari_cycleulm.progress.Cancelled` is raised)."""
    return drive(iter_train_mbdt(frames, psf, **kw), progress)
