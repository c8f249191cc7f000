"""Training the three CycleULM networks (paper, sections 3.1-3.3).

Every trainer is a generator that yields :class:`~napari_cycleulm.progress.Progress`
events and returns a :class:`TrainResult`, so the same code runs from a
script (:func:`train_mbdt` and friends, which :func:`~napari_cycleulm.progress.drive`
it), the command line (with a progress bar) and napari (in a thread worker
whose Stop button closes the generator).

* :func:`iter_train_mbdt`: MB-DT, the CycleGAN between 3 consecutive CEUS
  frames (domain A, random 40x40 patches inside an ROI of the user's data)
  and synthetic MB-only images (domain B, rendered with the data's PSF
  shrunk by 0.5), unpaired.
* :func:`iter_train_mblnet`: MBL-Net on synthetic MB-only patches.
* :func:`iter_train_mbtnet`: MBT-Net on synthetic MB-only sequences.

All three share one loop (:func:`_run`): device choice, seeding, mixed
precision on CUDA (plain float32 on the CPU), progress events with running
mean losses every ``log_every`` steps, previews every ``preview_every``
steps, atomic checkpoints every ``checkpoint_every`` steps and at the end,
resuming from a checkpoint (weights, optimiser state, step and loss
history), and cooperative cancellation.

Stopping
--------
Closing the generator (napari's Stop, or ``drive`` with a callback returning
``False``) ends training at the next progress event.  The checkpoint file at
``out`` is always complete: it is written atomically, so it is either the
last periodic checkpoint or absent, never a partial file.  By default Stop
keeps that last periodic checkpoint (up to ``checkpoint_every`` steps
behind); with ``save_on_stop=True`` the current weights are written
(atomically) before the generator closes, which is what an interactive user
pressing Stop expects.

Normalisation
-------------
CEUS input to MB-DT is multiplied by one scale for the whole stack so that
its 99.9th percentile is 1 (the library-wide convention, also used by
``pipeline``); the scale and the convention are stored in
``checkpoint.extra["normalisation"]``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import losses as L
from .arrays import as_frames, intensity_scale, robust_sigma
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .device import resolve_device
from .errors import CycleULMError
from .nets import DISPLAY_NAMES, MBDT, MBLNet, MBTNet
from .nets.mbtnet import UPSCALE as MBTNET_UPSCALE
from .progress import Progress, drive
from .psf import PSF
from .roi import count_patches, patch_corners, rois_to_mask
from .synthetic import SyntheticConfig, synthetic_patches, synthetic_sequences
from .io.tables import Localisations

__all__ = [
    "DEFAULT_GENERALIST_SIGMA_RANGE_PX",
    "TrainResult",
    "iter_train_mbdt",
    "iter_train_mblnet",
    "iter_train_mbtnet",
    "train_mbdt",
    "train_mblnet",
    "train_mbtnet",
    "validate_mbdt",
    "validate_mblnet",
    "validate_mbtnet",
]

#: Frames of a stack MB-DT is fine-tuned on (the first ones): patches of 3 frames are drawn
#: at random, and 2,000 frames (4 s at 500 Hz) hold far more than a fine-tuning run sees,
#: while a 25,000-frame acquisition would not fit in memory.
FINETUNE_MAX_FRAMES = 2000

#: Percentile of the CEUS stack mapped to 1 (library-wide intensity convention).
NORMALISATION_PERCENTILE = 99.9

#: MB-only PSF sigma range (pixels, per axis) of the shipped generalist MBL-Net
#: and MBT-Net: MB-only PSFs are half the CEUS PSF, so this covers CEUS
#: sigmas of 1-5 px (FWHM 2.4-12 px), i.e. typical ULM data sampled at
#: lambda/2 to lambda/4 with FWHMs of 1-3 wavelengths.
DEFAULT_GENERALIST_SIGMA_RANGE_PX = ((0.5, 2.5), (0.5, 2.5))

#: Positive-class weight of MBT-Net's trajectory BCE (``loss_params["pos_weight"]``
#: default of :func:`iter_train_mbtnet`).  Thin trajectories cover ~2 % of the x4
#: grid; without this weight the network learns to predict no trajectory at all.
#: The shipped ``mbtnet_default.pt`` was trained with 10 (its
#: ``extra["training"]["loss_params"]``).
MBTNET_POS_WEIGHT = 10.0

#: PSF rotation (radians) below which single-axis flips are used as augmentation:
#: a Gaussian is mirror-symmetric only about its principal axes (a rotated one
#: is always symmetric under a 180 degree rotation, which is used regardless).
_FLIP_THETA_TOL = 0.05


# ---------------------------------------------------------------------------
# Result and shared machinery
# ---------------------------------------------------------------------------
@dataclass
class TrainResult:
    """Outcome of a training run.

    Attributes
    ----------
    model : torch.nn.Module
        The trained network (on the training device, eval mode).  For MB-DT
        the whole :class:`~napari_cycleulm.nets.MBDT` (``model.g_ab`` is the
        translator).
    checkpoint_path : pathlib.Path or None
        The checkpoint written at ``out`` (None when ``out`` was not given).
    history : dict of list
        Per-step losses: ``"step"`` (1-based step numbers) and one list of
        floats per loss name, over all steps including resumed ones.
    steps_done : int
        Last completed step (the total including resumed steps).
    seconds : float
        Wall time of this run.
    config : dict
        Training parameters (plain values), including ``notes`` (e.g. that the
        default weights were missing and training started from scratch).
    """

    model: nn.Module
    checkpoint_path: Path | None
    history: dict[str, list]
    steps_done: int
    seconds: float
    config: dict = field(default_factory=dict)


class _OptimizerGroup:
    """Several named optimisers behind one ``state_dict`` (for checkpoints)."""

    def __init__(self, **optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers
        self.base_lrs = {
            k: [g["lr"] for g in o.param_groups] for k, o in optimizers.items()
        }

    def state_dict(self) -> dict:
        return {k: o.state_dict() for k, o in self.optimizers.items()}

    def load_state_dict(self, state: dict, source: str) -> None:
        if not isinstance(state, dict) or set(state) != set(self.optimizers):
            raise CycleULMError(
                f"{source} holds no matching optimiser state to resume from; use it as init= "
                "(fine-tuning from its weights) instead of resume=."
            )
        for k, o in self.optimizers.items():
            o.load_state_dict(state[k])
        # Resumed state carries the stored learning rates; the schedule resets them.

    def set_lr_factor(self, factor: float) -> None:
        for k, o in self.optimizers.items():
            for g, base in zip(o.param_groups, self.base_lrs[k]):
                g["lr"] = base * factor


class _Precision:
    """Mixed precision on CUDA (autocast + one GradScaler per optimiser); fp32 elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.enabled = device.type == "cuda"
        self.scalers: dict[str, Any] = {}

    def autocast(self):
        if self.enabled:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, name: str) -> None:
        optimizer.zero_grad(set_to_none=True)
        if not self.enabled:
            loss.backward()
            optimizer.step()
            return
        scaler = self.scalers.get(name)
        if scaler is None:
            scaler = self.scalers[name] = torch.amp.GradScaler("cuda")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


