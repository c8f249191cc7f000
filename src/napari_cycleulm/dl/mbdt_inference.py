"""MB-DT inference: CEUS frames -> MB-only frames (paper 1.1, 3.2).

The MB-DT generator ``G_AB`` maps three consecutive CEUS frames
``(t-1, t, t+1)`` to the MB-only frame ``t``.  The first and last frames of
an acquisition have no neighbour on one side; the missing frame is replaced
by the edge frame itself (edge replication).  Inside a streamed acquisition
the neighbours come from the adjacent blocks, so :func:`iter_translate` gives
exactly the frames of one :func:`translate` call on the whole stack.

Intensity convention: the CEUS input is multiplied by ``scale``
(:func:`~napari_cycleulm.intensity.mbdt_input_scale`: the 99.9th percentile of
the data to 1, then moved so that the median background lies between
:data:`~napari_cycleulm.intensity.MBDT_BACKGROUND_FLOOR` and
:data:`~napari_cycleulm.intensity.MBDT_BACKGROUND_LEVEL`, the backgrounds the
network was trained on); the MB-only output lives in ``[0, ~1]``.

Mirror averaging (test-time augmentation): by default (``tta="lateral"``)
each batch is translated twice, as it is and mirrored left-right, and the
two outputs (the second mirrored back) are averaged.  A CycleGAN redraws
speckle of clutter and noise as bubbles in ways that are not mirror
symmetric, while a true bubble is drawn in both passes, so averaging halves
the weight of many false bubbles at the cost of a second pass.  The lateral
mirror of an ultrasound frame is a plausible frame (the PSF is laterally
symmetric; the depth axis is not: attenuation, depth-dependent PSF), hence
the default; ``"lateral+axial"`` adds the up-down and the double mirror (4
passes), ``"none"`` is the paper's single pass.  How the default was chosen
is in ``docs/science.md``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .. import io as ulm_io
from ..arrays import as_frames, as_image
from ..intensity import intensity_scale, mbdt_input_scale
from ..errors import CycleULMError
from .inference import infer, resolve_batch_size
from .models import resolve_network
from ..stages import run_scale
from ..preprocess.evidence_gate import block_gate

__all__ = ["translate", "iter_translate", "intensity_scale", "TTA_MODES", "DEFAULT_TTA", "tta_flips"]

#: Mirror averaging of MB-DT's output: the flipped axes of each extra pass
#: (axis -1: lateral, -2: axial), per mode.
TTA_MODES: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": (),
    "lateral": ((-1,),),
    "lateral+axial": ((-1,), (-2,), (-2, -1)),
}

#: Default mirror averaging (chosen on the selection settings, docs/science.md).
DEFAULT_TTA = "lateral"


def tta_flips(tta) -> tuple[tuple[int, ...], ...]:
    """The flipped axes of the extra passes of mirror averaging ``tta``; a clear error for an unknown mode."""
    if not isinstance(tta, str) or tta not in TTA_MODES:
        raise CycleULMError(f"tta must be one of {sorted(TTA_MODES)}, got {tta!r}.")
    return TTA_MODES[tta]


def _check_scale(scale) -> float:
    ok = isinstance(scale, (int, float, np.number)) and not isinstance(scale, bool)
    if not ok or not np.isfinite(scale) or scale <= 0:
        raise CycleULMError(f"scale must be a positive number, got {scale!r}.")
    return float(scale)


def _run_translator(net, frames: np.ndarray, before, after, batch_size: int, dev,
                    flips: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Apply the translator to scaled frames with given (already scaled) neighbours.

    Each entry of ``flips`` (:func:`tta_flips`) adds a pass on the frames
    flipped along those axes, flipped back; the passes are averaged.
    """
    t, h, w = frames.shape
    padded = np.concatenate([before[None], frames, after[None]], axis=0)
    src = torch.from_numpy(np.ascontiguousarray(padded))
    out = np.empty((t, h, w), np.float32)
    fwd = net.translate if hasattr(net, "translate") else net
    for s in range(0, t, batch_size):
        e = min(t, s + batch_size)
        x = torch.stack([src[s:e], src[s + 1 : e + 1], src[s + 2 : e + 2]], dim=1).to(dev)
        y = infer(fwd, x)
        for axes in flips:
            y = y + infer(fwd, x.flip(axes)).flip(axes)
        if flips:
            y = y / (len(flips) + 1)
        if y.ndim != 4 or y.shape[0] != e - s or y.shape[-2:] != (h, w):
            raise CycleULMError(
                f"the MB-DT model returned shape {tuple(y.shape)} for input "
                f"{tuple(x.shape)}; expected ({e - s}, 1, {h}, {w})."
            )
        out[s:e] = y[:, 0].clamp_min(0).cpu().numpy()
    return out


