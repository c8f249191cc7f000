"""Point spread function (PSF): model, estimation from bubbles, picking bubbles, JSON I/O.

* :mod:`.model`: the :class:`~.model.PSF` (a 2-D Gaussian with the measured
  mean bubble patch, its kernel, the MB-only PSF, JSON I/O),
  :func:`~.model.gaussian_kernel`, :func:`~.model.check_psf_extent`.
* :mod:`.fit`: :func:`~.fit.estimate_psf`, the Gaussian fitted to the mean of
  given isolated bubbles, with the report :class:`~.fit.PSFEstimate` and the
  reason each bubble is rejected for (:class:`~.fit.Rejection`).
* :mod:`.picking`: automatic picking of isolated bubbles
  (:func:`~.picking.pick_isolated_bubbles`, :func:`~.picking.estimate_psf_auto`)
  and the helpers of the napari PSF widget for bubbles picked by hand
  (:func:`~.picking.snap_to_maximum`, :func:`~.picking.bubble_patches`,
  :func:`~.picking.screen_bubbles`).

This package re-exports the public names of the three modules
(``from napari_cycleulm.psf import PSF, estimate_psf_auto``); private helpers
are imported from their module.
"""

from __future__ import annotations

from . import fit as _fit
from . import model as _model
from . import picking as _picking
from .fit import *  # noqa: F403 - the public names of .fit, listed once in its __all__
from .model import *  # noqa: F403 - the public names of .model, listed once in its __all__
from .picking import *  # noqa: F403 - the public names of .picking, listed once in its __all__

__all__ = [*_model.__all__, *_fit.__all__, *_picking.__all__]