@dataclass
class _Job:
    """Everything :func:`_run` needs about one training run."""

    kind: str
    model: nn.Module
    optim: _OptimizerGroup
    step_fn: Callable[[int], dict[str, float]]
    steps: int
    lr_factor: Callable[[int], float]
    config: dict
    psf: Any
    extra: dict
    preview_fn: Callable[[], np.ndarray] | None = None
    start_step: int = 0
    history: dict[str, list] = field(default_factory=dict)
    prior_seconds: float = 0.0


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise CycleULMError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (math.isfinite(v) and v > 0):
        raise CycleULMError(f"{name} must be a positive number, got {value!r}.")
    return v


def _check_loop_args(steps, log_every, checkpoint_every, preview_every, batch_size, lr) -> None:
    _check_int("steps", steps, 0)
    _check_int("log_every", log_every, 1)
    _check_int("batch_size", batch_size, 1)
    _check_positive("lr", lr)
    for name, v in (("checkpoint_every", checkpoint_every), ("preview_every", preview_every)):
        if v is not None:
            _check_int(name, v, 1)


def _run(
    job: _Job,
    *,
    out: str | os.PathLike | None,
    checkpoint_every: int | None,
    preview_every: int | None,
    log_every: int,
    save_on_stop: bool,
) -> Generator[Progress, None, TrainResult]:
    """The training loop shared by all trainers (see the module docstring)."""
    out_path = None if out is None else Path(out)
    stage = f"train {job.kind}"
    history = job.history
    history.setdefault("step", [])
    notes = job.config.setdefault("notes", [])
    step = job.start_step
    saved_step = -1
    t0 = time.perf_counter()

    def save(at: int) -> None:
        nonlocal saved_step
        extra = dict(job.extra)
        extra["history"] = history
        extra["training"] = job.config
        extra["seconds"] = job.prior_seconds + (time.perf_counter() - t0)
        job.model.eval()
        save_checkpoint(
            out_path, job.model, kind=job.kind, optimizer=job.optim, step=at, psf=job.psf,
            extra=extra,
        )
        saved_step = at

    def preview() -> np.ndarray | None:
        if job.preview_fn is None:
            return None
        job.model.eval()
        with torch.no_grad():
            return job.preview_fn()

    window: dict[str, list[float]] = {}
    last_t, last_step = t0, step
    try:
        yield Progress(
            step, job.steps, stage,
            {"step": step, "losses": {}, "preview": None, "notes": list(notes)},
        )
        while step < job.steps:
            job.optim.set_lr_factor(job.lr_factor(step))
            job.model.train()
            losses = job.step_fn(step)
            step += 1
            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                where = f"; the checkpoint at {out_path} keeps step {saved_step}" if saved_step >= 0 else ""
                raise CycleULMError(
                    f"{DISPLAY_NAMES[job.kind]} training diverged at step {step} (loss "
                    f"{', '.join(bad)} is not finite){where}; lower the learning rate."
                )
            history["step"].append(step)
            for k, v in losses.items():
                history.setdefault(k, []).append(float(v))
                window.setdefault(k, []).append(float(v))
            if (
                out_path is not None and checkpoint_every
                and step % checkpoint_every == 0 and step < job.steps
            ):
                save(step)
            want_preview = bool(preview_every) and (step % preview_every == 0 or step == job.steps)
            if step % log_every == 0 or step == job.steps or want_preview:
                now = time.perf_counter()
                info = {
                    "step": step,
                    "losses": {k: float(np.mean(v)) for k, v in window.items()},
                    "preview": preview() if want_preview else None,
                    "lr": job.optim.optimizers[next(iter(job.optim.optimizers))].param_groups[0]["lr"],
                    "steps_per_s": (step - last_step) / max(now - last_t, 1e-9),
                    "elapsed_s": now - t0,
                    "checkpoint": str(out_path) if saved_step >= 0 else None,
                }
                window = {}
                last_t, last_step = now, step
                yield Progress(step, job.steps, stage, info)
        if out_path is not None:
            save(step)
    except GeneratorExit:
        # Stop: the last periodic checkpoint is complete (atomic writes); optionally
        # replace it by the current weights, also atomically.
        if save_on_stop and out_path is not None and step > saved_step and step > 0:
            save(step)
        raise
    job.model.eval()
    return TrainResult(
        model=job.model,
        checkpoint_path=out_path if saved_step >= 0 else None,
        history=history,
        steps_done=step,
        seconds=time.perf_counter() - t0,
        config=job.config,
    )


