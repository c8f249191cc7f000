"""Saving and loading CycleULM network checkpoints.

A checkpoint is one ``torch.save`` file holding only tensors and plain
Python values (dict, list, str, int, float, bool, None), so it loads with
``torch.load(weights_only=True)``: no code is executed from the file.  Keys:

``format`` ("napari-cycleulm checkpoint"), ``format_version`` (int),
``kind`` ("mbdt", "mblnet" or "mbtnet"), ``config`` (constructor kwargs of
the model), ``state_dict`` (CPU tensors), ``optimizer_state`` (or None),
``step`` (int), ``psf`` (dict or None: ``sigma_y_px``, ``sigma_x_px``,
``theta_rad``, ``pixel_size_um``, ...) and ``extra`` (dict: loss history,
training parameters, normalisation, ...).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._atomic import atomic_path
from ..device import resolve_device
from ..errors import CycleULMError
from .nets import DISPLAY_NAMES, NETWORKS

FORMAT_NAME = "napari-cycleulm checkpoint"
FORMAT_VERSION = 1

#: PSF fields stored from a :class:`napari_cycleulm.psf.PSF`.
_PSF_FIELDS = (
    "sigma_y_px", "sigma_x_px", "theta_rad", "pixel_size_um", "n_bubbles", "residual",
    "mbonly_factor",
)


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes
    ----------
    model : torch.nn.Module
        Built from ``config``, weights loaded, on the requested device, in eval mode.
    kind : str
        ``"mbdt"``, ``"mblnet"`` or ``"mbtnet"``.
    config : dict
        Constructor arguments of the model.
    step : int
        Training step at which it was saved.
    psf : dict or None
        The CEUS PSF the model was trained for.
    optimizer_state : dict or None
        ``optimizer.state_dict()``, to resume training.
    extra : dict
        Free-form metadata (loss history, training parameters, normalisation).
    path : pathlib.Path
        The file read.
    format_version : int
    """

    model: nn.Module
    kind: str
    config: dict
    step: int = 0
    psf: dict | None = None
    optimizer_state: dict | None = None
    extra: dict = field(default_factory=dict)
    path: Path | None = None
    format_version: int = FORMAT_VERSION


def _check_kind(kind: str) -> str:
    if kind not in NETWORKS:
        raise CycleULMError(
            f"unknown network kind {kind!r}; expected one of {', '.join(NETWORKS)}."
        )
    return kind


def build_model(kind: str, config: dict | None = None) -> nn.Module:
    """Build an untrained network of ``kind`` from its ``config`` kwargs.

    Raises
    ------
    CycleULMError
        Unknown kind or invalid configuration.
    """
    cls = NETWORKS[_check_kind(kind)]
    try:
        return cls(**(config or {}))
    except TypeError as exc:
        raise CycleULMError(
            f"invalid {DISPLAY_NAMES[kind]} configuration {config!r}: {exc}."
        ) from exc


