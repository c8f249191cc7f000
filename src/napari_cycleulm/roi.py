"""Regions of interest (ROIs) for training MB-DT on part of an acquisition.

The paper (section 3.2) trains MB-DT on 40x40 patches drawn only inside an
ROI that outlines the organ, so the network learns the tissue and bubble
signal rather than the empty background.  This module turns drawn shapes
into a pixel mask and lists the patch positions inside it.

Shapes are given as napari's Shapes layer gives them: one ``(N, 2)`` array of
``(y, x)`` vertices in pixels per polygon or rectangle (``(0, 0)`` is the
centre of the top-left pixel).  Shapes drawn on a 3-D ``(frame, y, x)`` stack
have ``(N, 3)`` vertices; the frame coordinate is dropped because an ROI
applies to every frame.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.draw import ellipse as _draw_ellipse
from skimage.draw import polygon2mask

from ._atomic import atomic_path
from .errors import CycleULMError

#: Fraction of a patch's pixels that must lie inside the ROI for the patch to be used.
MIN_INSIDE_FRACTION = 0.9

#: Shape types that enclose an area (napari names); lines and paths do not.
AREA_SHAPE_TYPES = ("polygon", "rectangle", "ellipse")


def _image_hw(image_shape) -> tuple[int, int]:
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise CycleULMError(
            f"image_shape must be (height, width) or (frames, height, width), got {image_shape!r}."
        ) from None
    if len(shape) < 2 or min(shape[-2:]) < 1:
        raise CycleULMError(
            f"image_shape must be (height, width) or (frames, height, width), got {image_shape!r}."
        )
    return shape[-2], shape[-1]


def _vertices(shape, index: int) -> np.ndarray:
    """``(N, 2)`` float ``(y, x)`` vertices of one shape (extra leading coordinates dropped)."""
    try:
        v = np.asarray(shape, dtype=np.float64)
    except (TypeError, ValueError):
        raise CycleULMError(
            f"ROI shape {index} is not an array of numeric vertices; give (N, 2) (y, x) pixel "
            "coordinates."
        ) from None
    if v.ndim != 2 or v.shape[1] < 2:
        raise CycleULMError(
            f"ROI shape {index} must be an (N, 2) array of (y, x) vertices (or (N, 3) with the "
            f"frame first, as drawn on a stack), got shape {v.shape}."
        )
    if not np.isfinite(v).all():
        raise CycleULMError(f"ROI shape {index} has NaN or infinite vertices.")
    v = v[:, -2:]  # (frame, y, x) -> (y, x): an ROI applies to every frame
    if len(v) < 3 or len(np.unique(v, axis=0)) < 3:
        raise CycleULMError(
            f"ROI shape {index} has fewer than 3 distinct vertices and encloses no area; draw a "
            "polygon or a rectangle."
        )
    return v


def rois_to_mask(shapes, image_shape, shape_types: Sequence[str] | None = None) -> np.ndarray:
    """Rasterise ROI shapes into a boolean mask (union of all shapes).

    Parameters
    ----------
    shapes : list of array_like, array_like or numpy.ndarray of bool
        Polygons and rectangles as ``(N, 2)`` arrays of ``(y, x)`` vertices in
        pixels (``(N, 3)`` ``(frame, y, x)`` vertices from a Shapes layer drawn
        on a stack: the frame is dropped), e.g. ``shapes_layer.data``; a single
        ``(N, 2)`` float array is one polygon.  A boolean ``(H, W)`` array is
        taken as a ready mask (its shape is checked).
    image_shape : tuple of int
        ``(H, W)`` or ``(T, H, W)`` of the image the ROI was drawn on.
    shape_types : sequence of str, optional
        napari shape types (``shapes_layer.shape_type``), one per shape:
        ``"polygon"`` and ``"rectangle"`` are filled polygons, an ``"ellipse"``
        is the ellipse inscribed in its 4 bounding-box vertices; ``"line"`` and
        ``"path"`` enclose no area and are rejected.  Default: all polygons.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` bool, True inside the ROI.

    Raises
    ------
    CycleULMError
        No shapes, malformed vertices, a line/path shape, a mask of the wrong
        shape, or an ROI that covers no pixel of the image.
    """
    h, w = _image_hw(image_shape)
    if isinstance(shapes, np.ndarray) and shapes.dtype == bool:
        if shapes.shape != (h, w):
            raise CycleULMError(
                f"the ROI mask has shape {shapes.shape} but the image is {(h, w)}; draw the ROI "
                "on the same image."
            )
        mask = shapes.copy()
    else:
        if isinstance(shapes, np.ndarray) and shapes.ndim == 2:
            shapes = [shapes]
        if shapes is None or len(shapes) == 0:
            raise CycleULMError("no ROI shapes given; draw at least one polygon or rectangle.")
        if shape_types is None:
            shape_types = ["polygon"] * len(shapes)
        if isinstance(shape_types, str):
            shape_types = [shape_types] * len(shapes)
        if len(shape_types) != len(shapes):
            raise CycleULMError(
                f"got {len(shape_types)} shape types for {len(shapes)} shapes."
            )
        mask = np.zeros((h, w), bool)
        for i, (shape, kind) in enumerate(zip(shapes, shape_types)):
            kind = str(kind).lower()
            if kind not in AREA_SHAPE_TYPES:
                raise CycleULMError(
                    f"ROI shape {i} is a {kind!r}, which encloses no area; use polygons, "
                    "rectangles or ellipses."
                )
            v = _vertices(shape, i)
            if kind == "ellipse":
                (y0, x0), (y1, x1) = v.min(axis=0), v.max(axis=0)
                rr, cc = _draw_ellipse(
                    (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2, (x1 - x0) / 2, shape=(h, w)
                )
                mask[rr, cc] = True
            else:
                mask |= polygon2mask((h, w), v)
    if not mask.any():
        raise CycleULMError(
            "the ROI does not cover any pixel of the image; draw it over the image."
        )
    return mask


def _check_mask(mask, patch_size: int) -> tuple[np.ndarray, int]:
    if int(patch_size) != patch_size or patch_size < 1:
        raise CycleULMError(f"patch_size must be a positive integer, got {patch_size!r}.")
    m = np.asarray(mask)
    if m.ndim != 2:
        raise CycleULMError(f"the ROI mask must be a 2-D (H, W) array, got shape {m.shape}.")
    return m.astype(bool, copy=False), int(patch_size)


def _inside_fraction(mask: np.ndarray, p: int) -> np.ndarray:
    """Fraction of ROI pixels of every ``p`` x ``p`` window, indexed by top-left corner."""
    ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    ii[1:, 1:] = mask.cumsum(axis=0).cumsum(axis=1)  # integral image: O(1) window sums
    s = ii[p:, p:] - ii[:-p, p:] - ii[p:, :-p] + ii[:-p, :-p]
    return s / float(p * p)


def patch_corners(
    mask, patch_size: int = 40, min_fraction: float = MIN_INSIDE_FRACTION
) -> np.ndarray:
    """Top-left corners of every patch position inside the ROI.

    Parameters
    ----------
    mask : array_like of bool
        ``(H, W)`` ROI mask (see :func:`rois_to_mask`).
    patch_size : int
        Patch side in pixels (paper: 40).
    min_fraction : float
        Fraction of the patch's pixels that must lie inside the ROI (default
        0.9: a patch may graze the ROI border but not straddle it).

    Returns
    -------
    numpy.ndarray
        ``(K, 2)`` int64 corners ``(y0, x0)``; patch ``k`` is
        ``image[y0:y0 + patch_size, x0:x0 + patch_size]``.  Row-major order.

    Raises
    ------
    CycleULMError
        If the mask is not 2-D, is smaller than one patch, or no patch fits.
    """
    m, p = _check_mask(mask, patch_size)
    if not 0.0 < min_fraction <= 1.0:
        raise CycleULMError(f"min_fraction must be in (0, 1], got {min_fraction!r}.")
    if m.shape[0] < p or m.shape[1] < p:
        raise CycleULMError(
            f"the image ({m.shape[0]}x{m.shape[1]} pixels) is smaller than one {p}x{p} patch; "
            "use a larger image or a smaller patch size."
        )
    # A small tolerance so that exactly min_fraction survives float rounding.
    ok = _inside_fraction(m, p) >= min_fraction - 1e-9
    corners = np.argwhere(ok).astype(np.int64)
    if len(corners) == 0:
        raise CycleULMError(
            f"the ROI is smaller than one {p}x{p} patch; draw a larger region "
            f"(at least {p}x{p} pixels)."
        )
    return corners


def count_patches(mask, patch_size: int = 40, min_fraction: float = MIN_INSIDE_FRACTION) -> int:
    """Number of patch positions inside the ROI (0 when none fits; no error for that).

    Parameters and checks as in :func:`patch_corners`.
    """
    m, p = _check_mask(mask, patch_size)
    if m.shape[0] < p or m.shape[1] < p:
        return 0
    return int((_inside_fraction(m, p) >= min_fraction - 1e-9).sum())


def roi_to_csv(shapes, path: str | os.PathLike) -> Path:
    """Write ROI polygons to a CSV with columns ``shape_id, y, x`` (atomically).

    Parameters
    ----------
    shapes : list of array_like
        ``(N, 2)`` ``(y, x)`` (or ``(N, 3)`` ``(frame, y, x)``) vertex arrays.
    path : str or PathLike
        Destination.

    Returns
    -------
    pathlib.Path
    """
    if isinstance(shapes, np.ndarray) and shapes.ndim == 2 and shapes.dtype != bool:
        shapes = [shapes]
    if isinstance(shapes, np.ndarray) and shapes.dtype == bool:
        raise CycleULMError("roi_to_csv writes polygons, not masks; pass the shape vertices.")
    if shapes is None or len(shapes) == 0:
        raise CycleULMError("no ROI shapes to write.")
    verts = [_vertices(s, i) for i, s in enumerate(shapes)]
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        wr = csv.writer(fh)
        wr.writerow(["shape_id", "y", "x"])
        for i, v in enumerate(verts):
            for y, x in v:
                wr.writerow([i, repr(float(y)), repr(float(x))])
    return path


def roi_from_csv(path: str | os.PathLike) -> list[np.ndarray]:
    """Read ROI polygons from a CSV with columns ``shape_id, y, x``.

    Other columns (e.g. ``frame``) are ignored.  napari's own shapes CSV
    export (``index, shape-type, vertex-index, axis-0, axis-1[, axis-2]``) is
    also read: ``index`` is the shape and the last two axes are ``(y, x)``.
    Vertices of a shape keep their file order.

    Parameters
    ----------
    path : str or PathLike
        CSV file (e.g. written by :func:`roi_to_csv`).

    Returns
    -------
    list of numpy.ndarray
        One ``(N, 2)`` float64 ``(y, x)`` array per shape, in order of first
        appearance of its ``shape_id``.

    Raises
    ------
    CycleULMError
        Missing file or columns, non-numeric values, or a shape with fewer
        than 3 vertices.
    """
    path = Path(path)
    if not path.is_file():
        raise CycleULMError(f"ROI file not found: {path}.")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        if all(k in cols for k in ("shape_id", "y", "x")):
            use = {k: cols[k] for k in ("shape_id", "y", "x")}
        else:
            # napari's own shapes CSV: 'index' and 'axis-0', 'axis-1'[, 'axis-2']; the last
            # two axes are (y, x) (a leading frame axis is dropped).
            axes = sorted(
                (int(m.group(1)), c) for k, c in cols.items() if (m := re.fullmatch(r"axis-(\d+)", k))
            )
            if "index" not in cols or len(axes) < 2:
                raise CycleULMError(
                    f"ROI file {path} lacks the columns shape_id, y, x (found "
                    f"{', '.join(reader.fieldnames or []) or 'none'})."
                )
            use = {"shape_id": cols["index"], "y": axes[-2][1], "x": axes[-1][1]}
        shapes: dict[str, list[tuple[float, float]]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                sid = str(row[use["shape_id"]]).strip()
                y, x = float(row[use["y"]]), float(row[use["x"]])
            except (TypeError, ValueError):
                raise CycleULMError(
                    f"ROI file {path}, line {line}: shape_id, y and x must be numbers."
                ) from None
            shapes.setdefault(sid, []).append((y, x))
    if not shapes:
        raise CycleULMError(f"ROI file {path} holds no vertices.")
    return [_vertices(np.array(v), f"{sid!r} in {path}") for sid, v in shapes.items()]