def _default_weights_path(kind: str) -> Path:
    """Path of the shipped default weights (``models.DEFAULT_WEIGHTS`` when available)."""
    try:
        from .models import DEFAULT_WEIGHTS  # owned by the inference helper

        return Path(DEFAULT_WEIGHTS[kind])
    except (ImportError, KeyError, AttributeError):
        return Path(__file__).parent / "weights" / f"{kind}_default.pt"


def _initial_model(
    kind: str, init, model_config: dict | None, seed: int, notes: list[str]
) -> tuple[nn.Module, str]:
    """Build the network to train: from scratch, the default weights, a path or a Checkpoint.

    Returns the model and a short description of where it came from.
    """
    cls = {"mbdt": MBDT, "mblnet": MBLNet, "mbtnet": MBTNet}[kind]
    name = DISPLAY_NAMES[kind]
    if isinstance(init, str) and init == "default":
        path = _default_weights_path(kind)
        if path.is_file():
            ck = load_checkpoint(path, kind=kind, device="cpu")
            notes.append(f"fine-tuning from the default {name} weights ({path.name}).")
            return ck.model, f"default:{path.name}"
        notes.append(
            f"no default {name} weights shipped ({path.name} missing); training from scratch."
        )
        init = None
    if init is None:
        # Seeded initialisation without touching the global torch random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = cls(**(model_config or {}))
            except TypeError as exc:
                raise CycleULMError(f"invalid {name} model_config {model_config!r}: {exc}.") from exc
        return model, "scratch"
    if isinstance(init, Checkpoint):
        if init.kind != kind:
            raise CycleULMError(f"init is an {DISPLAY_NAMES[init.kind]} checkpoint, not {name}.")
        return copy.deepcopy(init.model).cpu(), f"checkpoint:{init.path}"
    if isinstance(init, cls):
        return copy.deepcopy(init).cpu(), "model"
    if isinstance(init, (str, os.PathLike)):
        ck = load_checkpoint(init, kind=kind, device="cpu")
        notes.append(f"fine-tuning from {Path(init).name}.")
        return ck.model, f"checkpoint:{Path(init)}"
    raise CycleULMError(
        f"init must be 'default', None, a checkpoint path, a Checkpoint or an {name} model; "
        f"got {type(init).__name__}."
    )