def _plain(value: Any, where: str) -> Any:
    """Convert to tensors / plain Python types accepted by ``weights_only`` loading."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise CycleULMError(f"checkpoint {where} keys must be str or int, got {k!r}.")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    raise CycleULMError(
        f"checkpoint {where} holds a {type(value).__name__}, which cannot be stored; use "
        "numbers, strings, lists, dicts, numpy arrays or tensors."
    )


def _psf_dict(psf: Any) -> dict | None:
    if psf is None:
        return None
    if dataclasses.is_dataclass(psf) and not isinstance(psf, type):
        psf = {f: getattr(psf, f) for f in _PSF_FIELDS if hasattr(psf, f)}
    if not isinstance(psf, dict):
        raise CycleULMError(f"psf must be a PSF or a dict, got {type(psf).__name__}.")
    return _plain(psf, "psf")


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    kind: str,
    config: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    psf: Any = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint atomically.

    Parameters
    ----------
    path : str or PathLike
        Destination (conventionally ``*.pt``); parent folders are created.
    model : torch.nn.Module
        An :class:`~napari_cycleulm.dl.nets.MBDT`, ``MBLNet`` or ``MBTNet``.
    kind : str
        ``"mbdt"``, ``"mblnet"`` or ``"mbtnet"``; must match the model class.
    config : dict, optional
        Constructor kwargs; default ``model.config``.
    optimizer : torch.optim.Optimizer, optional
        Its state is stored to resume training.
    step : int
        Training step.
    psf : PSF or dict, optional
        CEUS PSF the model was trained for (a :class:`~napari_cycleulm.psf.PSF`
        is stored as its numeric fields).
    extra : dict, optional
        Plain metadata; numpy arrays become tensors, numpy scalars Python numbers.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    CycleULMError
        Unknown kind, model/kind mismatch, config that does not rebuild the
        model, or metadata that cannot be stored.
    """
    cls = NETWORKS[_check_kind(kind)]
    if not isinstance(model, cls):
        raise CycleULMError(
            f"kind={kind!r} ({DISPLAY_NAMES[kind]}) does not match the model, a "
            f"{type(model).__name__}."
        )
    if config is None:
        config = getattr(model, "config", None)
        if config is None:
            raise CycleULMError("the model has no 'config'; pass config= explicitly.")
    if not isinstance(step, (int, np.integer)) or step < 0:
        raise CycleULMError(f"step must be a non-negative integer, got {step!r}.")
    config = _plain(dict(config), "config")
    # The same check as at load time, now, while the user can still fix it.
    _check_state_dict(build_model(kind, config), model.state_dict(), kind, "the model")
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer_state": (
            None if optimizer is None else _plain(optimizer.state_dict(), "optimizer")
        ),
        "step": int(step),
        "psf": _psf_dict(psf),
        "extra": _plain(dict(extra or {}), "extra"),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _check_state_dict(model: nn.Module, state: dict, kind: str, source: str) -> None:
    """Raise a CycleULMError naming missing / unexpected / mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return

    def few(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {few(unexpected)}")
    if shapes:
        parts.append(f"mismatched shapes (stored vs config): {few(shapes)}")
    raise CycleULMError(
        f"{source} does not match the {DISPLAY_NAMES[kind]} architecture of its config "
        f"({'; '.join(parts)}); the weights and configuration disagree, re-save the checkpoint "
        "from the trained model."
    )


def load_checkpoint(
    path: str | os.PathLike, kind: str | None = None, device: str | torch.device | None = None
) -> Checkpoint:
    """Load a checkpoint and rebuild its model (safe ``weights_only`` loading).

    Parameters
    ----------
    path : str or PathLike
        File written by :func:`save_checkpoint`.
    kind : str, optional
        Expected kind; an error is raised if the file holds another network.
    device : str or torch.device, optional
        Where to put the model (default: CUDA if available, else CPU).

    Returns
    -------
    Checkpoint
        With the model in eval mode.

    Raises
    ------
    CycleULMError
        Missing, unreadable or corrupt file, wrong kind, newer format
        version, or weights that do not match the stored architecture.
    """
    if kind is not None:
        _check_kind(kind)
    path = Path(path)
    if not path.exists():
        raise CycleULMError(f"checkpoint file not found: {path}; check the path.")
    if not path.is_file():
        raise CycleULMError(f"checkpoint path is not a file: {path}.")
    dev = resolve_device(device)
    corrupt = (
        f"not a CycleULM checkpoint or corrupt: {path}; re-save it with "
        "save_checkpoint (or re-train the model)."
    )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and runtime errors all mean "unreadable"
        raise CycleULMError(f"{corrupt} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CycleULMError(corrupt)
    version = payload.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CycleULMError(f"{corrupt} (bad format_version {version!r})")
    if version > FORMAT_VERSION:
        raise CycleULMError(
            f"{path} has checkpoint format version {version}, newer than this napari-cycleulm "
            f"reads ({FORMAT_VERSION}); upgrade napari-cycleulm."
        )
    stored_kind = payload.get("kind")
    if stored_kind not in NETWORKS:
        raise CycleULMError(f"{corrupt} (unknown network kind {stored_kind!r})")
    if kind is not None and stored_kind != kind:
        raise CycleULMError(
            f"this is an {DISPLAY_NAMES[stored_kind]} checkpoint but an {DISPLAY_NAMES[kind]} "
            f"model was asked for: {path}; choose the {DISPLAY_NAMES[kind]} checkpoint file."
        )
    config = payload.get("config")
    state = payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise CycleULMError(f"{corrupt} (config or state_dict missing)")
    model = build_model(stored_kind, config)
    _check_state_dict(model, state, stored_kind, f"checkpoint {path}")
    model.load_state_dict(state)
    model.to(dev).eval()
    return Checkpoint(
        model=model,
        kind=stored_kind,
        config=config,
        step=int(payload.get("step") or 0),
        psf=payload.get("psf"),
        optimizer_state=payload.get("optimizer_state"),
        extra=payload.get("extra") or {},
        path=path,
        format_version=version,
    )
