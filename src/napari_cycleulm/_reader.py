"""napari reader hook: CEUS stacks (TIFF, NPY, MAT, HDF5) and CSV tables.

Stacks open as an Image layer ``(frames, height, width)``; files larger than
:data:`LAZY_ABOVE_BYTES` are opened lazily (frames read on demand).  A CSV of
localisations opens as a Points layer with ``(frame, y, x)`` coordinates and
the other columns as ``features``; a CSV with a ``track_id`` column opens as a
Tracks layer ``(track_id, frame, y, x)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import STACK_EXTENSIONS, TABLE_EXTENSIONS, read_stack, read_table
from .tables import Tracks

#: Files above this size are opened lazily instead of loaded into memory.
LAZY_ABOVE_BYTES = 2 * 1024**3

_SUPPORTED = STACK_EXTENSIONS + TABLE_EXTENSIONS


def _supported(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in _SUPPORTED


def napari_get_reader(path):
    """Return a reader function for ``path`` if this plugin can read it, else None.

    Parameters
    ----------
    path : str or list of str
        A file path, or a list of paths (all must be supported).

    Returns
    -------
    callable or None
        ``reader(path) -> list[LayerData]``.
    """
    if isinstance(path, (list, tuple)):
        if not path or not all(_supported(p) for p in path):
            return None
        return read_files
    return read_files if _supported(path) else None


def read_files(path) -> list[tuple]:
    """Read one path or a list of paths into napari layer data tuples."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    layers: list[tuple] = []
    for p in paths:
        layers.extend(_read_one(Path(p)))
    return layers


def _read_one(path: Path) -> list[tuple]:
    meta = {"name": path.stem, "metadata": {"source": str(path)}}
    if path.suffix.lower() in TABLE_EXTENSIONS:
        return [_table_layer(path, meta)]
    lazy = path.is_file() and path.stat().st_size > LAZY_ABOVE_BYTES
    data = read_stack(path, lazy=lazy)
    return [(data, meta, "image")]


def _table_layer(path: Path, meta: dict) -> tuple:
    table = read_table(path)
    if isinstance(table, Tracks):
        table = table.sort("track_id", "frame")
        req = ("track_id", "frame", "y", "x")
        data = np.column_stack([table[c].astype(np.float64) for c in req]).reshape(-1, 4)
        kind = "tracks"
    else:
        req = ("frame", "y", "x")
        data = table.positions
        kind = "points"
    features = {n: table[n] for n in table.names if n not in req}
    kwargs = dict(meta)
    if features:
        kwargs["features"] = features
    return (data, kwargs, kind)
