"""Evaluation: quality metrics, the studies the Evaluate widget reports, track scores.

* :mod:`.metrics`: the measures themselves (CNR, FWHM, path profiles,
  localisation matching, precision-recall sweeps, RMSE / SSIM of maps).
* :mod:`.studies`: what the Evaluate widget and ``cycleulm evaluate`` report,
  as plain functions: CNR and FWHM on the maximum-intensity projection (MIP),
  intensity profiles along lines, localisation accuracy tables and
  precision-recall curves, plots and table text.
* :mod:`.track_metrics`: track-level scores against ground-truth tracks
  (links, false links, lengths).

This package re-exports the public names of :mod:`.studies`
(``from napari_cycleulm.evaluate import cnr_on_mip, mip, ...``); the
metrics are imported from their module
(``from napari_cycleulm.evaluate.metrics import match_localisations``).
"""

from __future__ import annotations

from . import studies as _studies
from .studies import *  # noqa: F403 - the public names of .studies, listed once in its __all__

__all__ = list(_studies.__all__)
