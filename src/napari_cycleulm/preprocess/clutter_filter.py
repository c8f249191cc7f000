"""SVD clutter filter: tissue removed from IQ or B-mode stacks, in blocks of frames.

* :func:`svd_clutter_filter` removes tissue (and optionally noise) from IQ or
  B-mode stacks by a singular value decomposition of the Casorati matrix.
* :func:`clutter_filtered` applies it to a whole acquisition in independent
  blocks of frames, lazily, as the first stage of every pipeline.

All functions take a ``(T, H, W)`` stack (or a single ``(H, W)`` image) and
return numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..device import resolve_device
from ..errors import CycleULMError

__all__ = [
    "ClutterFilter",
    "clutter_filtered",
    "parse_clutter_filter",
    "auto_cutoff",
    "static_texture_ratio",
    "svd_clutter_filter",
    "svd_knee",
]


# ---------------------------------------------------------------------------
# SVD clutter filter
# ---------------------------------------------------------------------------
def svd_knee(singular_values) -> int:
    """Automatic tissue cut-off: the knee of the log singular-value curve.

    The singular values (descending) are taken in decibels and the knee is the
    index of the point farthest *below* the straight line (chord) joining the
    first and the last point (the "Kneedle" rule).  For a stack made of a
    low-rank tissue component plus blood/noise, the curve drops steeply after
    the tissue components and then flattens, and the farthest point is the
    first non-tissue component, so the returned index is the number of
    components to remove.  Values more than 120 dB below the first are floored
    (round-off).  The result is clipped to ``[1, n - 1]``.  The rule assumes a
    noise floor, as in acquired data; on noise-free synthetic stacks whose
    blood signal decays smoothly in dB the knee drifts into that decay, so give
    ``cutoff`` explicitly there.

    Parameters
    ----------
    singular_values : array_like
        Singular values in descending order (length ``n >= 2``).

    Returns
    -------
    int
        Number of leading components to remove.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    n = s.size
    if n < 3:
        return 1
    # Values more than 120 dB below the largest are numerical round-off (the
    # Gram-matrix route resolves ~ -150 dB at best, float32 data ~ -140 dB);
    # flooring them keeps a run of zeros from dragging the chord down.
    floor = max(s[0] * 1e-6, np.finfo(np.float64).tiny)
    db = 20.0 * np.log10(np.maximum(s, floor))
    i = np.arange(n, dtype=np.float64)
    chord = db[0] + (db[-1] - db[0]) * i / (n - 1)
    below = chord - db
    k = int(np.argmax(below))
    return int(np.clip(k, 1, n - 1))


#: Pixels per chunk of the Casorati products (bounds the float64 temporaries).
_CHUNK_PIXELS = 1 << 16


def _temporal_basis(flat: np.ndarray, device) -> tuple[np.ndarray, torch.Tensor]:
    """Singular values and right singular vectors of a ``(T, P)`` Casorati stack.

    From the small ``T x T`` Gram matrix ``S^H S``, accumulated in float64
    (complex128 for IQ) over chunks of :data:`_CHUNK_PIXELS` pixels, so that
    memory stays that of the input; eigenvalues span many decades.

    Returns
    -------
    numpy.ndarray, torch.Tensor
        Singular values in decreasing order (float64, ``(T,)``) and the
        matching right singular vectors as columns (``(T, T)``, on ``device``).
    """
    t, p = flat.shape
    wide = torch.complex128 if np.iscomplexobj(flat) else torch.float64
    gram = torch.zeros((t, t), dtype=wide, device=device)
    for a in range(0, p, _CHUNK_PIXELS):
        c = torch.from_numpy(np.ascontiguousarray(flat[:, a:a + _CHUNK_PIXELS])).to(device, wide)
        gram += c.conj() @ c.T  # (T, T) = S^H S with S = flat.T
    evals, evecs = torch.linalg.eigh(gram)
    order = torch.argsort(evals, descending=True)
    return torch.sqrt(evals[order].clamp_min(0)).cpu().numpy(), evecs[:, order]


