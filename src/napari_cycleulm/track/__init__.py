"""Tracking: linking localisations into microbubble tracks.

* :mod:`.linker`: the Kalman + Hungarian linker, streaming
  (:class:`~.linker.Linker`, fed block after block) or one-shot
  (:func:`~.linker.track`), and :func:`~.linker.max_distance_for` (the
  distance gate from a flow speed); the notes of the module describe the cost,
  the gates, gap closing and how a motion prior is blended in.
* :mod:`.motion_prior`: motion priors for the linker, velocity fields sampled
  at bubble positions (:class:`~.motion_prior.VelocityPrior` of MBT-Net's
  velocity maps, :func:`~.motion_prior.velocity_field_from_tracks`,
  :func:`~.motion_prior.link_with_prior`).

Track-level scores against ground-truth tracks (links, false links, lengths)
live in :mod:`napari_cycleulm.evaluate.track_metrics`.

This package re-exports the public names of :mod:`.linker`
(``from napari_cycleulm.track import Linker, track, max_distance_for``).
"""

from __future__ import annotations

from .linker import Linker, max_distance_for, track

__all__ = ["Linker", "track", "max_distance_for"]
