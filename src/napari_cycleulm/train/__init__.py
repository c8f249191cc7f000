"""Training the three CycleULM networks (paper, sections 3.1-3.3).

Every trainer is a generator that yields :class:`~napari_cycleulm.progress.Progress`
events and returns a :class:`TrainResult`, so the same code runs from a
script (:func:`train_mbdt` and friends, which :func:`~napari_cycleulm.progress.drive`
it), the command line (with a progress bar) and napari (in a thread worker
whose Stop button closes the generator).

What is where
-------------
* :mod:`.loop`: the loop all three trainers share (:func:`~.loop._run`:
  device, mixed precision on CUDA, progress events, previews, atomic
  checkpoints, resuming, Stop), :class:`TrainResult`, the optimiser group,
  the argument checks, the learning-rate schedules and the starting network
  (from scratch, the default weights, a checkpoint; resume).
* :mod:`.mbdt`: :func:`iter_train_mbdt` / :func:`train_mbdt`, MB-DT, the
  CycleGAN between 3 consecutive CEUS frames (domain A, random 40x40
  patches inside an ROI of the user's data, drawn by ``_CeusSource``) and
  synthetic MB-only images (domain B, rendered with the data's PSF shrunk
  by 0.5, with counts and intensities matched to the data by
  :func:`domain_b_config`), unpaired; the normalisation convention
  (``NORMALISATION_PERCENTILE``) and ``FINETUNE_MAX_FRAMES``.
* :mod:`.synthetic_nets`: :func:`iter_train_mblnet` / :func:`train_mblnet`
  (MBL-Net on synthetic MB-only patches) and :func:`iter_train_mbtnet` /
  :func:`train_mbtnet` (MBT-Net on synthetic MB-only sequences), with
  ``DEFAULT_GENERALIST_SIGMA_RANGE_PX`` and ``MBTNET_LOSS_PARAMS``.
* :mod:`.validate`: :func:`validate_mblnet`, :func:`validate_mbtnet` and
  :func:`validate_mbdt`.

This package re-exports the public names (``from napari_cycleulm.train
import train_mbdt``) and the constants and private helpers other modules and
the tests use.  A re-export is a copy of the name: to replace what the code
reads (``monkeypatch.setattr``), patch the submodule that uses it, e.g.
``napari_cycleulm.train.loop._default_weights_path``.
"""

from __future__ import annotations

from .loop import TrainResult
from .mbdt import (
    DOMAIN_B_COUNT_FACTOR,
    FINETUNE_MAX_FRAMES,
    NORMALISATION_PERCENTILE,
    _CeusSource,
    domain_b_config,
    iter_train_mbdt,
    train_mbdt,
)
from .synthetic_nets import (
    DEFAULT_GENERALIST_SIGMA_RANGE_PX,
    MBTNET_LOSS_PARAMS,
    iter_train_mblnet,
    iter_train_mbtnet,
    train_mblnet,
    train_mbtnet,
)
from .validate import validate_mbdt, validate_mblnet, validate_mbtnet

__all__ = [
    "DEFAULT_GENERALIST_SIGMA_RANGE_PX",
    "TrainResult",
    "iter_train_mbdt",
    "iter_train_mblnet",
    "iter_train_mbtnet",
    "train_mbdt",
    "train_mblnet",
    "train_mbtnet",
    "validate_mbdt",
    "validate_mblnet",
    "validate_mbtnet",
    # public in the old train.py too, without being listed in its __all__
    "DOMAIN_B_COUNT_FACTOR",
    "FINETUNE_MAX_FRAMES",
    "MBTNET_LOSS_PARAMS",
    "NORMALISATION_PERCENTILE",
    "domain_b_config",
    # private, re-exported for the tests (train._CeusSource)
    "_CeusSource",
]
