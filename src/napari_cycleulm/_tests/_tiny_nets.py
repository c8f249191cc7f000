"""Tiny random-initialised CycleULM checkpoints for tests (no shipped weights needed)."""

from __future__ import annotations

import torch

from napari_cycleulm.dl.checkpoint import save_checkpoint
from napari_cycleulm.dl.nets import MBDT, MBLNet, MBTNet


def tiny_checkpoints(folder, *, sigma_range_px=(0.3, 3.0), seed=0) -> dict:
    """Write tiny MB-DT, MBL-Net and MBT-Net checkpoints; return ``{kind: path}``."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    nets = {
        "mbdt": MBDT(base_channels=4, disc_channels=4),
        "mblnet": MBLNet(base_channels=4),
        "mbtnet": MBTNet(n_frames=8, base_channels=4),
    }
    paths = {}
    for kind, net in nets.items():
        extra = {} if kind == "mbdt" else {"sigma_range_px": sigma_range_px}
        psf = {"sigma_y_px": 2.0, "sigma_x_px": 2.5, "theta_rad": 0.0} if kind == "mbdt" else None
        paths[kind] = save_checkpoint(folder / f"{kind}.pt", net, kind=kind, psf=psf, extra=extra)
    return paths