def translate(
    frames,
    model=None,
    *,
    scale: float | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    before=None,
    after=None,
    tta: str = DEFAULT_TTA,
) -> np.ndarray:
    """Translate CEUS frames to MB-only frames with MB-DT.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` CEUS envelope frames (any size: the network pads internally).
    model : None, "default", path, Checkpoint or torch.nn.Module
        The MB-DT (see :mod:`napari_cycleulm.dl.models`); a module is called on
        ``(N, 3, H, W)`` (its ``translate`` method when it has one).
    scale : float, optional
        Intensity factor applied to the frames (and to ``before`` / ``after``)
        before the network; default: :func:`~napari_cycleulm.intensity.mbdt_input_scale`
        of ``frames``.  Streaming callers pass one run-wide value.
    batch_size : int, optional
        Frames translated together; default
        :func:`~napari_cycleulm.dl.inference.default_batch_size` (4 frames of
        128 x 160, 1 of 511 x 659 on a CPU).
    device : str or torch.device, optional
        Torch device (default: the model's, CUDA when available).
    before, after : array_like, optional
        ``(H, W)`` CEUS frames just before the first and after the last
        frame (the neighbours in a longer acquisition); the edge frame is
        replicated when missing.

    Returns
    -------
    numpy.ndarray
        float32 ``(T, H, W)`` MB-only frames, >= 0.

    Raises
    ------
    CycleULMError
        On bad frames, bad neighbours, a bad scale or a missing / wrong model.
    """
    arr = as_frames(frames, name="frames")
    flips = tta_flips(tta)
    scale = mbdt_input_scale(arr) if scale is None else _check_scale(scale)
    nb = []
    for name, img, edge in (("before", before, arr[0]), ("after", after, arr[-1])):
        if img is None:
            nb.append(edge * scale)
            continue
        img = as_image(img)
        if img.shape != arr.shape[1:]:
            raise CycleULMError(
                f"{name} must be one ({arr.shape[1]}, {arr.shape[2]}) frame, got shape {img.shape}."
            )
        nb.append(img * scale)
    net, dev, _ = resolve_network("mbdt", model, device)
    batch_size = resolve_batch_size(batch_size, arr.shape[1:], dev)
    return _run_translator(net, arr * np.float32(scale), nb[0], nb[1], batch_size, dev, flips)


def iter_translate(
    stack,
    model=None,
    *,
    block_size: int = 64,
    scale: float | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    gate: str = "none",
    psf=None,
    gate_params: dict | None = None,
    tta: str = DEFAULT_TTA,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Translate a stack block by block, with each block's neighbours taken from the next/previous block.

    Parameters
    ----------
    stack : array_like or io.LazyStack
        ``(T, H, W)`` CEUS frames; read one block at a time.
    model
        As in :func:`translate` (loaded once).
    block_size : int
        Frames per block.
    scale : float, optional
        Run-wide intensity factor; default from the first
        :data:`~napari_cycleulm.stages.CALIBRATION_FRAMES` (100) frames, so equal to
        :func:`translate`'s default for shorter stacks.
    batch_size, device
        As in :func:`translate`.
    gate : {"none", "spatial", "temporal", "spatial+temporal"}
        Keep the MB-only output only where the CEUS shows evidence of a
        bubble (:func:`napari_cycleulm.preprocess.evidence_gate.block_gate`), exactly as the
        CycleULM pipelines do (their default is
        :data:`napari_cycleulm.preprocess.evidence_gate.DEFAULT_GATE`).
    psf : PSF, optional
        The CEUS PSF, for the gate.
    gate_params : dict, optional
        Further gate parameters.
    tta : str
        Mirror averaging, as in :func:`translate`.

    Yields
    ------
    (int, int, numpy.ndarray)
        ``start``, ``stop`` and the float32 ``(stop - start, H, W)`` MB-only
        frames, identical to ``translate(stack, scale=scale)[start:stop]``.
    """
    if int(block_size) != block_size or block_size < 1:
        raise CycleULMError(f"block_size must be a whole number >= 1, got {block_size}.")
    shape = tuple(int(s) for s in np.shape(stack)) if not hasattr(stack, "shape") else tuple(
        int(s) for s in stack.shape
    )
    if len(shape) != 3 or shape[0] == 0:
        raise CycleULMError(
            f"the input must be a (frames, height, width) stack with at least one frame, got shape {shape}."
        )
    n = shape[0]
    flips = tta_flips(tta)
    if scale is None:
        scale = run_scale(stack, mbdt=True)
    scale = np.float32(_check_scale(scale))
    net, dev, _ = resolve_network("mbdt", model, device)
    batch_size = resolve_batch_size(batch_size, shape[1:], dev)
    prev = None
    for start, stop, block in ulm_io.iter_blocks(stack, block_size):
        block = block * scale
        before = block[0] if prev is None else prev
        after = ulm_io.read_block(stack, stop, stop + 1)[0] * scale if stop < n else block[-1]
        mb = _run_translator(net, block, before, after, batch_size, dev, flips)
        mask = block_gate(stack, block, start, stop, scale=scale, psf=psf, mode=gate, **(gate_params or {}))
        yield start, stop, mb if mask is None else mb * mask
        prev = block[-1]
