"""Named ULM pipelines that stream over blocks of frames.

A pipeline is clutter filter -> denoise -> localise -> track -> render.  The
acquisition is processed block by block, so memory depends on ``block_size``,
not on the number of frames:

* :mod:`.specs` names the pipelines (compositions of the stage registry,
  :mod:`napari_cycleulm.stages`);
* :mod:`.blocks` turns one block into localisations and accumulator parts
  (:func:`~.blocks.process_block`, a pure function of the block, its
  neighbouring frames and the run's :class:`~.blocks.RunPlan`);
* :mod:`.runner` plans the run (networks, PSF, intensity scale), processes the
  blocks here or on a dask cluster (:mod:`.distributed`), links tracks across
  blocks in frame order with the incremental :class:`~napari_cycleulm.track.Linker`,
  merges the accumulators (SR maps, power Doppler, MBT-Net windows) and, with
  ``out_dir``, streams the tables to CSV.

Pipelines (the paper's names)
-----------------------------
``baseline1``
    Bradley-Roth adaptive thresholding + NCC localisation + tracking.
``baseline2``
    Bradley-Roth adaptive thresholding + sparsity-based deconvolution + tracking.
``cycleulm-ncc``
    MB-DT translation to the MB-only domain + NCC (MB-only PSF) + tracking.
``cycleulm-decon``
    MB-DT + deconvolution (MB-only PSF) + tracking.
``cycleulm-loc``
    MB-DT + MBL-Net + tracking.
``cycleulm-e2e``
    MB-DT + MBT-Net: trajectory and velocity maps accumulated into SR maps
    (:class:`~napari_cycleulm.render.e2e.E2EAccumulator`); no localisations or tracks.
``cycleulm-tracks``
    CycleULM-Loc's localisations linked into explicit tracks with the motion
    prior of MBT-Net's velocity maps (the paper's proposed future work,
    :mod:`napari_cycleulm.track.motion_prior`): MBT-Net runs on the same MB-only
    frames, and after the last block the linker predicts each track's next
    position from the prior velocity blended with its own.  Localisations
    are kept until then (five numbers each).

The CycleULM pipelines take their networks as ``mbdt=``, ``mblnet=``,
``mbtnet=`` (None / ``"default"`` for the shipped weights, a checkpoint path
or a loaded :class:`~napari_cycleulm.dl.checkpoint.Checkpoint`).  MB-DT runs
block by block with the neighbouring frame of the adjacent block as context,
so results do not depend on ``block_size``.  NCC and deconvolution on MB-only
frames use the MB-only PSF ``psf.mbonly()`` (the CEUS PSF shrunk by 0.5).

Default thresholds of the CycleULM pipelines
--------------------------------------------
Chosen with ``benchmarks/thresholds.py`` on the shipped MB-DT's output for four
simulated settings (clutter -6 / -12 / -12 / -20 dB, 10 / 20 / 40 / 30
bubbles per frame, CEUS PSF FWHM 200x300 / 150x250 / 250x350 / 300x400 um,
seeds 31-34, none used for training or reports): each default is the
threshold whose worst F1 loss (1 px tolerance) against each setting's own
best threshold is smallest, so it is near-best on all four at once.

Re-chosen for the current MB-DT and MBL-Net with the default evidence gate
(``docs/results/thresholds.json``):

* ``cycleulm-ncc`` 0.75 (NCC score): on the six settings of the gate
  selection (seeds 31-36, ``--with-gate-settings``, candidates 0.1-0.9;
  ``docs/results/thresholds_ncc_six_settings.json``) its worst F1 loss is
  0.136 (0.1875: 0.164; 0.9: 0.28).  On seeds 31-34 alone the rule gave 0.1875
  (worst loss 0.000), which lost at sparse, noisy data; the six settings are
  those the gate was chosen on, so thresholds and gate share one selection set.
* ``cycleulm-decon`` 0.1 (amplitude, MB-only units): worst loss 0.016 (the
  minimax 0.079: 0.015); flat between 0.025 and 0.2.
* ``cycleulm-loc`` 0.4 (3x3 summed MBL-Net probability): worst loss 0.004
  (the minimax 0.504: 0.004).
* ``cycleulm-e2e`` 0.4 (trajectory probability a pixel must reach to count;
  smallest worst-case trajectory-F1 loss on synthetic sequences of three PSF
  sizes, see :data:`napari_cycleulm.render.e2e.PROB_THRESHOLD`).

Matched localisation counts
---------------------------
The paper compares methods at the same total number of localisations.
``target_count=N`` keeps the N highest-scoring localisations of the whole
acquisition.  This needs every candidate's score before tracking, so the run
has two phases: candidates are localised block by block (kept in memory: five
numbers per candidate), the global score cut is chosen, then the kept
candidates are tracked and rendered block by block.
"""

from .blocks import BlockResult, RunPlan, WindowPlan, mb_only_frames, process_block
from .runner import iter_pipeline, run_pipeline, write_maps
from .specs import E2E_NO_TABLES, PIPELINES, PipelineResult, PipelineSpec
from ..stages import CALIBRATION_FRAMES

__all__ = [
    "BlockResult",
    "CALIBRATION_FRAMES",
    "E2E_NO_TABLES",
    "PIPELINES",
    "PipelineResult",
    "PipelineSpec",
    "RunPlan",
    "WindowPlan",
    "iter_pipeline",
    "mb_only_frames",
    "process_block",
    "run_pipeline",
    "write_maps",
]
