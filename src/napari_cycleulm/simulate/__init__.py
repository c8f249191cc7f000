"""Simulated data: CEUS with ground truth, and synthetic MB-only training data.

* :mod:`.ceus`: :func:`~.ceus.simulate`, clutter-filtered CEUS sequences with
  the microbubbles' ground truth (positions, tracks, amplitudes, velocities),
  the presets of the sample data and the command line, and
  :func:`~.ceus.save_simulation` / :func:`~.ceus.load_simulation`.
* :mod:`.mb_only`: synthetic MB-only patches and sequences with MBL-Net and
  MBT-Net targets (CycleULM paper, section 3.3), imported from their module
  (``from napari_cycleulm.simulate.mb_only import SyntheticConfig``).

This package re-exports the public names of :mod:`.ceus`
(``from napari_cycleulm.simulate import simulate, PRESETS``).
"""

from __future__ import annotations

from . import ceus as _ceus
from .ceus import *  # noqa: F403 - the public names of .ceus, listed once in its __all__

__all__ = list(_ceus.__all__)
