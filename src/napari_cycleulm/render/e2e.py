"""CycleULM-E2E: SR maps from MBT-Net trajectory and velocity maps (paper 1.1, 3.1).

MBT-Net reads a window of ``L`` consecutive MB-only frames (``L = 8`` in the
paper, ``config["n_frames"]`` of the checkpoint) and returns, on a grid 4x
finer than the frames, the probability that a bubble path crosses each SR
pixel during the window and the bubble velocity ``(vy, vx)`` there (original
pixels per frame).  The SR grid is the one of :mod:`napari_cycleulm.render`
(pixel ``(0, 0)`` of the frames is covered by SR pixels ``0..3``).

Accumulation
------------
Windows start every ``stride`` frames (default ``L``: consecutive,
non-overlapping windows, each frame seen once).  For every window and SR
pixel the trajectory probability ``p = sigmoid(traj_logit)`` gives a weight
``w``: with ``prob_threshold=None``, ``w = p`` (the density is then the
expected number of windows with a bubble path through the pixel); with a
threshold, ``w = 1`` where ``p >= prob_threshold`` and 0 elsewhere (the
paper's binary trajectory maps: the density counts windows with a detected
path, the analogue of the track-passage count of :class:`~.sr_maps.SRRenderer`,
and the small background probability of empty pixels does not pile up over
hundreds of windows).  Then

* ``density = sum w``,
* ``velocity = sum w |v| / sum w`` (mean speed),
* ``axial_velocity = sum w sign(vy) |v| / sum w``,
* ``direction = atan2(sum w vy/|v|, sum w vx/|v|)``,
* :meth:`E2EAccumulator.mean_velocity` gives ``sum w v / sum w`` per component,

the same definitions as the track renderer, so the two kinds of maps compare.
Velocities are NaN where ``sum w = 0``; :attr:`SRMaps.count` is zero (E2E
produces no localisations).

Frames are buffered between :meth:`~E2EAccumulator.add` calls, so the maps do
not depend on how the acquisition is cut into blocks.  At
:meth:`~E2EAccumulator.result` the frames left over (fewer than ``L`` after
the last full window; or an acquisition shorter than ``L``) form one last
window padded with empty (zero) frames: zero is the MB-only background, so
padding reads as "no bubbles" rather than as bubbles that stop.

Other SR factors: the network's grid is 4x; for ``upsampling != 4`` the
accumulated sums are resampled (bilinear, antialiased when shrinking) to the
requested grid before the ratios are taken.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..arrays import as_frames
from ..device import resolve_device
from ..errors import CycleULMError
from ..dl.inference import infer, resolve_batch_size
from ..dl.models import resolve_network
from ..dl.nets.mbtnet import UPSCALE
from .sr_maps import SRMaps, _check_shape, _positive

__all__ = ["E2EAccumulator", "render_e2e", "window_starts"]

_SUMS = ("w", "speed", "axial", "uy", "ux", "vy", "vx")


#: Default trajectory probability a pixel must reach to count (binary weights).
#: Chosen on fresh synthetic sequences (seed 777, 32 each, MB-only sigma 1.0x1.0,
#: 1.0x1.5, 1.5x2.0 px), never on the benchmarks' seeds.  For the first shipped
#: MBT-Net (positive-class weight 10, wide trajectories) 0.4 lost least against
#: each setting's best F1.  The Dice-trained weights of 2026-12-01 are nearly
#: flat in the threshold: trajectory F1 at one SR pixel 0.892/0.878/0.850 at
#: 0.3, 0.889/0.874/0.846 at 0.4, 0.886/0.869/0.842 at 0.5 and 0.881/0.864/0.837
#: at 0.6, so 0.4 stays (within 0.004 of the best).
PROB_THRESHOLD = 0.4


#: Most MBT-Net windows per network call by default (its x4 decoder holds large
#: activations): the cap of :func:`napari_cycleulm.dl.inference.default_batch_size`.
MAX_WINDOWS_PER_CALL = 4


def window_starts(n_frames: int, window: int, stride: int | None = None, pad_last: bool = True) -> list[int]:
    """First frames of the MBT-Net windows of an acquisition of ``n_frames``.

    The windows :class:`E2EAccumulator` processes, whatever the blocks the
    frames arrive in: one every ``stride`` frames (default ``window``) while
    it fits, then, with ``pad_last``, one last window (zero-padded at the
    end) when some frames were seen by no full window.  Cutting the
    acquisition into blocks assigns each window to the block holding its
    first frame (:meth:`E2EAccumulator.add_windows`).
    """
    n, L = int(n_frames), int(window)
    step = L if stride is None else int(stride)
    starts = list(range(0, n - L + 1, step)) if n >= L else []
    covered = starts[-1] + L if starts else 0
    nxt = starts[-1] + step if starts else 0
    if pad_last and nxt < n and covered < n:
        starts.append(nxt)
    return starts


class E2EAccumulator:
    """Accumulate MBT-Net outputs over an acquisition into SR maps.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the frames.
    upsampling : int
        SR grid factor of the result (MBT-Net works at 4; other factors are resampled).
    stride : int, optional
        Frames between window starts (default: the window length, no overlap).
    prob_threshold : float or None
        Trajectory probability at or above which a pixel counts as crossed
        (binary weights, default :data:`PROB_THRESHOLD`); None for soft weights ``w = p``.
    pad_last : bool
        Process the leftover frames at the end as a zero-padded window
        (default True); False drops them.

    Examples
    --------
    >>> acc = E2EAccumulator((H, W))                     # doctest: +SKIP
    >>> for start, stop, mb in iter_translate(stack):    # doctest: +SKIP
    ...     acc.add(mb, mbtnet_checkpoint)
    >>> maps = acc.result(pixel_size_um=50, frame_rate_hz=500)  # doctest: +SKIP
    """

    def __init__(
        self,
        shape,
        upsampling: int = 4,
        *,
        stride: int | None = None,
        prob_threshold: float | None = PROB_THRESHOLD,
        pad_last: bool = True,
    ) -> None:
        self.shape = _check_shape(shape)
        integer = isinstance(upsampling, (int, np.integer)) and not isinstance(upsampling, bool)
        if not integer or upsampling < 1:
            raise CycleULMError(f"upsampling must be an integer >= 1, got {upsampling!r}.")
        if stride is not None and (int(stride) != stride or stride < 1):
            raise CycleULMError(f"stride must be a whole number >= 1, got {stride!r}.")
        if prob_threshold is not None and not (0.0 <= float(prob_threshold) <= 1.0):
            raise CycleULMError(
                f"prob_threshold must be in [0, 1] or None, got {prob_threshold!r}."
            )
        self.upsampling = int(upsampling)
        from .sr_maps import check_sr_memory

        check_sr_memory(self.shape, self.upsampling)
        self.stride = None if stride is None else int(stride)
        self.prob_threshold = None if prob_threshold is None else float(prob_threshold)
        self.pad_last = bool(pad_last)
        self.window: int | None = None
        self.n_frames = 0  # frames added
        self.n_windows = 0  # windows processed
        self._buf = np.zeros((0, *self.shape), np.float32)
        self._buf_start = 0  # absolute index of _buf[0]
        self._next = 0  # absolute start of the next window
        self._covered = 0  # end of the last window processed
        self._net = None
        self._dev = None
        self._batch_size = 4
        self._sums: dict[str, torch.Tensor] | None = None
        self._finished = False

    # -- accumulation -----------------------------------------------------------
    def _bind(self, model, device) -> None:
        net, dev, _ = resolve_network("mbtnet", model, device)
        cfg = getattr(net, "config", None) or {}
        window = int(cfg.get("n_frames", 8))
        if self.window is not None and window != self.window:
            raise CycleULMError(
                f"MBT-Net window changed from {self.window} to {window} frames between blocks; "
                "use one model for the whole acquisition."
            )
        self.window = window
        self._net, self._dev = net, dev
        if self._sums is None:
            sr = (self.shape[0] * UPSCALE, self.shape[1] * UPSCALE)
            self._sums = {k: torch.zeros(sr, dtype=torch.float64, device=dev) for k in _SUMS}
        elif self._sums["w"].device != dev:
            self._sums = {k: v.to(dev) for k, v in self._sums.items()}

    def add(
        self,
        mb_frames,
        model=None,
        *,
        batch_size: int | None = None,
        device: str | torch.device | None = None,
    ) -> int:
        """Add the next consecutive MB-only frames; run MBT-Net on every window now complete.

        Parameters
        ----------
        mb_frames : array_like
            ``(T, H, W)`` MB-only frames following those already added.
        model : None, "default", path, Checkpoint or torch.nn.Module
            The MBT-Net (see :mod:`napari_cycleulm.dl.models`); load it once
            (:func:`~napari_cycleulm.dl.models.load_model`) and pass the
            checkpoint for every block.
        batch_size : int, optional
            Windows per network call; default
            :func:`~napari_cycleulm.dl.inference.default_batch_size` capped at
            :data:`MAX_WINDOWS_PER_CALL` (4 on
            frames up to 128 x 160, 1 from 256 x 320 on; larger batches of big
            frames are slower and MBT-Net's x4 decoder would hold gigabytes of
            activations).
        device : str or torch.device, optional
            Torch device (default: the model's, CUDA when available).

        Returns
        -------
        int
            Number of windows processed by this call.
        """
        if self._finished:
            raise CycleULMError("result() was already called; start a new E2EAccumulator.")
        arr = as_frames(mb_frames, name="mb_frames")
        if arr.shape[1:] != self.shape:
            raise CycleULMError(
                f"frames of {arr.shape[1:]} do not match the accumulator's {self.shape}."
            )
        self._batch_size = resolve_batch_size(batch_size, self.shape, self._dev or resolve_device(device),
                                       cap=MAX_WINDOWS_PER_CALL)
        self._bind(model, device)
        self._buf = np.concatenate([self._buf, arr]) if len(self._buf) else arr
        self.n_frames += len(arr)
        return self._consume(final=False)

    def add_windows(
        self,
        windows,
        model=None,
        *,
        batch_size: int | None = None,
        device: str | torch.device | None = None,
    ) -> int:
        """Run MBT-Net on given windows and accumulate them (no buffering).

        For block-parallel runs: a block's windows (those whose first frame
        lies in the block, see :func:`window_starts`) are accumulated into a
        fresh accumulator, and the blocks' accumulators are merged
        (:meth:`merge`).

        Parameters
        ----------
        windows : (N, L, H, W) array_like
            MB-only windows of the model's length ``L``, a short last window
            already zero-padded.
        model, batch_size, device
            As in :meth:`add`.

        Returns
        -------
        int
            Number of windows accumulated.
        """
        if self._finished:
            raise CycleULMError("result() was already called; start a new E2EAccumulator.")
        arr = np.asarray(windows, dtype=np.float32)
        if arr.ndim != 4 or arr.shape[2:] != self.shape:
            raise CycleULMError(
                f"windows must be (N, L, {self.shape[0]}, {self.shape[1]}), got shape {arr.shape}."
            )
        batch_size = resolve_batch_size(batch_size, self.shape, self._dev or resolve_device(device),
                                       cap=MAX_WINDOWS_PER_CALL)
        self._bind(model, device)
        if arr.shape[1] != self.window:
            raise CycleULMError(f"windows of {arr.shape[1]} frames; the MBT-Net reads {self.window}.")
        for i in range(0, len(arr), batch_size):
            self._process(arr[i : i + batch_size])
        self.n_windows += len(arr)
        return len(arr)

    def merge(self, other: "E2EAccumulator") -> "E2EAccumulator":
        """Add another accumulator's windows to this one (in place); returns self.

        ``a.merge(b)`` equals one accumulator given the windows of both.  Both
        must have no frames waiting for a window (use :meth:`add_windows`, or
        :meth:`finish` after :meth:`add`).

        Raises
        ------
        CycleULMError
            Different grids, thresholds or window lengths, or buffered frames.
        """
        if not isinstance(other, E2EAccumulator):
            raise CycleULMError(f"can only merge another E2EAccumulator, got {type(other).__name__}.")
        mine = (self.shape, self.upsampling, self.prob_threshold)
        theirs = (other.shape, other.upsampling, other.prob_threshold)
        if mine != theirs:
            raise CycleULMError(
                f"cannot merge E2E accumulators with different (shape, upsampling, threshold): {mine} and {theirs}."
            )
        if None not in (self.window, other.window) and self.window != other.window:
            raise CycleULMError(f"cannot merge windows of {self.window} and {other.window} frames.")
        for acc in (self, other):
            if len(acc._buf) and not acc._finished:
                raise CycleULMError(
                    "an accumulator still holds frames waiting for a window; call finish() before merge()."
                )
        if other._sums is not None:
            if self._sums is None:
                self._sums = {k: v.detach().clone() for k, v in other._sums.items()}
            else:
                dev = self._sums["w"].device
                for k in _SUMS:
                    self._sums[k] += other._sums[k].to(dev)
        self.window = self.window if self.window is not None else other.window
        self.n_windows += other.n_windows
        self.n_frames += other.n_frames
        return self

    def to_cpu(self) -> "E2EAccumulator":
        """Drop the network and move the sums to the CPU (to send to another process); returns self."""
        self._net = self._dev = None
        if self._sums is not None:
            self._sums = {k: v.cpu() for k, v in self._sums.items()}
        return self

    def _consume(self, final: bool) -> int:
        L = self.window
        stride = self.stride or L
        end = self._buf_start + len(self._buf)
        starts = []
        s = self._next
        while s + L <= end:
            starts.append(s)
            s += stride
        windows = [self._buf[a - self._buf_start : a - self._buf_start + L] for a in starts]
        covered = starts[-1] + L if starts else self._covered
        # A last, zero-padded window only when some frames were seen by no window.
        if final and self.pad_last and s < end and covered < end:
            tail = self._buf[s - self._buf_start :]
            pad = np.zeros((L - len(tail), *self.shape), np.float32)
            windows.append(np.concatenate([tail, pad]))
            starts.append(s)
            s += stride
        if starts:
            self._covered = starts[-1] + L
        for i in range(0, len(windows), self._batch_size):
            self._process(np.stack(windows[i : i + self._batch_size]))
        self._next = s
        # Keep only frames still needed by future windows.
        keep_from = min(self._next, end)
        self._buf = self._buf[keep_from - self._buf_start :].copy()
        self._buf_start = keep_from
        self.n_windows += len(windows)
        return len(windows)

    def _process(self, windows: np.ndarray) -> None:
        x = torch.from_numpy(windows).to(self._dev)
        y = infer(self._net, x)
        n, _, h, w = x.shape
        want = (n, 3, h * UPSCALE, w * UPSCALE)
        if tuple(y.shape) != want:
            raise CycleULMError(f"the MBT-Net model returned shape {tuple(y.shape)}; expected {want}.")
        y = y.double()
        p = torch.sigmoid(y[:, 0])
        if self.prob_threshold is None:
            wgt = p
        else:
            wgt = (p >= self.prob_threshold).double()
        vy, vx = y[:, 1], y[:, 2]
        speed = torch.hypot(vy, vx)
        safe = torch.where(speed > 0, speed, torch.ones_like(speed))
        uy = torch.where(speed > 0, vy / safe, torch.zeros_like(vy))
        ux = torch.where(speed > 0, vx / safe, torch.zeros_like(vx))
        s = self._sums
        s["w"] += wgt.sum(0)
        s["speed"] += (wgt * speed).sum(0)
        s["axial"] += (wgt * torch.sign(vy) * speed).sum(0)
        s["uy"] += (wgt * uy).sum(0)
        s["ux"] += (wgt * ux).sum(0)
        s["vy"] += (wgt * vy).sum(0)
        s["vx"] += (wgt * vx).sum(0)

    # -- results ----------------------------------------------------------------
    def finish(self) -> None:
        """Process the leftover frames (see ``pad_last``); later calls do nothing."""
        if self._finished:
            return
        if self._net is not None:
            self._consume(final=True)
        self._finished = True

    def _resampled(self) -> dict[str, np.ndarray]:
        u = self.upsampling
        sr = (self.shape[0] * u, self.shape[1] * u)
        if self._sums is None:
            return {k: np.zeros(sr) for k in _SUMS}
        st = torch.stack([self._sums[k] for k in _SUMS])[None].cpu()
        if u != UPSCALE:
            st = F.interpolate(
                st, size=sr, mode="bilinear", align_corners=False, antialias=u < UPSCALE
            )
        return {k: st[0, i].numpy() for i, k in enumerate(_SUMS)}

    def mean_velocity(self) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean ``(vy, vx)`` maps, pixels/frame, float32 ``(H*u, W*u)``; NaN where empty."""
        self.finish()
        r = self._resampled()
        with np.errstate(invalid="ignore", divide="ignore"):
            has = r["w"] > 0
            vy = np.where(has, r["vy"] / r["w"], np.nan)
            vx = np.where(has, r["vx"] / r["w"], np.nan)
        return vy.astype(np.float32), vx.astype(np.float32)

    def result(self, pixel_size_um: float | None = None, frame_rate_hz: float | None = None) -> SRMaps:
        """The SR maps (processing the leftover frames first).

        Parameters
        ----------
        pixel_size_um, frame_rate_hz : float, optional
            Original pixel size (um) and frame rate (Hz): with both,
            velocities are in mm/s; with neither, in pixels/frame.

        Returns
        -------
        SRMaps
            ``density`` (sum of trajectory weights), ``count`` (zeros),
            ``velocity``, ``axial_velocity``, ``direction`` (see the module notes).
        """
        if (pixel_size_um is None) != (frame_rate_hz is None):
            raise CycleULMError(
                "give both pixel_size_um and frame_rate_hz for mm/s, or neither for px/frame."
            )
        if pixel_size_um is None:
            factor, unit = 1.0, "px/frame"
        else:
            _positive("pixel_size_um", pixel_size_um)
            _positive("frame_rate_hz", frame_rate_hz)
            factor, unit = float(pixel_size_um) * float(frame_rate_hz) / 1000.0, "mm/s"
        self.finish()
        r = self._resampled()
        wsum = r["w"]
        has = wsum > 1e-12
        with np.errstate(invalid="ignore", divide="ignore"):
            speed = np.where(has, r["speed"] / wsum, np.nan) * factor
            axial = np.where(has, r["axial"] / wsum, np.nan) * factor
            direction = np.where(has, np.arctan2(r["uy"], r["ux"]), np.nan)
        f32 = np.float32
        return SRMaps(
            density=wsum.astype(f32),
            count=np.zeros_like(wsum, dtype=f32),
            velocity=speed.astype(f32),
            axial_velocity=axial.astype(f32),
            direction=direction.astype(f32),
            velocity_unit=unit,
            upsampling=self.upsampling,
            pixel_size_um=None if pixel_size_um is None else float(pixel_size_um) / self.upsampling,
        )


def render_e2e(
    mb_frames,
    model=None,
    *,
    upsampling: int = 4,
    stride: int | None = None,
    prob_threshold: float | None = PROB_THRESHOLD,
    batch_size: int = 4,
    device=None,
    pixel_size_um: float | None = None,
    frame_rate_hz: float | None = None,
) -> SRMaps:
    """One-shot wrapper of :class:`E2EAccumulator` on a whole ``(T, H, W)`` MB-only stack."""
    arr = as_frames(mb_frames, name="mb_frames")
    acc = E2EAccumulator(arr.shape[1:], upsampling, stride=stride, prob_threshold=prob_threshold)
    acc.add(arr, model, batch_size=batch_size, device=device)
    return acc.result(pixel_size_um, frame_rate_hz)
