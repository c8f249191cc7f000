"""Deep learning: the CycleULM networks, their checkpoints, losses and MB-DT inference (torch).

* :mod:`.nets`: the three networks (:class:`~.nets.MBDT`,
  :class:`~.nets.MBLNet`, :class:`~.nets.MBTNet`) built from shared blocks.
* :mod:`.checkpoint`: saving and loading checkpoints
  (:func:`~.checkpoint.save_checkpoint`, :func:`~.checkpoint.load_checkpoint`,
  :class:`~.checkpoint.Checkpoint`), loaded with ``torch.load(weights_only=True)``.
* :mod:`.models`: finding and loading a network for inference, the shipped
  weights (:data:`~.models.DEFAULT_WEIGHTS`, :func:`~.models.load_model`).
* :mod:`.losses`: the training losses of the three networks.
* :mod:`.mbdt_inference`: MB-DT inference, CEUS frames -> MB-only frames
  (:func:`~.mbdt_inference.translate`, :func:`~.mbdt_inference.iter_translate`).

Training lives in :mod:`napari_cycleulm.train`.  Nothing is re-exported
here: import from the module (``from napari_cycleulm.dl.models import load_model``).
"""
