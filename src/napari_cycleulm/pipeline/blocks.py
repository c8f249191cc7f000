"""One block of a pipeline: a pure function of the frames, their neighbours and the run's plan.

:func:`process_block` turns frames ``start:stop`` of the acquisition into a
:class:`BlockResult`: the block's localisations (frame numbers of the
acquisition), its power Doppler sum and, for the MBT-Net pipelines, its
windows accumulated into an :class:`~napari_cycleulm.render.e2e.E2EAccumulator`.
It reads the neighbouring frames it needs from the acquisition itself (the
frame before and after for MB-DT, the next MB-only frame for a 3-frame
MBL-Net, the frames of a window that runs past the block), so a block gives
the same result wherever and in whatever order it is processed: in one
process (:func:`~napari_cycleulm.pipeline.iter_pipeline`) or on dask workers
(:mod:`napari_cycleulm.pipeline.distributed`).  Linking tracks, which needs
the blocks in order, and merging the accumulators are left to the runner.

The :class:`RunPlan` holds everything decided once per run (PSF, intensity
scale, thresholds, networks); it can be pickled, without its open stack and
loaded networks, which a worker re-opens from the input file and the
checkpoint paths the first time it needs them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import io as ulm_io
from ..errors import CycleULMError
from ..render import PowerDopplerAccumulator
from ..stages import DENOISERS, get_denoiser, localise_block
from ..io.tables import Localisations
from .specs import PipelineSpec


@dataclass(frozen=True)
class WindowPlan:
    """How MBT-Net windows are cut and accumulated (E2E maps or the motion prior)."""

    #: Frames per window (the network's ``n_frames``).
    window: int
    #: Trajectory probability a pixel must reach to count (None: soft weights).
    prob_threshold: float | None
    #: Frames between window starts (None: ``window``).
    stride: int | None = None
    pad_last: bool = True
    #: Windows per network call (None: :func:`~napari_cycleulm.dl.inference.default_batch_size`, at most
    #: :data:`~napari_cycleulm.render.e2e.MAX_WINDOWS_PER_CALL`).
    batch_size: int | None = None


@dataclass
class BlockResult:
    """What one block produced; merged in frame order by the runner.

    Attributes
    ----------
    start, stop : int
        Frames of the block.
    localisations : Localisations
        Frame numbers of the acquisition (empty for ``cycleulm-e2e``).
    power_doppler : PowerDopplerAccumulator
        Sum of squared (clutter-filtered) frames of the block.
    e2e, prior : E2EAccumulator or None
        MBT-Net windows starting in the block: the E2E maps, or the motion
        prior of ``cycleulm-tracks``.
    cutoffs : dict
        SVD block start -> clutter components removed, for the SVD blocks read.
    timings_s : dict
        Seconds per stage.
    """

    start: int
    stop: int
    localisations: Localisations
    power_doppler: PowerDopplerAccumulator
    e2e: Any = None
    prior: Any = None
    cutoffs: dict[int, int] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass
class RunPlan:
    """Everything a block needs, decided once per run by the runner.

    ``stack`` (the clutter-filtered acquisition) and ``networks`` (loaded
    checkpoints) are opened lazily and are not pickled: a copy sent to another
    process re-opens the input with ``reopen`` (or carries the array itself)
    and loads each network from its checkpoint path, once per copy.
    """

    spec: PipelineSpec
    n_frames: int
    frame_shape: tuple[int, int]
    block_size: int
    #: SR grid factor of the maps (MBT-Net accumulators resample to it).
    upsampling: int
    scale: float
    #: CEUS PSF (gate, baseline denoising) and the PSF the localiser uses.
    psf: Any
    loc_psf: Any
    #: Localiser threshold (None for cycleulm-e2e).
    threshold: float | None
    denoise_params: dict
    localise_params: dict
    gate_mode: str
    gate_params: dict
    e2e: WindowPlan | None
    prior: WindowPlan | None
    mblnet_context: bool
    device: str | None
    clutter: Any
    #: The input before the clutter filter: an array (NumPy, zarr, dask) or None when ``reopen`` is set.
    source_array: Any
    #: Re-opens the input file (``functools.partial(io.read_stack, ...)``), or None.
    reopen: Callable[[], Any] | None
    #: Checkpoint kind -> path (or the Checkpoint itself when it has no file).
    network_sources: dict
    _stack: Any = field(default=None, repr=False)
    _networks: dict | None = field(default=None, repr=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if state["reopen"] is None and state["source_array"] is None:
            raise CycleULMError(
                "this input cannot be sent to dask workers: give the pipeline a file path "
                "(cycleulm run FILE), or a NumPy, zarr or dask array."
            )
        state.update(_stack=None, _networks=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def stack(self):
        """The clutter-filtered acquisition (opened on first use)."""
        if self._stack is None:
            from ..preprocess import clutter_filtered

            raw = self.reopen() if self.reopen is not None else self.source_array
            self._stack = clutter_filtered(raw, self.clutter, device=self.device)
        return self._stack

    @property
    def networks(self) -> dict:
        """Loaded checkpoints by kind (loaded on first use)."""
        if self._networks is None:
            from ..dl.models import load_model

            self._networks = {kind: load_model(kind, src, self.device)
                              for kind, src in self.network_sources.items()}
        return self._networks

    def blocks(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of every block, in frame order."""
        n, b = self.n_frames, self.block_size
        return [(s, min(s + b, n)) for s in range(0, n, b)]


