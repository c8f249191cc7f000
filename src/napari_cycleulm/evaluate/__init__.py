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

from .studies import (
    SCORE_COLUMNS,
    CNRResult,
    Profile,
    cnr_on_mip,
    compare_cnr,
    compare_fwhm,
    format_value,
    fwhm_on_mip,
    method_from_name,
    mip,
    peak_fwhm,
    plot_precision_recall,
    plot_profiles,
    profile_along,
    rows_to_text,
    score_localisations,
    sweep_localisations,
    write_rows_csv,
)

__all__ = [
    "CNRResult",
    "Profile",
    "SCORE_COLUMNS",
    "cnr_on_mip",
    "compare_cnr",
    "compare_fwhm",
    "fwhm_on_mip",
    "method_from_name",
    "mip",
    "peak_fwhm",
    "plot_precision_recall",
    "plot_profiles",
    "profile_along",
    "format_value",
    "rows_to_text",
    "score_localisations",
    "sweep_localisations",
    "write_rows_csv",
]