def _resume(kind: str, resume, notes: list[str]):
    """Load a checkpoint to resume from: model, step, history and seconds."""
    ck = resume if isinstance(resume, Checkpoint) else load_checkpoint(resume, kind=kind, device="cpu")
    if ck.kind != kind:
        raise CycleULMError(f"resume= is an {DISPLAY_NAMES[ck.kind]} checkpoint, not {DISPLAY_NAMES[kind]}.")
    model = ck.model.cpu()
    hist = {k: list(v) for k, v in (ck.extra.get("history") or {}).items()}
    # Keep the history consistent with the stored step.
    n = sum(1 for s in hist.get("step", []) if s <= ck.step)
    hist = {k: v[:n] for k, v in hist.items()}
    notes.append(f"resumed from {ck.path.name if ck.path else 'a checkpoint'} at step {ck.step}.")
    return ck, model, hist


def _sigma_range(sigma_range_px) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(lo, hi)`` or per-axis ``((lo, hi), (lo, hi))`` -> per-axis floats, checked."""
    try:
        arr = np.asarray(sigma_range_px, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape == (2,):
        arr = np.stack([arr, arr])
    if arr.shape != (2, 2) or not np.isfinite(arr).all() or (arr <= 0).any() or (arr[:, 0] > arr[:, 1]).any():
        raise CycleULMError(
            "sigma_range_px must be (min, max) or ((y_min, y_max), (x_min, x_max)) positive "
            f"sigmas in pixels with min <= max, got {sigma_range_px!r}."
        )
    return (tuple(arr[0].tolist()), tuple(arr[1].tolist()))


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


def _cosine(step: int, steps: int, final: float = 0.01) -> float:
    """Cosine decay of the learning-rate factor from 1 to ``final`` over the run."""
    if steps <= 1:
        return 1.0
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * step / (steps - 1)))


def _cyclegan_schedule(step: int, steps: int) -> float:
    """CycleGAN schedule: constant for the first half, then linear decay towards 0."""
    half = steps // 2
    if step < half:
        return 1.0
    return max(steps - step, 1) / max(steps - half, 1)


def _plain_config(cfg: SyntheticConfig) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# ---------------------------------------------------------------------------
# MB-DT
# ---------------------------------------------------------------------------
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
        self.scale = intensity_scale(frames, NORMALISATION_PERCENTILE, max_values=2e7)
        self.mask = mask
        self.kernel = L.similarity_blur_kernel(
            psf.sigma_y_px, psf.sigma_x_px, psf.theta_rad, shrink=psf.mbonly_factor
        ) if 0 < psf.mbonly_factor < 1 else None
        self.axis_flips = abs(psf.theta_rad) < _FLIP_THETA_TOL
        self.domain_b: SyntheticConfig | None = None
        self.domain_b_info: dict = {}

    def match_domain_b(self, base: SyntheticConfig | None, count_factor: float, n_frames: int = 40) -> None:
        """Set this stack's domain-B counts and intensities from its bubbles (:func:`domain_b_config`)."""
        self.domain_b, self.domain_b_info = domain_b_config(
            self.frames, self.psf, scale=self.scale, mask=self.mask, patch_size=self.p,
            n_frames=n_frames, base=base, count_factor=count_factor,
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
        Factor that brings the stack to MB-DT's units (its 99.9th percentile to
        1, :func:`~napari_cycleulm.arrays.intensity_scale`); 1 when ``frames``
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
    from .localise import localise_ncc
    from .preprocess import adaptive_threshold

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
    mean_count = float(per_px * patch_size**2)
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
    info = {"mbs_per_patch": mean_count, "n_detections": int(inside.sum()),
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
        Loss weights (10 and 1, see :mod:`napari_cycleulm.losses`).
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
    save_on_stop : bool
        On Stop, write the current weights to ``out`` (atomically) instead of
        keeping only the last periodic checkpoint.
    model_config : dict, optional
        :class:`~napari_cycleulm.nets.MBDT` arguments when training from scratch.

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
            source.match_domain_b(None, domain_b_count_factor)
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
        "domain_b_measured": [s.domain_b_info for s in sources] if match_data else None,
        "notes": notes,
    }
    extra = {
        "sigma_range_px": (span(mb_sig, 0), span(mb_sig, 1)),  # MB-only PSF sigmas it outputs
        "ceus_sigma_range_px": (span(ceus_sig, 0), span(ceus_sig, 1)),
        "normalisation": {
            "method": "percentile",
            "percentile": NORMALISATION_PERCENTILE,
            "scale": [float(s.scale) for s in sources],
            "rule": "CEUS frames are multiplied by one scale per stack so that the stack's "
                    "99.9th percentile is 1",
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


# ---------------------------------------------------------------------------
# MBL-Net and MBT-Net
# ---------------------------------------------------------------------------
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
        :class:`~napari_cycleulm.nets.MBLNet` arguments (from scratch).
    loss_params : dict, optional
        Extra arguments of :func:`~napari_cycleulm.losses.mblnet_loss`
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
        :class:`~napari_cycleulm.nets.MBTNet` arguments (``n_frames`` is set
        from ``n_frames``).
    loss_params : dict, optional
        Extra arguments of :func:`~napari_cycleulm.losses.mbtnet_loss`;
        ``pos_weight`` defaults to :data:`MBTNET_POS_WEIGHT` (10, the shipped
        weights' value; pass ``{"pos_weight": None}`` for an unweighted BCE).

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
    lp = {"pos_weight": MBTNET_POS_WEIGHT, **(loss_params or {})}
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


def train_mbdt(frames, psf, *, progress: Callable[[Progress], Any] | None = None, **kw) -> TrainResult:
    """Run :func:`iter_train_mbdt` to the end; ``progress`` is called with every event
    (return ``False`` from it to stop: :class:`~napari_cycleulm.progress.Cancelled` is raised)."""
    return drive(iter_train_mbdt(frames, psf, **kw), progress)


def train_mblnet(psf: PSF | None = None, *, progress: Callable[[Progress], Any] | None = None,
                 **kw) -> TrainResult:
    """Run :func:`iter_train_mblnet` to the end (see :func:`train_mbdt`)."""
    return drive(iter_train_mblnet(psf, **kw), progress)


def train_mbtnet(psf: PSF | None = None, *, progress: Callable[[Progress], Any] | None = None,
                 **kw) -> TrainResult:
    """Run :func:`iter_train_mbtnet` to the end (see :func:`train_mbdt`)."""
    return drive(iter_train_mbtnet(psf, **kw), progress)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------
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
    from .localise.mblnet import decode_mblnet  # the decoder used at inference
    from .evaluate.metrics import match_localisations

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
        input pixel, i.e. ``upsampling`` output pixels) and
        ``velocity_rmse_px_per_frame`` (RMS vector error of ``(vy, vx)`` on
        the GT trajectory pixels, input pixels per frame), plus
        ``velocity_rms_px_per_frame`` of the GT for scale.
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
    r = MBTNET_UPSCALE
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (yy**2 + xx**2 <= r * r)[None]
    gt_d = ndimage.binary_dilation(gt, structure=disk)
    pred_d = ndimage.binary_dilation(pred, structure=disk)
    prec = float((pred & gt_d).sum()) / max(float(pred.sum()), 1.0)
    rec = float((gt & pred_d).sum()) / max(float(gt.sum()), 1.0)
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    err = ((out[:, 1:3] - data.velocity) ** 2).sum(axis=1)[gt]
    vgt = (data.velocity**2).sum(axis=1)[gt]
    return {
        "dice": dice, "trajectory_precision": prec, "trajectory_recall": rec,
        "trajectory_f1": f1,
        "velocity_rmse_px_per_frame": float(np.sqrt(err.mean())) if err.size else float("nan"),
        "velocity_rms_px_per_frame": float(np.sqrt(vgt.mean())) if vgt.size else float("nan"),
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
    from .localise import localise_ncc
    from .evaluate.metrics import precision_recall_sweep
    from .translate import translate

    net = _as_module(model)
    dev = resolve_device(device)
    net = net.to(dev).eval()
    arr = as_frames(frames, "frames", min_frames=1)[:max_frames]
    scale = intensity_scale(arr, NORMALISATION_PERCENTILE, max_values=2e7)
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