def svd_clutter_filter(
    frames,
    cutoff: int | None = None,
    *,
    high_cutoff: int | None = None,
    auto: str = "knee",
    return_complex: bool = False,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Spatiotemporal SVD clutter filter (Demené et al. 2015).

    The stack is reshaped to the Casorati matrix ``S`` (``H*W x T``).  Its
    right singular vectors ``V`` and singular values are obtained from the
    eigendecomposition of the small ``T x T`` Gram matrix ``S^H S`` (float64),
    which is much cheaper than a full SVD when ``T << H*W``.  Components
    ``0 .. cutoff-1`` (slowly varying, spatially coherent tissue) and, when
    ``high_cutoff`` is given, components ``high_cutoff .. T-1`` (noise) are
    removed: ``S_f = S V_k V_k^H`` with ``V_k`` the kept vectors.

    This is the only stage that accepts complex (IQ) input.

    Parameters
    ----------
    frames : array_like
        Real or complex ``(T, H, W)`` stack with ``T >= 2``.
    cutoff : int, optional
        Number of leading (tissue) components removed, ``0 <= cutoff < T``.
        ``None`` chooses it automatically (see ``auto``).
    high_cutoff : int, optional
        Components with index ``>= high_cutoff`` are removed as noise
        (``cutoff < high_cutoff <= T``).  Default keeps them.
    auto : {"knee"}
        Rule for ``cutoff=None``: ``"knee"`` is :func:`svd_knee`, the knee of
        the singular-value curve in dB.
    return_complex : bool
        Return the filtered complex data (complex64) instead of its magnitude.
    device : str or torch.device, optional
        Torch device (default: CUDA when available).

    Returns
    -------
    numpy.ndarray
        ``(T, H, W)`` float32 magnitude of the filtered data (complex64 when
        ``return_complex``).

    Raises
    ------
    CycleULMError
        On a stack that is not 3-D, empty, has fewer than 2 frames or holds
        NaN/inf values, or on invalid cut-offs.
    """
    arr = np.asarray(frames)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise CycleULMError(f"frames must be numeric, got dtype {arr.dtype}.")
    if arr.ndim != 3:
        raise CycleULMError(
            f"the SVD clutter filter needs a (frames, height, width) stack, got shape {arr.shape}."
        )
    if arr.size == 0:
        raise CycleULMError(f"frames is empty (shape {arr.shape}).")
    t, h, w = arr.shape
    if t < 2:
        raise CycleULMError("the SVD clutter filter needs at least 2 frames.")
    if not np.isfinite(arr).all():
        raise CycleULMError(
            "frames contains NaN or infinite values; replace them (numpy.nan_to_num) first."
        )
    if auto != "knee":
        raise CycleULMError(f"auto must be 'knee', got {auto!r}.")
    is_complex = np.iscomplexobj(arr)
    dev = resolve_device(device)
    cdtype = torch.complex64 if is_complex else torch.float32
    s = torch.from_numpy(np.ascontiguousarray(arr.reshape(t, h * w))).to(dev, cdtype)
    sing, evecs = _temporal_basis(arr.reshape(t, h * w).astype(np.complex64 if is_complex else np.float32,
                                                             copy=False), dev)

    if cutoff is None:
        cutoff = svd_knee(sing)
    cutoff = int(cutoff)
    hi = t if high_cutoff is None else int(high_cutoff)
    if not 0 <= cutoff < t:
        raise CycleULMError(f"cutoff must be in [0, {t - 1}] for {t} frames, got {cutoff}.")
    if not cutoff < hi <= t:
        raise CycleULMError(
            f"high_cutoff must be in [{cutoff + 1}, {t}] (above cutoff={cutoff}), "
            f"got {high_cutoff}."
        )
    vk = evecs[:, cutoff:hi].to(cdtype)  # kept right singular vectors (T, k)
    # S_f = S V_k V_k^H, and s = S^T holds one frame per row, so
    # s_f = conj(V_k) V_k^T s.
    proj = vk.T @ s  # (k, HW)
    filtered = (vk.conj() @ proj).reshape(t, h, w)
    if return_complex:
        return filtered.to(torch.complex64).cpu().numpy()
    return filtered.abs().to(torch.float32).cpu().numpy()


# ---------------------------------------------------------------------------
# Clutter filter stage: the whole acquisition, block by block
# ---------------------------------------------------------------------------
#: Frames per SVD block of the clutter-filter stage.  The filter assumes the
#: tissue is low-rank over one block: a few hundred frames (PALA filters
#: blocks of 200-800; 200 is 0.4 s at 500 Hz, short enough for breathing
#: motion to look coherent and long enough for a bubble crossing to be fast).
SVD_BLOCK_FRAMES = 200
#: Static-texture ratio (:func:`static_texture_ratio`) from which a block's
#: clutter counts as static and is filtered by ``svd:auto``.
STATIC_TEXTURE_RATIO = 0.38
#: ``svd:auto`` removes the leading components whose singular value exceeds
#: the block's median singular value by more than this (dB).
CLUTTER_ABOVE_MEDIAN_DB = 18.0
#: ``svd:auto`` never removes more than this fraction of a block's components.
MAX_CUTOFF_FRACTION = 0.1
#: The clutter filter every pipeline runs first unless told otherwise.
DEFAULT_CLUTTER_FILTER = "svd:auto"
#: Side of the box (pixels) whose mean is the smooth trend of the temporal-mean image.
TEXTURE_WINDOW_PX = 15


def static_texture_ratio(block) -> float:
    """How much static structure a block holds, relative to its temporal fluctuations.

    The ratio of the spatial texture of the block's temporal mean (median
    absolute deviation of the mean image from its 15-pixel box average) to
    the typical temporal fluctuation (median over pixels of the temporal
    standard deviation).  Static tissue or slowly evolving clutter makes a
    textured mean image over a small fluctuation (ratio ~1 or more); clutter
    that decorrelates within the block, bubbles and noise average out in the
    mean (ratio well below 1).  For IQ data the mean and the fluctuation are
    those of the complex signal.

    The texture a decorrelating clutter leaves in the mean of ``T`` frames
    falls as ``1 / sqrt(T)`` (its variance as ``tau / T`` for a time constant
    ``tau``), so the ratio is reported at the reference length of
    :data:`SVD_BLOCK_FRAMES` frames (multiplied by ``sqrt(T / 200)``): the
    decision then depends on how fast the clutter evolves, not on how many
    frames the block holds.

    Parameters
    ----------
    block : array_like, shape (T, H, W)
        Envelope or IQ frames.

    Returns
    -------
    float
        The ratio (0 for a constant block).
    """
    from scipy import ndimage

    x = np.asarray(block)
    x = x.astype(np.complex64 if np.iscomplexobj(x) else np.float32, copy=False)
    mean = x.mean(axis=0, dtype=np.complex128 if np.iscomplexobj(x) else np.float64)
    power = np.zeros(mean.shape, np.float64)
    for a in range(0, len(x), 16):  # bounded temporaries on large frames
        power += np.sum(np.abs(x[a:a + 16] - mean) ** 2, axis=0)
    fluct = float(np.median(np.sqrt(power / len(x))))
    m = np.abs(mean)
    texture = float(np.median(np.abs(m - ndimage.uniform_filter(m, TEXTURE_WINDOW_PX, mode="nearest"))))
    if fluct <= 0:
        return 0.0 if texture <= 0 else float("inf")
    return texture / fluct * float(np.sqrt(len(x) / SVD_BLOCK_FRAMES))


def auto_cutoff(block, singular_values=None) -> int:
    """The ``svd:auto`` cut-off of one block (0: leave the block as it is).

    Two decisions, both label-free:

    1. *Whether to filter.*  Removing components from an envelope stack whose
       clutter decorrelates within the block turns the clutter's fluctuations
       into bright blobs on a black background (the positive part of a
       zero-mean field), which every detector takes for bubbles; removing
       them from a stack with static or slowly evolving clutter uncovers the
       bubbles.  The block is filtered when :func:`static_texture_ratio` is
       at least :data:`STATIC_TEXTURE_RATIO`.
    2. *How much.*  The leading components whose singular value exceeds the
       median singular value of the block (the level of bubbles and noise)
       by more than :data:`CLUTTER_ABOVE_MEDIAN_DB`, at least 1 and at most
       :data:`MAX_CUTOFF_FRACTION` of the block's frames.

    The three values were chosen on simulated selection settings
    (``benchmarks/clutter_selection.py``, seeds 31-41), none of them a
    setting or seed of the generalisation benchmark; see ``docs/science.md``.

    Parameters
    ----------
    block : array_like, shape (T, H, W)
        Envelope or IQ frames of one SVD block.
    singular_values : array_like, optional
        The block's singular values in decreasing order (computed when absent).

    Returns
    -------
    int
        Number of leading components to remove.
    """
    if static_texture_ratio(block) < STATIC_TEXTURE_RATIO:
        return 0
    x = np.asarray(block)
    t = x.shape[0]
    if singular_values is None:
        singular_values, _ = _temporal_basis(x.reshape(t, -1), resolve_device(None))
    return _clutter_rank(singular_values, t)


def _clutter_rank(singular_values, n_frames: int) -> int:
    """Leading components more than :data:`CLUTTER_ABOVE_MEDIAN_DB` above the median singular value.

    At least 1 and at most :data:`MAX_CUTOFF_FRACTION` of ``n_frames`` (the
    second decision of :func:`auto_cutoff`).
    """
    sv = np.asarray(singular_values, dtype=np.float64)
    floor = np.median(sv)
    if not floor > 0:
        return 1
    above = 20.0 * np.log10(np.maximum(sv, np.finfo(np.float64).tiny) / floor) > CLUTTER_ABOVE_MEDIAN_DB
    k = int(np.argmin(above)) if not above.all() else len(sv)  # leading run above the level
    return int(np.clip(k, 1, max(1, int(MAX_CUTOFF_FRACTION * n_frames))))


@dataclass(frozen=True)
class ClutterFilter:
    """The clutter-filter stage of a pipeline: an SVD filter in blocks of frames.

    Attributes
    ----------
    method : {"none", "svd"}
        ``"svd"``: the spatiotemporal SVD filter (:func:`svd_clutter_filter`)
        on independent blocks of ``block_frames`` frames.
    cutoff : int or "auto"
        Leading components removed per block; ``"auto"`` chooses them per
        block with :func:`auto_cutoff`.
    block_frames : int
        Frames per SVD block (:data:`SVD_BLOCK_FRAMES`); the last block takes
        the remainder when it is shorter than half a block.
    """

    method: str = "svd"
    cutoff: int | str = "auto"
    block_frames: int = SVD_BLOCK_FRAMES

    def __post_init__(self) -> None:
        if self.method not in ("none", "svd"):
            raise CycleULMError(f"clutter filter must be 'none' or 'svd', got {self.method!r}.")
        if not (self.cutoff == "auto" or (isinstance(self.cutoff, (int, np.integer)) and self.cutoff >= 0)):
            raise CycleULMError(
                f"the SVD cut-off must be 'auto' or a number of components >= 0, got {self.cutoff!r}."
            )
        if not isinstance(self.block_frames, (int, np.integer)) or self.block_frames < 3:
            raise CycleULMError(f"the SVD block must hold at least 3 frames, got {self.block_frames!r}.")

    @property
    def active(self) -> bool:
        """Whether the stage changes the frames."""
        return self.method == "svd" and self.cutoff != 0

    def describe(self) -> str:
        """The CLI spelling (``none``, ``svd:auto``, ``svd:N``)."""
        return "none" if self.method == "none" else f"svd:{self.cutoff}"

    def blocks(self, n_frames: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of the SVD blocks covering ``n_frames`` frames."""
        b = int(self.block_frames)
        edges = list(range(0, n_frames, b)) + [n_frames]
        if len(edges) > 2 and edges[-1] - edges[-2] < b // 2:
            del edges[-2]  # a short tail joins the previous block
        return list(zip(edges[:-1], edges[1:]))


