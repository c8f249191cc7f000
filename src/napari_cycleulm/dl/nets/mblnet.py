"""MBL-Net: DECODE-style microbubble localisation network (paper 3.1, Fig. 11).

A U-Net with two 2x2 max-pooling down-samplings, 3x3 kernels and a residual
bottleneck, followed by three heads giving 7 maps at the input resolution.

Output channel order (:data:`CHANNELS`)::

    0 p_logit    logit of the probability that a bubble lies in this pixel
    1 intensity  bubble intensity (softplus, >= 0, same units as the input)
    2 dy         sub-pixel offset of the bubble from the pixel centre, y (tanh, [-1, 1] px)
    3 dx         same along x
    4 s_int      uncertainty (standard deviation) of the intensity (> 0)
    5 s_y        uncertainty of y, pixels (> 0)
    6 s_x        uncertainty of x, pixels (> 0)

Pixel ``(i, j)`` has its centre at ``(y, x) = (i, j)`` (library convention),
so a bubble predicted in that pixel sits at ``(i + dy, j + dx)``.  The offset
range [-1, 1] (rather than [-0.5, 0.5]) lets a neighbouring pixel also claim a
bubble that sits on a pixel border, as in DECODE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CycleULMError
from .blocks import ConvNormAct, UNet

CHANNELS = ("p_logit", "intensity", "dy", "dx", "s_int", "s_y", "s_x")

#: Smallest predicted standard deviation: keeps the Gaussian NLL finite.
SIGMA_FLOOR = 0.01

#: Initial bias of the probability logit: sigmoid(-4) ~ 0.018, a sparse prior
#: close to the bubble density of training patches, so the BCE starts small
#: and stable (focal-loss style initialisation).
P_LOGIT_INIT_BIAS = -4.0


def _head(channels: int, out: int, act: str) -> nn.Sequential:
    return nn.Sequential(
        ConvNormAct(channels, channels, norm="none", act=act), nn.Conv2d(channels, out, 1)
    )


class MBLNet(nn.Module):
    """MB localisation network.

    Parameters
    ----------
    in_channels : int
        1 (an MB-only frame) or 3 (with the previous and next frames as context).
    base_channels : int
        Width of the first U-Net stage (then x2, x4).
    norm : str
        ``"none"`` (default, as DECODE: the output depends on neither the
        batch nor the image content elsewhere, and intensities keep their
        scale), ``"batch"`` or ``"instance"``.
    act : str
        ``"leaky"`` (default; no dead units without normalisation) or ``"relu"``.

    Notes
    -----
    ``forward`` takes ``(N, in_channels, H, W)`` of any size and returns the
    ``(N, 7, H, W)`` tensor in :data:`CHANNELS` order; :func:`split_outputs`
    turns it into a dict.
    """

    def __init__(
        self, in_channels: int = 1, base_channels: int = 16, norm: str = "none", act: str = "leaky"
    ) -> None:
        super().__init__()
        self.config = dict(
            in_channels=in_channels, base_channels=base_channels, norm=norm, act=act
        )
        self.unet = UNet(in_channels, base_channels, pool_kernel=2, norm=norm, act=act)
        self.p_head = _head(base_channels, 1, act)
        self.mean_head = _head(base_channels, 3, act)
        self.sigma_head = _head(base_channels, 3, act)
        nn.init.constant_(self.p_head[-1].bias, P_LOGIT_INIT_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config["in_channels"]
        if x.ndim != 4 or x.shape[1] != c:
            raise CycleULMError(
                f"MBL-Net expects (N, {c}, H, W) MB-only frames, got shape {tuple(x.shape)}."
            )
        f = self.unet(x)
        m = self.mean_head(f)
        s = self.sigma_head(f)
        return torch.cat(
            [
                self.p_head(f),
                F.softplus(m[:, :1]),
                torch.tanh(m[:, 1:]),
                F.softplus(s) + SIGMA_FLOOR,
            ],
            dim=1,
        )


def split_outputs(out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split the ``(N, 7, H, W)`` MBL-Net output into named maps.

    Returns
    -------
    dict
        ``p_logit`` (N, 1, H, W), ``prob`` (sigmoid of it, N, 1, H, W),
        ``means`` (N, 3, H, W: intensity, dy, dx), ``sigmas`` (N, 3, H, W:
        s_int, s_y, s_x), and the other channels of :data:`CHANNELS`
        (``intensity``, ``dy``, ``dx``, ``s_int``, ``s_y``, ``s_x``) as (N, H, W).
    """
    if out.ndim != 4 or out.shape[1] != len(CHANNELS):
        raise CycleULMError(
            f"expected an (N, 7, H, W) MBL-Net output, got shape {tuple(out.shape)}."
        )
    d = {name: out[:, i] for i, name in enumerate(CHANNELS)}
    d["p_logit"] = out[:, 0:1]
    d["prob"] = torch.sigmoid(out[:, 0:1])
    d["means"] = out[:, 1:4]
    d["sigmas"] = out[:, 4:7]
    return d
