"""The three CycleULM networks (torch), built from the shared :mod:`.blocks`.

* :class:`MBDT` (:mod:`.mbdt`): CycleGAN translator CEUS <-> MB-only
  (``Generator``, ``Discriminator``).
* :class:`MBLNet` (:mod:`.mblnet`): DECODE-style localisation, 7 output maps.
* :class:`MBTNet` (:mod:`.mbtnet`): ConvLSTM U-Net, trajectory + velocity maps
  at 4x resolution.

All are fully convolutional and accept frames of any size.

Default widths (``base_channels=16`` everywhere) keep all shipped weights at
about 6 MB in float32 (MB-DT 0.76 M parameters including both
discriminators, MBL-Net 0.21 M, MBT-Net 0.52 M) and CPU inference usable;
pass larger widths for GPU training if needed (the width is stored in the
checkpoint config).  Each model has a
``config`` dict of its constructor arguments; :data:`NETWORKS` maps the
checkpoint ``kind`` to the class.
"""

from .blocks import pad_to_multiple
from .mbdt import MBDT, Discriminator, Generator
from .mblnet import CHANNELS as MBLNET_CHANNELS
from .mblnet import MBLNet, split_outputs
from .mbtnet import CHANNELS as MBTNET_CHANNELS
from .mbtnet import ConvLSTM, ConvLSTMCell, MBTNet

#: Checkpoint kind -> model class (built as ``cls(**config)``).
NETWORKS = {"mbdt": MBDT, "mblnet": MBLNet, "mbtnet": MBTNet}

#: Human-readable names for messages.
DISPLAY_NAMES = {"mbdt": "MB-DT", "mblnet": "MBL-Net", "mbtnet": "MBT-Net"}


def count_parameters(model) -> int:
    """Number of trainable parameters of a torch module."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "DISPLAY_NAMES",
    "MBDT",
    "MBLNET_CHANNELS",
    "MBTNET_CHANNELS",
    "NETWORKS",
    "ConvLSTM",
    "ConvLSTMCell",
    "Discriminator",
    "Generator",
    "MBLNet",
    "MBTNet",
    "count_parameters",
    "pad_to_multiple",
    "split_outputs",
]
