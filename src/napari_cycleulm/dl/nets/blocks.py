"""Building blocks shared by the three CycleULM networks.

All three networks (MB-DT, MBL-Net, MBT-Net) are U-Nets with two
down-samplings (paper, section 3.1), so they are assembled from the same
pieces: :class:`ConvNormAct`, :class:`DoubleConv`, :class:`ResidualBlock`,
:class:`UpBlock`, the encoder :class:`UNetEncoder` and decoder
:class:`UNetDecoder`.  :func:`pad_to_multiple` lets every network accept
frames of any size: inputs are reflect-padded to a multiple of 4 (two
halvings) and the output is cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CycleULMError

NORMS = ("instance", "batch", "none")
ACTIVATIONS = ("relu", "leaky", "none")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise CycleULMError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")
    return value


def make_norm(norm: str, channels: int) -> nn.Module:
    """Normalisation layer by name: ``"instance"``, ``"batch"`` or ``"none"``.

    Instance norm has no affine parameters and no running statistics (as in
    CycleGAN), but it removes each image's absolute level and contrast, which
    is what tells a bubble from clutter in CEUS data: networks that must
    respond to absolute amplitudes (MB-DT's generators, MBL-Net) use ``"none"``.
    """
    _check_choice("norm", norm, NORMS)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def make_activation(act: str, negative_slope: float = 0.2) -> nn.Module:
    """Activation by name: ``"relu"``, ``"leaky"`` (LeakyReLU) or ``"none"``."""
    _check_choice("act", act, ACTIVATIONS)
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "leaky":
        return nn.LeakyReLU(negative_slope, inplace=True)
    return nn.Identity()


class ConvNormAct(nn.Sequential):
    """Convolution (``kernel_size``, 'same' padding for stride 1), norm, activation.

    The convolution has no bias when a normalisation follows (the norm would
    remove it anyway).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        norm: str = "none",
        act: str = "relu",
        negative_slope: float = 0.2,
    ) -> None:
        if padding is None:
            padding = kernel_size // 2
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                bias=norm == "none",
            ),
            make_norm(norm, out_channels),
            make_activation(act, negative_slope),
        )


class DoubleConv(nn.Sequential):
    """Two 3x3 :class:`ConvNormAct` layers: one U-Net stage."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: str, act: str) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, norm=norm, act=act),
            ConvNormAct(out_channels, out_channels, norm=norm, act=act),
        )


class ResidualBlock(nn.Module):
    """ResNet block (He et al. 2016): ``act(x + norm(conv(act(norm(conv(x))))))``."""

    def __init__(self, channels: int, *, norm: str, act: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(channels, channels, norm=norm, act=act),
            ConvNormAct(channels, channels, norm=norm, act="none"),
        )
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class UpBlock(nn.Module):
    """Bilinear up-sampling by 2 (or to ``size``) followed by a 3x3 :class:`ConvNormAct`."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: str, act: str) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, norm=norm, act=act)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return self.conv(x)


