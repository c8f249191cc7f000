"""Conventional pre-processing: clutter filtering, denoising, intensity scaling; the evidence gate.

* :mod:`.clutter_filter`: the SVD clutter filter
  (:func:`~.clutter_filter.svd_clutter_filter`), applied to a whole
  acquisition in independent blocks of frames, lazily, as the first stage of
  every pipeline (:func:`~.clutter_filter.clutter_filtered`,
  :func:`~.clutter_filter.parse_clutter_filter`, the automatic cut-off).
* :mod:`.thresholding`: the Baseline denoiser, Bradley & Roth (2007) adaptive
  thresholding against the local mean (:func:`~.thresholding.adaptive_threshold`,
  :func:`~.thresholding.box_mean`), and
  :func:`~.thresholding.normalise_intensity`.
* :mod:`.evidence_gate`: the evidence gate applied to MB-DT's output
  (:func:`~.evidence_gate.block_gate`, :func:`~.evidence_gate.transient_gate`,
  :data:`~.evidence_gate.GATE_MODES`, :data:`~.evidence_gate.DEFAULT_GATE`),
  imported from its module (``from napari_cycleulm.preprocess.evidence_gate import DEFAULT_GATE``).

This package re-exports the public names of :mod:`.clutter_filter` and
:mod:`.thresholding` (``from napari_cycleulm.preprocess import clutter_filtered,
adaptive_threshold``); constants and private helpers are imported from their module.
"""

from __future__ import annotations

from . import clutter_filter as _clutter_filter
from . import thresholding as _thresholding
from .clutter_filter import *  # noqa: F403 - the public names of .clutter_filter, listed once in its __all__
from .thresholding import *  # noqa: F403 - the public names of .thresholding, listed once in its __all__

__all__ = [*_clutter_filter.__all__, *_thresholding.__all__]
