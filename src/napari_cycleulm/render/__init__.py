"""Rendering: super-resolution (SR) maps from tracks and localisations, and from MBT-Net.

* :mod:`.sr_maps`: the SR grid, :class:`~.sr_maps.SRRenderer` (density,
  velocity and direction maps from tracks), :class:`~.sr_maps.SRMaps`,
  :func:`~.sr_maps.render_localisations`, power Doppler
  (:class:`~.sr_maps.PowerDopplerAccumulator`), colormaps and PNG output
  (:func:`~.sr_maps.to_png`).
* :mod:`.e2e`: CycleULM-E2E, MBT-Net windows accumulated into SR maps
  (:class:`~.e2e.E2EAccumulator`, :func:`~.e2e.window_starts`,
  :data:`~.e2e.PROB_THRESHOLD`).  It needs torch and is not imported here:
  import it from its module (``from napari_cycleulm.render.e2e import E2EAccumulator``).

This package re-exports the public names of :mod:`.sr_maps`
(``from napari_cycleulm.render import SRRenderer, to_png``); private helpers
are imported from their module.
"""

from __future__ import annotations

from . import sr_maps as _sr_maps
from .sr_maps import *  # noqa: F403 - the public names of .sr_maps, listed once in its __all__

__all__ = list(_sr_maps.__all__)