def max_pool(kernel_size: int) -> nn.MaxPool2d:
    """Stride-2 max pooling that exactly halves even sizes.

    ``kernel_size=4`` (MB-DT) uses padding 1, ``kernel_size=2`` (MBL-Net,
    MBT-Net) none: both give ``H/2`` for even ``H``.
    """
    if kernel_size not in (2, 4):
        raise CycleULMError(f"pool_kernel must be 2 or 4, got {kernel_size!r}.")
    return nn.MaxPool2d(kernel_size, stride=2, padding=(kernel_size - 2) // 2)


class UNetEncoder(nn.Module):
    """U-Net encoder with two down-samplings.

    Returns the features of the three stages: ``(N, c, H, W)``,
    ``(N, 2c, H/2, W/2)`` and ``(N, 4c, H/4, W/4)`` with ``c = base_channels``.
    ``H`` and ``W`` must be multiples of 4 (see :func:`pad_to_multiple`).
    """

    def __init__(
        self, in_channels: int, base_channels: int, *, pool_kernel: int, norm: str, act: str
    ) -> None:
        super().__init__()
        c = base_channels
        self.stage0 = DoubleConv(in_channels, c, norm=norm, act=act)
        self.pool = max_pool(pool_kernel)
        self.stage1 = DoubleConv(c, 2 * c, norm=norm, act=act)
        self.stage2 = DoubleConv(2 * c, 4 * c, norm=norm, act=act)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s0 = self.stage0(x)
        s1 = self.stage1(self.pool(s0))
        s2 = self.stage2(self.pool(s1))
        return [s0, s1, s2]


class UNetDecoder(nn.Module):
    """U-Net decoder: two (bilinear x2 + 3x3 conv, concatenate skip, DoubleConv) stages.

    Takes ``[s0, s1, bottom]`` as produced by :class:`UNetEncoder` (after the
    bottleneck) and returns ``(N, c, H, W)`` features.
    """

    def __init__(self, base_channels: int, *, norm: str, act: str) -> None:
        super().__init__()
        c = base_channels
        self.up1 = UpBlock(4 * c, 2 * c, norm=norm, act=act)
        self.conv1 = DoubleConv(4 * c, 2 * c, norm=norm, act=act)
        self.up0 = UpBlock(2 * c, c, norm=norm, act=act)
        self.conv0 = DoubleConv(2 * c, c, norm=norm, act=act)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        s0, s1, bottom = feats
        x = self.conv1(torch.cat([self.up1(bottom, s1.shape[-2:]), s1], dim=1))
        return self.conv0(torch.cat([self.up0(x, s0.shape[-2:]), s0], dim=1))


class UNet(nn.Module):
    """Encoder, residual-block bottleneck, decoder; returns ``(N, c, H, W)`` features.

    Pads any input to a multiple of 4 and crops the features back, so any
    ``H, W >= 1`` work.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int,
        *,
        pool_kernel: int,
        norm: str,
        act: str,
    ) -> None:
        super().__init__()
        self.encoder = UNetEncoder(
            in_channels, base_channels, pool_kernel=pool_kernel, norm=norm, act=act
        )
        self.bottleneck = ResidualBlock(4 * base_channels, norm=norm, act=act)
        self.decoder = UNetDecoder(base_channels, norm=norm, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, crop = pad_to_multiple(x, 4)
        s0, s1, s2 = self.encoder(xp)
        return self.decoder([s0, s1, self.bottleneck(s2)])[crop]


def pad_to_multiple(
    x: torch.Tensor, multiple: int = 4, mode: str = "reflect"
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the last two dimensions of ``x`` up to a multiple of ``multiple``.

    Padding is split evenly between both sides (reflect padding, replicate
    when a side is too short to reflect), so the image stays centred.

    Parameters
    ----------
    x : torch.Tensor
        ``(..., H, W)`` tensor with at least 3 dimensions.
    multiple : int
        Target multiple (4 for two halvings).
    mode : str
        ``torch.nn.functional.pad`` mode.

    Returns
    -------
    padded : torch.Tensor
        ``(..., H', W')`` with ``H'`` and ``W'`` multiples of ``multiple``.
    crop : tuple of slice
        Index ``padded_output[crop]`` to recover ``(..., H, W)`` from an output
        of the padded size.  Use :func:`scale_crop` for up-sampled outputs.
    """
    if x.ndim < 3:
        raise CycleULMError(
            f"expected a (..., H, W) tensor with batch dims, got shape {tuple(x.shape)}."
        )
    h, w = x.shape[-2:]
    if h < 1 or w < 1:
        raise CycleULMError(f"cannot process an empty image of size {h}x{w}.")
    ph, pw = (-h) % multiple, (-w) % multiple
    top, left = ph // 2, pw // 2
    crop = (Ellipsis, slice(top, top + h), slice(left, left + w))
    if ph == 0 and pw == 0:
        return x, crop
    pads = (left, pw - left, top, ph - top)
    if mode == "reflect" and (max(left, pw - left) >= w or max(top, ph - top) >= h):
        mode = "replicate"
    if x.ndim == 3:
        xp = F.pad(x[None], pads, mode=mode)[0]
    elif x.ndim > 4:
        lead = x.shape[:-3]
        xp = F.pad(x.reshape(-1, *x.shape[-3:]), pads, mode=mode)
        xp = xp.reshape(*lead, *xp.shape[-3:])
    else:
        xp = F.pad(x, pads, mode=mode)
    return xp, crop


def scale_crop(crop: tuple[slice, ...], factor: int) -> tuple[slice, ...]:
    """The crop of :func:`pad_to_multiple` for an output ``factor`` times larger."""
    out = []
    for s in crop:
        if isinstance(s, slice):
            out.append(slice(s.start * factor, s.stop * factor))
        else:
            out.append(s)
    return tuple(out)
