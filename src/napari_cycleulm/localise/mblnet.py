"""Localisation with MBL-Net on MB-only frames (paper 1.1, 3.1; DECODE post-processing).

MBL-Net predicts, for every pixel, the probability ``p`` that a bubble lies
in it, the bubble's intensity, its sub-pixel offset ``(dy, dx)`` from the
pixel centre and the three uncertainties (:mod:`napari_cycleulm.dl.nets.mblnet`).

Decoding (as DECODE, Speiser et al. 2021)
-----------------------------------------
A bubble near a pixel border splits its probability over neighbouring
pixels, so ``p`` is first summed over every 3x3 neighbourhood; local maxima
of the summed map above ``threshold`` are the detections (one per 3x3
window, :func:`~.peaks.find_peaks`).  For each detection the *owner* is the
pixel of largest ``p`` in its 3x3 window, and position, intensity and
uncertainties are that pixel's predictions: ``(y, x) = (i + dy, j + dx)``.

Why the owner pixel rather than a p-weighted average of the window's
predictions: each pixel's offset is trained (GMM loss) to point at the
bubble *it* is most responsible for; a low-p neighbour may belong to another
bubble 2 px away or predict a poorly trained offset, and averaging mixes
these in, pulling close bubbles towards each other.  The owner's prediction
is also what the uncertainty maps describe.

``score`` is the summed probability clipped to 1 (the probability that the
window holds a bubble); ``sigma_intensity, sigma_y, sigma_x`` are the
predicted standard deviations (intensity units, pixels).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..arrays import as_frames, as_image
from ..errors import CycleULMError
from ..dl.inference import infer, resolve_batch_size
from ..dl.models import resolve_network
from ..dl.nets import MBLNET_CHANNELS
from ..io.tables import Localisations
from .peaks import find_peaks

__all__ = ["localise_mblnet", "mblnet_maps", "decode_mblnet"]


def _in_channels(net) -> int:
    cfg = getattr(net, "config", None) or {}
    return int(cfg.get("in_channels", 1))


def mblnet_maps(
    mb_frames,
    model=None,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    before=None,
    after=None,
) -> torch.Tensor:
    """Raw MBL-Net output ``(T, 7, H, W)`` (CPU float32) for MB-only frames.

    Networks with ``in_channels == 3`` see frames ``(t-1, t, t+1)``; the
    neighbours of the first and last frame are ``before`` / ``after`` when
    given, else the edge frame is replicated.
    """
    arr = as_frames(mb_frames, name="mb_frames")
    net, dev, _ = resolve_network("mblnet", model, device)
    batch_size = resolve_batch_size(batch_size, arr.shape[1:], dev)
    c = _in_channels(net)
    if c not in (1, 3):
        raise CycleULMError(f"MBL-Net with {c} input channels is not supported (1 or 3).")
    t, h, w = arr.shape
    if c == 3:
        nb = []
        for name, img, edge in (("before", before, arr[0]), ("after", after, arr[-1])):
            img = edge if img is None else as_image(img)
            if img.shape != (h, w):
                raise CycleULMError(f"{name} must be one ({h}, {w}) frame, got shape {img.shape}.")
            nb.append(img)
        src = torch.from_numpy(np.concatenate([nb[0][None], arr, nb[1][None]]))
    else:
        src = torch.from_numpy(arr)
    out = torch.empty((t, len(MBLNET_CHANNELS), h, w), dtype=torch.float32)
    for s in range(0, t, batch_size):
        e = min(t, s + batch_size)
        if c == 3:
            x = torch.stack([src[s:e], src[s + 1 : e + 1], src[s + 2 : e + 2]], dim=1)
        else:
            x = src[s:e, None]
        y = infer(net, x.to(dev))
        if y.shape != (e - s, len(MBLNET_CHANNELS), h, w):
            raise CycleULMError(
                f"the MBL-Net model returned shape {tuple(y.shape)}; expected "
                f"({e - s}, {len(MBLNET_CHANNELS)}, {h}, {w})."
            )
        out[s:e] = y.cpu()
    return out


def decode_mblnet(outputs, threshold: float = 0.5) -> Localisations:
    """Localisations from MBL-Net outputs (see the module notes).

    Parameters
    ----------
    outputs : torch.Tensor or array_like
        ``(T, 7, H, W)`` in :data:`~napari_cycleulm.dl.nets.MBLNET_CHANNELS` order.
    threshold : float
        Minimum summed 3x3 probability (exclusive), in ``[0, 9)``.

    Returns
    -------
    Localisations
        ``frame, y, x, intensity, score, sigma_intensity, sigma_y, sigma_x``,
        sorted by frame then decreasing summed probability.
    """
    out = outputs if isinstance(outputs, torch.Tensor) else torch.as_tensor(np.asarray(outputs))
    out = out.detach().float().cpu()
    if out.ndim != 4 or out.shape[1] != len(MBLNET_CHANNELS):
        raise CycleULMError(f"expected (T, 7, H, W) MBL-Net outputs, got shape {tuple(out.shape)}.")
    if not np.isfinite(threshold) or threshold < 0:
        raise CycleULMError(f"threshold must be a number >= 0, got {threshold!r}.")
    t, _, h, w = out.shape
    p = torch.sigmoid(out[:, 0])
    psum = F.avg_pool2d(p[:, None], 3, stride=1, padding=1, count_include_pad=True)[:, 0] * 9.0
    f, yi, xi, score = find_peaks(psum, float(threshold), min_distance=1)
    if f.size == 0:
        return Localisations(
            {k: np.zeros(0) for k in ("frame", "y", "x", "intensity", "score",
                                      "sigma_intensity", "sigma_y", "sigma_x")}
        )
    # Owner pixel: largest p in the 3x3 window (zero outside the frame).
    pp = F.pad(p, (1, 1, 1, 1)).numpy()
    off = np.arange(-1, 2)
    win = pp[f[:, None, None], (yi[:, None] + 1 + off)[:, :, None], (xi[:, None] + 1 + off)[:, None, :]]
    k = win.reshape(len(f), 9).argmax(axis=1)  # first maximum in raster order
    oy = yi + k // 3 - 1
    ox = xi + k % 3 - 1
    o = out.numpy()
    vals = {name: o[f, i, oy, ox].astype(np.float64) for i, name in enumerate(MBLNET_CHANNELS)}
    return Localisations(
        {
            "frame": f,
            "y": oy + vals["dy"],
            "x": ox + vals["dx"],
            "intensity": vals["intensity"],
            "score": np.minimum(score, 1.0),
            "sigma_intensity": vals["s_int"],
            "sigma_y": vals["s_y"],
            "sigma_x": vals["s_x"],
        }
    )


def localise_mblnet(
    mb_frames,
    model=None,
    threshold: float = 0.5,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    before=None,
    after=None,
) -> Localisations:
    """Localise bubbles in MB-only frames with MBL-Net.

    Parameters
    ----------
    mb_frames : array_like
        ``(T, H, W)`` (or ``(H, W)``) MB-only frames in the network's
        intensity convention (background ~0, bubble peaks ~0.1-1), e.g. the
        output of :func:`napari_cycleulm.dl.mbdt_inference.translate`.
    model : None, "default", path, Checkpoint or torch.nn.Module
        The MBL-Net (see :mod:`napari_cycleulm.dl.models`).
    threshold : float
        Minimum probability summed over a 3x3 neighbourhood (default 0.5:
        more likely a bubble than not).
    batch_size : int, optional
        Frames per network call; default
        :func:`~napari_cycleulm.dl.inference.default_batch_size`.
    device : str or torch.device, optional
        Torch device (default: the model's, CUDA when available).
    before, after : array_like, optional
        Neighbouring MB-only frames, used only by 3-channel networks.

    Returns
    -------
    Localisations
        ``frame, y, x`` (pixels), ``intensity``, ``score`` (summed probability
        clipped to 1), ``sigma_intensity, sigma_y, sigma_x`` (predicted
        uncertainties), sorted by frame then decreasing score.

    Raises
    ------
    CycleULMError
        On bad frames or threshold, a missing / wrong model.
    """
    if not isinstance(threshold, (int, float, np.number)) or not np.isfinite(threshold) or threshold < 0:
        raise CycleULMError(f"threshold must be a number >= 0, got {threshold!r}.")
    arr = as_frames(mb_frames, name="mb_frames")
    net, dev, _ = resolve_network("mblnet", model, device)
    batch_size = resolve_batch_size(batch_size, arr.shape[1:], dev)
    # Decoded batch by batch: the 7 output maps of a whole block would take
    # 7x its memory (1.9 GB for 200 frames of 511 x 659).  Each batch sees its
    # true neighbouring frames, so the result does not depend on batch_size.
    t = len(arr)
    parts = []
    for s in range(0, t, batch_size):
        e = min(t, s + batch_size)
        outs = mblnet_maps(arr[s:e], net, batch_size=batch_size, device=dev,
                           before=before if s == 0 else arr[s - 1], after=after if e == t else arr[e])
        locs = decode_mblnet(outs, threshold)
        parts.append(locs.with_columns(frame=locs["frame"] + s) if len(locs) else locs)
    return Localisations.concat(parts)
