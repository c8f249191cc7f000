"""Reading and writing: CEUS stacks and localisation / track tables (headless).

* :mod:`.stacks`: stacks in and out (TIFF, NPY, MAT v5/v7.3, HDF5, zarr;
  lazy :class:`~.stacks.LazyStack` and blocks of frames; raw IQ kept complex
  with ``keep_phase=True``), :func:`~.stacks.read_table` for CSV tables; the
  notes of the module give the axis convention and the formats.
* :mod:`.tables`: the column tables :class:`~.tables.Localisations` and
  :class:`~.tables.Tracks` (``frame, y, x`` in pixels plus extra columns),
  their CSV round trips and the streaming :class:`~.tables.TableWriter`.

This package re-exports the public names of :mod:`.stacks`
(``from napari_cycleulm.io import read_stack, write_stack, LazyStack, ...``)
and the two table classes; private helpers are imported from
:mod:`.stacks` itself.
"""

from __future__ import annotations

from . import stacks as _stacks
from .stacks import *  # noqa: F403 - the public names of .stacks, listed once in its __all__
from .tables import Localisations, Tracks

__all__ = [*_stacks.__all__, "Localisations", "Tracks"]
