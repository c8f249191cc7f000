"""napari reader hook: CEUS and IQ stacks (TIFF, NPY, MAT, HDF5, zarr) and CSV tables.

Stacks open as an Image layer ``(frames, height, width)``.  zarr stores and
files larger than :data:`LAZY_ABOVE_BYTES` open as dask arrays chunked along
time (:func:`io.to_dask`): napari then reads only the frames it shows, so
scrolling a 25,000-frame acquisition stays interactive.  Complex IQ data is
shown as its magnitude (float32, lazily for lazy stacks); the complex frames
themselves, phase included, are kept in ``layer.metadata["cycleulm_iq"]`` for
tools that clutter-filter them.  A CSV of
localisations opens as a Points layer with ``(frame, y, x)`` coordinates and
the other columns as ``features``; a CSV with a ``track_id`` column opens as a
Tracks layer ``(track_id, frame, y, x)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import (
    FOLDER_EXTENSIONS,
    STACK_EXTENSIONS,
    TABLE_EXTENSIONS,
    magnitude,
    read_stack,
    read_table,
    to_dask,
)
from ..io.tables import Tracks

#: Files above this size open lazily, as dask arrays, instead of loaded into memory.
LAZY_ABOVE_BYTES = 2 * 1024**3
#: ``layer.metadata`` key of the complex IQ frames behind a magnitude layer.
IQ_METADATA_KEY = "cycleulm_iq"

_SUPPORTED = STACK_EXTENSIONS + TABLE_EXTENSIONS


def _supported(path) -> bool:
    if not isinstance(path, (str, os.PathLike)):
        return False
    p = Path(path)
    ext = p.suffix.lower()
    if p.is_dir():  # folders: zarr stores only
        return ext in FOLDER_EXTENSIONS
    return ext in _SUPPORTED


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
    lazy = path.suffix.lower() in FOLDER_EXTENSIONS or (
        path.is_file() and path.stat().st_size > LAZY_ABOVE_BYTES
    )
    data = read_stack(path, lazy=lazy, keep_phase=True)
    if lazy:
        data = to_dask(data)
    if np.issubdtype(data.dtype, np.complexfloating):
        # napari cannot show complex numbers: show the envelope, keep the IQ.
        meta["metadata"][IQ_METADATA_KEY] = data
        data = magnitude(data)
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
