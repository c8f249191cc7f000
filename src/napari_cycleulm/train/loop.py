"""The training loop shared by MB-DT, MBL-Net and MBT-Net (paper, sections 3.1-3.3).

Every trainer (:mod:`.mbdt`, :mod:`.synthetic_nets`) builds a :class:`_Job`
and hands it to :func:`_run`, a generator that yields
:class:`~napari_cycleulm.progress.Progress` events and returns a
:class:`TrainResult`.  The loop does the device's mixed precision
(:class:`_Precision`: autocast + GradScaler on CUDA, plain float32 on the
CPU), progress events with running mean losses every ``log_every`` steps,
previews every ``preview_every`` steps, atomic checkpoints every
``checkpoint_every`` steps and at the end, resuming from a checkpoint
(weights, optimiser state, step and loss history), and cooperative
cancellation.

This module also holds what the trainers share around the loop: the
argument checks (:func:`_check_int`, :func:`_check_positive`,
:func:`_check_loop_args`, :func:`_sigma_range`), the learning-rate
schedules (:func:`_cosine`, :func:`_cyclegan_schedule`), the starting
network (:func:`_initial_model`: from scratch, the shipped default weights,
a path or a Checkpoint) and :func:`_resume`.

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
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..dl.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..errors import CycleULMError
from ..dl.nets import DISPLAY_NAMES, MBDT, MBLNet, MBTNet
from ..progress import Progress
from ..simulate.mb_only import SyntheticConfig

__all__ = ["TrainResult"]


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
        the whole :class:`~napari_cycleulm.dl.nets.MBDT` (``model.g_ab`` is the
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
        from ..dl.models import DEFAULT_WEIGHTS  # owned by the inference helper

        return Path(DEFAULT_WEIGHTS[kind])
    except (ImportError, KeyError, AttributeError):
        return Path(__file__).parent.parent / "weights" / f"{kind}_default.pt"


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
