"""The stage registry: each denoiser and localiser declared once, with its defaults, units and needs.

The pipelines (:mod:`napari_cycleulm.pipeline`), the command line and every
napari widget read their choices and default thresholds here, so a widget
and a pipeline given the same frames and settings produce the same table.

Intensity convention
--------------------
Every absolute threshold is in *normalised intensity units*: CEUS frames are
multiplied by one factor per run, the one that maps the 99.9th percentile of
the run's first :data:`CALIBRATION_FRAMES` frames to 1
(:func:`~napari_cycleulm.intensity.intensity_scale`).  MB-DT's MB-only output is
in the same units, so it needs no further scaling.

Adding a localiser
------------------
Write ``localise/<name>.py`` with a function ``f(frames, psf, *, threshold,
**kw) -> Localisations`` and add one :class:`Localiser` entry to
:data:`LOCALISERS` (:func:`register_localiser` does it at run time, e.g. in a
test or a script).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from . import io as ulm_io
from .intensity import intensity_scale, mbdt_input_scale
from .errors import CycleULMError
from .progress import Progress
from .io.tables import Localisations

#: Frames read at the start of a run to estimate the PSF ("auto") and the intensity scale.
CALIBRATION_FRAMES = 100


@dataclass(frozen=True)
class Localiser:
    """A localisation method and what it needs.

    Attributes
    ----------
    name : str
        Registry key (CLI and widget choice).
    function : callable
        ``function(frames, psf, *, threshold, **kw) -> Localisations`` on a
        ``(T, H, W)`` block; ``kw`` may hold ``absolute_threshold``,
        ``model``, ``before``, ``after``, ``device`` when the entry says it
        needs them.
    description : str
        One line for menus and ``--help``.
    threshold_ceus : float or None
        Default threshold on CEUS-domain frames (None: the method needs MB-only frames).
    threshold_mbonly : float
        Default threshold on MB-only frames (MB-DT output).
    threshold_unit : str
        What the threshold measures.
    absolute : bool
        The threshold is an intensity, so frames must be in normalised units
        (the function gets ``absolute_threshold=True``).
    needs_psf : bool
        The function needs the PSF (else a PSF is only used to check a network's range).
    network : str or None
        Checkpoint kind the function takes as ``model=`` (``"mblnet"``).
    uses_neighbours : bool
        The function may read the frames just before and after a block
        (``before=``, ``after=``), e.g. a 3-frame MBL-Net.
    """

    name: str
    function: Callable[..., Localisations]
    description: str
    threshold_ceus: float | None
    threshold_mbonly: float
    threshold_unit: str
    absolute: bool = False
    needs_psf: bool = True
    network: str | None = None
    uses_neighbours: bool = False

    def default_threshold(self, mb_only: bool) -> float:
        """The default threshold for CEUS (``mb_only=False``) or MB-only frames."""
        if mb_only:
            return self.threshold_mbonly
        if self.threshold_ceus is None:
            raise CycleULMError(
                f"{self.name} localises MB-only frames (MB-DT's output), not CEUS frames: translate "
                "the stack first or choose a CycleULM pipeline."
            )
        return self.threshold_ceus


def _ncc(frames, psf, **kw):
    from .localise import localise_ncc

    return localise_ncc(frames, psf, **kw)


def _decon(frames, psf, **kw):
    from .localise import localise_decon

    return localise_decon(frames, psf, **kw)


def _mblnet(frames, psf, **kw):
    from .localise import localise_mblnet

    return localise_mblnet(frames, **kw)


#: The localisers.  Default thresholds (and why) are in docs/science.md:
#: CEUS-domain values are the paper's baselines' (NCC 0.3, deconvolution 0.1);
#: MB-only values were chosen with ``benchmarks/thresholds.py`` on held-out
#: simulated settings by the minimax rule (never with the evaluation data).
LOCALISERS: dict[str, Localiser] = {
    "ncc": Localiser(
        "ncc", _ncc, "normalised cross-correlation with the PSF",
        threshold_ceus=0.3, threshold_mbonly=0.75, threshold_unit="NCC score (0-1)",
    ),
    "decon": Localiser(
        "decon", _decon, "sparsity-based deconvolution with the PSF",
        threshold_ceus=0.1, threshold_mbonly=0.1,
        threshold_unit="amplitude in normalised intensity units", absolute=True,
    ),
    "mblnet": Localiser(
        "mblnet", _mblnet, "MBL-Net (DECODE-style network) on MB-only frames",
        threshold_ceus=None, threshold_mbonly=0.4,
        threshold_unit="MBL-Net probability summed over 3x3 pixels",
        needs_psf=False, network="mblnet", uses_neighbours=True,
    ),
}


@dataclass(frozen=True)
class Denoiser:
    """What a pipeline does to a block before localisation, and what it needs.

    Attributes
    ----------
    name : str
        Registry key (``PipelineSpec.denoise``).
    function : callable
        ``function(run, start, stop, block) -> frames``: ``block`` is frames
        ``start:stop`` in normalised intensity units; ``run`` is the run's
        plan (:class:`napari_cycleulm.pipeline.RunPlan`: ``psf``,
        ``denoise_params``, ``networks``, ``stack``, ``scale``, ``n_frames``,
        gate settings), from which a denoiser that needs neighbouring frames
        reads them.
    description : str
        One line for menus and ``--help``.
    mb_only : bool
        The output is in the MB-only domain: localisers use their MB-only
        threshold and the MB-only PSF (``psf.mbonly()``), and the evidence gate applies.
    context_frames : int
        Frames read on each side of a block.
    network : str or None
        Checkpoint kind it runs.
    normalisation : str
        The intensity convention its input must follow.
    input_scale : callable
        ``input_scale(calibration_frames) -> float``: the run's intensity
        factor for this denoiser's input (:func:`~napari_cycleulm.intensity.intensity_scale`,
        or :func:`~napari_cycleulm.intensity.mbdt_input_scale` for MB-DT).
    """

    name: str
    function: Callable[..., np.ndarray]
    description: str
    mb_only: bool = False
    context_frames: int = 0
    network: str | None = None
    normalisation: str = "normalised intensity units (the run's intensity scale, see the module notes)"
    input_scale: Callable[..., float] = intensity_scale


def _scaled_block(run, start, stop, block):
    """Frames ``start:stop`` in normalised units: ``block`` when given, else read from the run's stack."""
    return ulm_io.read_block(run.stack, start, stop) * run.scale if block is None else block