def parse_clutter_filter(text: str | ClutterFilter | None, block_frames: int = SVD_BLOCK_FRAMES) -> ClutterFilter:
    """A :class:`ClutterFilter` from its spelling: ``none``, ``svd``, ``svd:auto`` or ``svd:N``."""
    if isinstance(text, ClutterFilter):
        return text
    if text is None:
        return ClutterFilter("none", block_frames=block_frames)
    word = str(text).strip().lower()
    method, _, cut = word.partition(":")
    if method == "none" and not cut:
        return ClutterFilter("none", block_frames=block_frames)
    if method != "svd":
        raise CycleULMError(
            f"unknown clutter filter {text!r}: use none, svd, svd:auto or svd:N (N components removed)."
        )
    if cut in ("", "auto"):
        return ClutterFilter("svd", "auto", block_frames)
    try:
        n = int(cut)
    except ValueError:
        raise CycleULMError(
            f"the SVD cut-off in {text!r} must be 'auto' or a whole number of components, e.g. svd:5."
        ) from None
    return ClutterFilter("svd", n, block_frames)


def _filter_block(block: np.ndarray, cutoff: int | str, device) -> tuple[np.ndarray, int]:
    """One SVD block: envelope of the filtered frames and the cut-off used."""
    if cutoff == "auto" and static_texture_ratio(block) < STATIC_TEXTURE_RATIO:
        cutoff = 0
    if cutoff == 0:
        return np.abs(block).astype(np.float32), 0
    t, h, w = block.shape
    is_complex = np.iscomplexobj(block)
    flat = block.reshape(t, h * w)
    dev = resolve_device(device)
    wide = torch.complex128 if is_complex else torch.float64
    sing, evecs = _temporal_basis(flat, dev)
    if cutoff == "auto":  # the static-texture test was passed above: only the rank is left
        cutoff = _clutter_rank(sing, t)
    k = min(int(cutoff), t - 1)
    vk = evecs[:, k:]
    out = np.empty((t, h, w), np.float32)
    flat_out = out.reshape(t, h * w)
    for a in range(0, h * w, _CHUNK_PIXELS):
        c = torch.from_numpy(np.ascontiguousarray(flat[:, a:a + _CHUNK_PIXELS])).to(dev, wide)
        f = vk.conj() @ (vk.T @ c)
        # Complex IQ: the envelope of the filtered signal.  Envelope input:
        # bubbles add intensity, so only the positive residual is signal
        # (negative values are where the tissue estimate exceeds the frame).
        f = f.abs() if is_complex else f.clamp_min(0)
        flat_out[:, a:a + _CHUNK_PIXELS] = f.to(torch.float32).cpu().numpy()
    return out, k