def _read(plan: RunPlan, start: int, stop: int) -> np.ndarray:
    """Frames ``start:stop`` of the filtered acquisition, float32, unscaled."""
    return ulm_io.read_block(plan.stack, start, stop)


def mb_only_frames(plan: RunPlan, start: int, stop: int, block: np.ndarray | None = None) -> np.ndarray:
    """MB-DT's (gated) MB-only frames ``start:stop``, with their true CEUS neighbours.

    Parameters
    ----------
    plan : RunPlan
    start, stop : int
        Frames of the acquisition.
    block : (stop - start, H, W) float32 array, optional
        Those frames already read and multiplied by ``plan.scale``.

    Returns
    -------
    (stop - start, H, W) float32 array
        In normalised intensity units.
    """
    return DENOISERS["mbdt"].function(plan, start, stop, block)


def _accumulate_windows(plan: RunPlan, windows: WindowPlan, start: int, stop: int, den: np.ndarray):
    """An E2EAccumulator of the MBT-Net windows whose first frame is in ``start:stop``."""
    from ..render.e2e import E2EAccumulator, window_starts

    acc = E2EAccumulator(plan.frame_shape, upsampling=plan.upsampling, stride=windows.stride,
                         prob_threshold=windows.prob_threshold, pad_last=windows.pad_last)
    mine = [s for s in window_starts(plan.n_frames, windows.window, windows.stride, windows.pad_last)
            if start <= s < stop]
    if not mine:
        return acc.to_cpu()
    L = windows.window
    end = min(plan.n_frames, mine[-1] + L)
    frames = den[mine[0] - start:]
    if end > stop:  # a window runs past the block: its MB-only frames, with their own neighbours
        frames = np.concatenate([frames, mb_only_frames(plan, stop, end)])
    out = np.zeros((len(mine), L, *plan.frame_shape), np.float32)
    for i, s in enumerate(mine):
        w = frames[s - mine[0]: s - mine[0] + L]
        out[i, :len(w)] = w
    acc.add_windows(out, plan.networks["mbtnet"], batch_size=windows.batch_size, device=plan.device)
    return acc.to_cpu()


def process_block(plan: RunPlan, start: int, stop: int) -> BlockResult:
    """Denoise and localise frames ``start:stop`` (see the module notes).

    Returns
    -------
    BlockResult
        The block's contribution, to be merged in frame order.
    """
    with plan._lock:  # one block at a time per plan: the lazy clutter filter keeps one SVD block
        return _process_block(plan, start, stop)


def _process_block(plan: RunPlan, start: int, stop: int) -> BlockResult:
    timings: dict[str, float] = {}

    def add(stage: str, t0: float) -> None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0

    spec = plan.spec
    t0 = time.perf_counter()
    raw = _read(plan, start, stop)
    pd = PowerDopplerAccumulator()
    pd.add(raw)
    block = raw * plan.scale
    extra = {}
    denoise = get_denoiser(spec.denoise).function
    den = denoise(plan, start, stop, block)
    if plan.mblnet_context:  # 3-frame MBL-Nets see the true neighbouring (MB-only) frames
        extra = {
            "before": denoise(plan, start - 1, start, None)[0] if start > 0 else None,
            "after": denoise(plan, stop, stop + 1, None)[0] if stop < plan.n_frames else None,
        }
    add("denoise", t0)
    e2e = prior = None
    t0 = time.perf_counter()
    if plan.e2e is not None:
        e2e = _accumulate_windows(plan, plan.e2e, start, stop, den)
        locs = Localisations()
        add("e2e", t0)
    else:
        if plan.prior is not None:
            prior = _accumulate_windows(plan, plan.prior, start, stop, den)
            add("motion prior", t0)
            t0 = time.perf_counter()
        loc_model = plan.networks.get(plan_network(plan))
        locs = localise_block(den, spec.localise, plan.loc_psf, threshold=plan.threshold, model=loc_model,
                              **extra, **plan.localise_params)
        add("localise", t0)
    if len(locs):
        locs = locs.with_columns(frame=locs["frame"] + start)
    cutoffs = dict(getattr(plan.stack, "cutoffs", {}))
    return BlockResult(start, stop, locs, pd, e2e=e2e, prior=prior, cutoffs=cutoffs, timings_s=timings)


def plan_network(plan: RunPlan) -> str | None:
    """Checkpoint kind of the plan's localiser (None for methods without a network)."""
    from ..stages import LOCALISERS

    return None if plan.spec.end_to_end else LOCALISERS[plan.spec.localise].network


__all__ = ["BlockResult", "RunPlan", "WindowPlan", "mb_only_frames", "process_block"]