def _bradley_roth(run, start, stop, block=None):
    from .preprocess import adaptive_threshold

    return adaptive_threshold(_scaled_block(run, start, stop, block), psf=run.psf, **run.denoise_params)


def _no_denoising(run, start, stop, block=None):
    return _scaled_block(run, start, stop, block)


def _mbdt(run, start, stop, block=None):
    """MB-DT's (gated) MB-only frames ``start:stop``, with their true CEUS neighbours."""
    from .preprocess.evidence_gate import block_gate
    from .dl.mbdt_inference import translate

    n, scale, stack = run.n_frames, run.scale, run.stack
    block = _scaled_block(run, start, stop, block)
    before = ulm_io.read_block(stack, start - 1, start)[0] * scale if start > 0 else None
    after = ulm_io.read_block(stack, stop, stop + 1)[0] * scale if stop < n else None
    den = translate(block, run.networks["mbdt"], scale=1.0, before=before, after=after, **run.denoise_params)
    gate = block_gate(stack, block, start, stop, scale=scale, psf=run.psf, mode=run.gate_mode, **run.gate_params)
    return den if gate is None else den * gate


#: The denoisers of the pipelines.
DENOISERS: dict[str, Denoiser] = {
    "threshold": Denoiser("threshold", _bradley_roth, "Bradley-Roth adaptive thresholding (the baselines)"),
    "none": Denoiser("none", _no_denoising, "no denoising"),
    "mbdt": Denoiser(
        "mbdt", _mbdt, "MB-DT: CEUS frames to MB-only frames (3 frames in, 1 out), gated by CEUS evidence",
        mb_only=True, context_frames=1, network="mbdt",
        normalisation="MB-DT's input convention: the run's intensity scale, moved so that the "
                      "median background lies between intensity.MBDT_BACKGROUND_FLOOR and "
                      "intensity.MBDT_BACKGROUND_LEVEL (raised at most MBDT_MAX_RAISE times)",
        input_scale=mbdt_input_scale,
    ),
}


def get_denoiser(name: str) -> Denoiser:
    """The registry entry ``name``, with a clear error listing the choices."""
    try:
        return DENOISERS[name]
    except KeyError:
        raise CycleULMError(f"unknown denoiser {name!r}; choose one of {sorted(DENOISERS)}.") from None


def register_localiser(localiser: Localiser) -> None:
    """Add (or replace) a localiser: it appears in the CLI, the widgets and the pipelines' choices."""
    if not isinstance(localiser, Localiser):
        raise CycleULMError(f"expected a stages.Localiser, got {type(localiser).__name__}.")
    LOCALISERS[localiser.name] = localiser


def get_localiser(name: str) -> Localiser:
    """The registry entry ``name``, with a clear error listing the choices."""
    try:
        return LOCALISERS[name]
    except KeyError:
        raise CycleULMError(
            f"unknown localisation method {name!r}; choose one of {sorted(LOCALISERS)}."
        ) from None


