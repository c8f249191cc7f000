"""MB-DT: the CycleGAN domain translator between CEUS frames and MB-only frames.

Paper, section 3.1 and Fig. 10: two U-Net generators with two down-samplings
(4x4 max pooling, stride 2), bilinear up-sampling followed by a 3x3
convolution, and a residual block as bottleneck; two PatchGAN discriminators
(Isola et al. 2017).

* ``g_ab`` (the MB-DT proper): 3 consecutive CEUS frames (domain A) ->
  1 MB-only frame (domain B).  Its output is non-negative (softplus by
  default) because MB-only images are sums of positive PSFs.
* ``g_ba``: 1 MB-only frame -> 3 CEUS-like frames, unconstrained output.
* ``d_a`` / ``d_b``: PatchGAN discriminators on domain A (3 channels) and B
  (1 channel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CycleULMError
from .blocks import ConvNormAct, UNet, _check_choice

OUTPUT_ACTIVATIONS = ("softplus", "relu", "none")


class Generator(nn.Module):
    """U-Net generator of MB-DT (CycleGAN with a U-Net instead of a ResNet generator).

    Parameters
    ----------
    in_channels, out_channels : int
        3 -> 1 for ``G_AB`` (CEUS -> MB-only), 1 -> 3 for ``G_BA``.
    base_channels : int
        Channels of the first stage (then x2, x4).
    norm : str
        ``"instance"`` (CycleGAN default), ``"batch"`` or ``"none"``.
    act : str
        ``"relu"`` (CycleGAN generators) or ``"leaky"``.
    output_activation : str
        ``"softplus"`` (smooth, no dead gradient; for ``G_AB``), ``"relu"``
        (exact zeros) or ``"none"`` (for ``G_BA``).

    Notes
    -----
    Input ``(N, in_channels, H, W)`` of any size (padded internally to a
    multiple of 4), output ``(N, out_channels, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_channels: int = 16,
        *,
        norm: str = "instance",
        act: str = "relu",
        output_activation: str = "none",
    ) -> None:
        super().__init__()
        self.output_activation = _check_choice(
            "output_activation", output_activation, OUTPUT_ACTIVATIONS
        )
        self.unet = UNet(in_channels, base_channels, pool_kernel=4, norm=norm, act=act)
        self.head = nn.Conv2d(base_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.unet(x))
        if self.output_activation == "softplus":
            return F.softplus(y)
        if self.output_activation == "relu":
            return F.relu(y)
        return y


class Discriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017).

    ``n_layers`` 4x4 convolutions with stride 2 (channels ``c, 2c, 4c, ...``,
    capped at ``8c``), then a 4x4 stride-1 convolution and a 4x4 stride-1
    convolution to one channel of patch scores (raw, LSGAN).  LeakyReLU 0.2,
    instance norm on all but the first layer.  For a 40x40 patch and
    ``n_layers=3`` the score map is 3x3 (receptive field 70 px).

    Parameters
    ----------
    in_channels : int
        3 for CEUS (domain A), 1 for MB-only (domain B).
    base_channels : int
        Channels of the first layer.
    n_layers : int
        Number of stride-2 layers.
    norm : str
        ``"instance"`` (default), ``"batch"`` or ``"none"``.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 16,
        n_layers: int = 3,
        *,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise CycleULMError(f"n_layers must be >= 1, got {n_layers}.")
        c = base_channels
        layers: list[nn.Module] = [
            ConvNormAct(in_channels, c, 4, stride=2, padding=1, norm="none", act="leaky")
        ]
        ch = c
        for i in range(1, n_layers):
            nxt = c * min(2**i, 8)
            layers.append(ConvNormAct(ch, nxt, 4, stride=2, padding=1, norm=norm, act="leaky"))
            ch = nxt
        nxt = c * min(2**n_layers, 8)
        layers.append(ConvNormAct(ch, nxt, 4, stride=1, padding=1, norm=norm, act="leaky"))
        layers.append(nn.Conv2d(nxt, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        self.n_layers = n_layers
        self.min_size = next(s for s in range(2, 4096) if self._map_sizes(s)[-2] >= 2)

    def _map_sizes(self, size: int) -> list[int]:
        """Spatial size after every layer for an input of ``size``."""
        sizes = []
        for _ in range(self.n_layers):
            size = size // 2  # 4x4, stride 2, padding 1
            sizes.append(size)
        sizes += [size - 1, size - 2]  # two 4x4 stride-1 convolutions, padding 1
        return sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, 1, h, w)`` patch scores (1 = real)."""
        if min(x.shape[-2:]) < self.min_size:
            raise CycleULMError(
                f"the discriminator needs patches of at least {self.min_size}x{self.min_size} "
                f"pixels with n_layers={self.n_layers}, got {tuple(x.shape[-2:])}; use larger "
                "patches or fewer layers."
            )
        return self.model(x)


class MBDT(nn.Module):
    """The four CycleGAN networks of MB-DT in one module.

    Parameters
    ----------
    ceus_channels : int
        Consecutive CEUS frames given to ``g_ab`` (paper: 3).
    mb_channels : int
        MB-only channels (1).
    base_channels : int
        Generator width.
    disc_channels : int
        Discriminator width.
    disc_layers : int
        Stride-2 layers of the discriminators.
    generator_norm : str
        Normalisation of the generators: ``"none"`` (default).  Bubble and
        clutter differ mainly in absolute amplitude (the data are scaled so the
        stack's 99.9th percentile is 1), and instance norm removes exactly that
        per image: a 40 x 40 background patch is stretched to the variance of
        a bubble patch, so the generator cannot tell them apart (measured:
        translating full frames tile by tile with an instance-norm MB-DT made
        bubbles out of background speckle).
    disc_norm : str
        Normalisation of the discriminators (``"instance"``, CycleGAN), on all
        but their first layer, which sees absolute amplitudes.
    norm : str, optional
        Sets both (checkpoints before version 0.2 store ``norm="instance"``).
    output_activation : str
        Output of ``g_ab``: ``"none"`` (default: linear while training, clipped
        at 0 by :meth:`translate`), ``"softplus"`` or ``"relu"``.  Without
        normalisation a softplus generator got stuck at an all-zero output
        (pre-activations near -13, gradient 2e-6) within the first hundred
        steps: most of a sparse MB-only image is zero, and softplus cannot
        reach zero without saturating.  A linear output cannot saturate.

    Attributes
    ----------
    config : dict
        The constructor arguments (for checkpoints).
    """

    def __init__(
        self,
        ceus_channels: int = 3,
        mb_channels: int = 1,
        base_channels: int = 16,
        disc_channels: int = 16,
        disc_layers: int = 3,
        generator_norm: str = "none",
        disc_norm: str = "instance",
        norm: str | None = None,
        output_activation: str = "none",
    ) -> None:
        super().__init__()
        if norm is not None:
            generator_norm = disc_norm = norm
        self.config = dict(
            ceus_channels=ceus_channels,
            mb_channels=mb_channels,
            base_channels=base_channels,
            disc_channels=disc_channels,
            disc_layers=disc_layers,
            generator_norm=generator_norm,
            disc_norm=disc_norm,
            output_activation=output_activation,
        )
        self.g_ab = Generator(
            ceus_channels, mb_channels, base_channels, norm=generator_norm,
            output_activation=output_activation,
        )
        self.g_ba = Generator(
            mb_channels, ceus_channels, base_channels, norm=generator_norm, output_activation="none"
        )
        self.d_a = Discriminator(ceus_channels, disc_channels, disc_layers, norm=disc_norm)
        self.d_b = Discriminator(mb_channels, disc_channels, disc_layers, norm=disc_norm)

    def translate(self, frames: torch.Tensor) -> torch.Tensor:
        """CEUS -> MB-only with ``g_ab``.

        Parameters
        ----------
        frames : torch.Tensor
            ``(N, ceus_channels, H, W)`` or ``(ceus_channels, H, W)``: consecutive
            normalised CEUS frames, the MB-only output corresponds to the centre one.

        Returns
        -------
        torch.Tensor
            ``(N, mb_channels, H, W)`` (or ``(mb_channels, H, W)``), >= 0.

        Notes
        -----
        Gradients are tracked as usual; wrap in ``torch.no_grad()`` for inference.
        """
        c = self.config["ceus_channels"]
        single = frames.ndim == 3
        if single:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[1] != c:
            raise CycleULMError(
                f"MB-DT expects (N, {c}, H, W) consecutive CEUS frames, got shape "
                f"{tuple(frames.shape)}."
            )
        out = self.g_ab(frames)
        if self.config["output_activation"] == "none":
            out = out.clamp_min(0.0)  # a linear output is trained as is and clipped for use
        return out[0] if single else out

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`translate`."""
        return self.translate(frames)