def clutter_filtered(stack, clutter_filter: ClutterFilter | str = "svd:auto", *, device=None):
    """The acquisition after the clutter-filter stage, read lazily block by block.

    Each SVD block of ``clutter_filter.block_frames`` frames is filtered on
    its own (as PALA does), the first time one of its frames is read; one
    filtered block is kept, so streaming the result block by block filters
    each SVD block once and memory stays that of one block.

    Parameters
    ----------
    stack : array_like or io.LazyStack, shape (T, H, W)
        Envelope (real) or IQ (complex) frames.
    clutter_filter : ClutterFilter or str
        The stage (:func:`parse_clutter_filter` spelling accepted).
    device : str, optional
        Torch device of the SVD.

    Returns
    -------
    io.LazyStack or the input
        float32 envelope frames of the same shape; the input itself when the
        stage is ``none`` and the input is not complex.  ``cutoffs`` (a dict
        ``block start -> components removed``) fills as blocks are filtered.
    """
    from ..io import LazyStack

    spec = parse_clutter_filter(clutter_filter)
    shape = tuple(int(s) for s in stack.shape)
    if len(shape) != 3:
        raise CycleULMError(f"the clutter filter needs a (frames, height, width) stack, got shape {shape}.")
    complex_in = np.issubdtype(np.dtype(stack.dtype), np.complexfloating)
    if not spec.active and not complex_in:
        return stack
    blocks = spec.blocks(shape[0])
    cache: dict = {}
    cutoffs: dict[int, int] = {}

    def filtered(i: int) -> np.ndarray:
        if cache.get("index") != i:
            start, stop = blocks[i]
            raw = np.asarray(stack[start:stop])
            if not np.isfinite(raw).all():
                raise CycleULMError(
                    f"frames {start}-{stop - 1} hold NaN or infinite values; replace them "
                    "(numpy.nan_to_num) before clutter filtering."
                )
            if spec.active and stop - start >= 3:
                out, k = _filter_block(raw, spec.cutoff, device)
            else:  # "none" on IQ input, or a block too short to filter: the envelope
                out, k = np.abs(raw).astype(np.float32), 0
            cutoffs[start] = k
            cache.clear()
            cache.update(index=i, frames=out)
        return cache["frames"]

    starts = np.array([b[0] for b in blocks])

    def read(start: int, stop: int) -> np.ndarray:
        parts = []
        f = start
        while f < stop:
            i = int(np.searchsorted(starts, f, side="right") - 1)
            b0, b1 = blocks[i]
            hi = min(stop, b1)
            parts.append(filtered(i)[f - b0:hi - b0])
            f = hi
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    lazy = LazyStack(shape, np.float32, read, source=getattr(stack, "source", ""))
    lazy.cutoffs = cutoffs
    lazy.clutter_filter = spec
    return lazy