def localise_block(
    block: np.ndarray,
    method: str,
    psf,
    *,
    threshold: float,
    before: np.ndarray | None = None,
    after: np.ndarray | None = None,
    model=None,
    device=None,
    **params,
) -> Localisations:
    """Localise one block of normalised frames with a registered method.

    The one place where a registry entry is turned into a call: the pipelines
    and :func:`iter_localise` both come here.

    Parameters
    ----------
    block : (T, H, W) float32 array
        Frames in normalised intensity units.
    method : str
        A key of :data:`LOCALISERS`.
    psf : PSF or None
        The PSF of these frames (the MB-only PSF on MB-only frames).
    threshold : float
        In the unit of the entry (:attr:`Localiser.threshold_unit`).
    before, after : (H, W) arrays, optional
        Neighbouring frames, for methods that use them.
    model : Checkpoint, optional
        The network, for methods that need one.
    device : str, optional
        Torch device.
    **params
        Further keyword arguments of the method's function.

    Returns
    -------
    Localisations
        Frame numbers relative to the block.
    """
    entry = get_localiser(method)
    kw = dict(params)
    if entry.absolute:
        kw["absolute_threshold"] = True
    if entry.network is not None:
        kw["model"] = model
    if entry.uses_neighbours:
        kw["before"], kw["after"] = before, after
    if device is not None:
        kw["device"] = device
    return entry.function(block, psf, threshold=threshold, **kw)


def calibration_frames(stack) -> np.ndarray:
    """The first :data:`CALIBRATION_FRAMES` frames of a stack, as float32.

    A run's intensity scale (:func:`run_scale`) and its automatic PSF come
    from them, whatever the block size, so that every block of the run and
    every tool that repeats a pipeline stage agree.
    """
    return ulm_io.read_block(stack, 0, min(len(stack), CALIBRATION_FRAMES))


def run_scale(stack, scale: float | None = None, *, mbdt: bool = False) -> float:
    """The run's intensity factor: ``scale`` when given, else from the first :data:`CALIBRATION_FRAMES`.

    ``mbdt=True``: the factor of MB-DT's input
    (:func:`~napari_cycleulm.intensity.mbdt_input_scale`), which all CycleULM
    pipelines, the Translate tool and MB-DT's fine-tuning use.
    """
    if scale is not None:
        scale = float(scale)
        if not (np.isfinite(scale) and scale > 0):
            raise CycleULMError(f"the intensity scale must be a positive number, got {scale}.")
        return scale
    factor = DENOISERS["mbdt"].input_scale if mbdt else intensity_scale
    return factor(calibration_frames(stack))


def iter_localise(
    stack,
    method: str,
    psf=None,
    *,
    threshold: float | None = None,
    mb_only: bool = False,
    scale: float | None = None,
    block_size: int = 200,
    model=None,
    device=None,
    **params,
) -> Generator[Progress, None, Localisations]:
    """Localise a whole stack block by block, as the pipelines do; a progress generator.

    Parameters
    ----------
    stack : array_like, io.LazyStack, dask or zarr array
        ``(T, H, W)`` frames; read one block at a time.
    method : str
        A key of :data:`LOCALISERS`.
    psf : PSF or None
        PSF of the frames (MB-only PSF for MB-only frames).
    threshold : float, optional
        Default: the entry's default for CEUS or MB-only frames (``mb_only``).
    mb_only : bool
        The frames are MB-DT output.
    scale : float, optional
        Intensity factor; default :func:`run_scale` (the pipelines' rule).
        Pass 1 for frames already in normalised units (a CycleULM denoised
        or MB-only layer).
    block_size : int
        Frames per block.
    model, device, **params
        As in :func:`localise_block`.

    Returns
    -------
    Localisations
        All localisations with frame numbers of the stack.
    """
    entry = get_localiser(method)
    if block_size < 1:
        raise CycleULMError(f"block_size must be >= 1, got {block_size}.")
    if entry.needs_psf and psf is None:
        raise CycleULMError(f"{method} needs a PSF: estimate one first (PSF tool or `cycleulm psf`).")
    threshold = entry.default_threshold(mb_only) if threshold is None else float(threshold)
    n = len(stack)
    scale = np.float32(run_scale(stack, scale))
    parts = []
    prev = None
    for start, stop, block in ulm_io.iter_blocks(stack, block_size):
        block = block * scale
        after = None
        if entry.uses_neighbours and stop < n:
            after = ulm_io.read_block(stack, stop, stop + 1)[0] * scale
        locs = localise_block(block, method, psf, threshold=threshold, before=prev, after=after,
                              model=model, device=device, **params)
        prev = block[-1]
        parts.append(locs.with_columns(frame=locs["frame"] + start) if len(locs) else locs)
        yield Progress(stop, n, f"localise ({method})")
    return Localisations.concat(parts)


__all__ = [
    "CALIBRATION_FRAMES",
    "DENOISERS",
    "Denoiser",
    "LOCALISERS",
    "Localiser",
    "calibration_frames",
    "get_denoiser",
    "get_localiser",
    "iter_localise",
    "localise_block",
    "register_localiser",
    "run_scale",
]
