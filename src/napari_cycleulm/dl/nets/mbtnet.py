"""MBT-Net: recurrent U-Net for MB trajectories and velocities (paper 3.1, Fig. 12).

A U-Net encoder (2x2 max pooling, two down-samplings) is applied to every
frame of a short sequence with shared weights; three ConvLSTMs (Shi et al.
2015) replace the two skip connections and the bottleneck and summarise each
level over time (their last hidden state); a U-Net decoder (bilinear x2 +
3x3 conv) and two more up-sampling stages give maps at 4x the input
resolution.

Output channel order (:data:`CHANNELS`): ``traj_logit`` (logit of the
probability that a bubble path crosses the output pixel), ``vy``, ``vx``
(velocity in input pixels per frame, the library's unit; the output grid is
4x finer but velocities are not rescaled).
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import CycleULMError
from .blocks import UNetDecoder, UNetEncoder, UpBlock, pad_to_multiple, scale_crop

CHANNELS = ("traj_logit", "vy", "vx")

#: Up-sampling factor of the output relative to the input.
UPSCALE = 4


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step: the four gates come from one convolution of ``[x, h]``.

    Parameters
    ----------
    in_channels, hidden_channels : int
        Channels of the input and of the hidden/cell state.
    kernel_size : int
        Odd convolution size ('same' padding).
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise CycleULMError(f"ConvLSTM kernel_size must be odd, got {kernel_size}.")
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(
            in_channels + hidden_channels,
            4 * hidden_channels,
            kernel_size,
            padding=kernel_size // 2,
        )
        # Forget-gate bias 1 (Jozefowicz et al. 2015): remember by default early in training.
        with torch.no_grad():
            self.gates.bias.zero_()
            self.gates.bias[hidden_channels : 2 * hidden_channels] = 1.0

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N, C, H, W), ``state = (h, c)`` each (N, hidden, H, W) -> new ``(h, c)``."""
        h, c = state
        i, f, o, g = torch.chunk(self.gates(torch.cat([x, h], dim=1)), 4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def init_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero ``(h, c)`` matching a ``(N, C, H, W)`` input."""
        n, _, hh, ww = x.shape
        z = x.new_zeros(n, self.hidden_channels, hh, ww)
        return z, z.clone()


class ConvLSTM(nn.Module):
    """Single-layer ConvLSTM over a ``(N, T, C, H, W)`` sequence, zero initial state.

    Parameters
    ----------
    in_channels, hidden_channels, kernel_size
        See :class:`ConvLSTMCell`.
    return_sequence : bool
        ``False`` (default): return the last hidden state ``(N, hidden, H, W)``;
        ``True``: all hidden states ``(N, T, hidden, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 3,
        return_sequence: bool = False,
    ) -> None:
        super().__init__()
        self.cell = ConvLSTMCell(in_channels, hidden_channels, kernel_size)
        self.return_sequence = return_sequence

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        if seq.ndim != 5:
            raise CycleULMError(
                f"ConvLSTM expects a (N, T, C, H, W) sequence, got shape {tuple(seq.shape)}."
            )
        state = self.cell.init_state(seq[:, 0])
        hs = []
        for t in range(seq.shape[1]):
            state = self.cell(seq[:, t], state)
            if self.return_sequence:
                hs.append(state[0])
        return torch.stack(hs, dim=1) if self.return_sequence else state[0]


class MBTNet(nn.Module):
    """MB tracking network.

    Parameters
    ----------
    n_frames : int
        Consecutive MB-only frames per input (paper: 8).
    base_channels : int
        Width of the first encoder stage (then x2, x4); the ConvLSTMs keep
        the width of their level.
    norm : str
        ``"none"`` (default, see :class:`~napari_cycleulm.dl.nets.mblnet.MBLNet`),
        ``"batch"`` or ``"instance"``.
    act : str
        ``"leaky"`` (default) or ``"relu"``.

    Notes
    -----
    ``forward`` takes ``(N, n_frames, H, W)`` (frames as channels) of any
    size and returns ``(N, 3, 4H, 4W)`` in :data:`CHANNELS` order.
    """

    def __init__(
        self, n_frames: int = 8, base_channels: int = 16, norm: str = "none", act: str = "leaky"
    ) -> None:
        super().__init__()
        if n_frames < 1:
            raise CycleULMError(f"n_frames must be >= 1, got {n_frames}.")
        self.config = dict(n_frames=n_frames, base_channels=base_channels, norm=norm, act=act)
        c = base_channels
        self.encoder = UNetEncoder(1, c, pool_kernel=2, norm=norm, act=act)
        self.lstm0 = ConvLSTM(c, c)
        self.lstm1 = ConvLSTM(2 * c, 2 * c)
        self.lstm_bottleneck = ConvLSTM(4 * c, 4 * c)
        self.decoder = UNetDecoder(c, norm=norm, act=act)
        self.up_a = UpBlock(c, c, norm=norm, act=act)
        self.up_b = UpBlock(c, c, norm=norm, act=act)
        self.head = nn.Conv2d(c, len(CHANNELS), kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.config["n_frames"]
        if x.ndim != 4 or x.shape[1] != t:
            raise CycleULMError(
                f"MBT-Net expects (N, {t}, H, W) consecutive MB-only frames, got shape "
                f"{tuple(x.shape)}."
            )
        xp, crop = pad_to_multiple(x, 4)
        n, _, h, w = xp.shape
        # Fold time into the batch: one shared encoder pass for all frames.
        feats = self.encoder(xp.reshape(n * t, 1, h, w))
        seqs = [f.reshape(n, t, *f.shape[1:]) for f in feats]
        s0 = self.lstm0(seqs[0])
        s1 = self.lstm1(seqs[1])
        bottom = self.lstm_bottleneck(seqs[2])
        y = self.decoder([s0, s1, bottom])
        y = self.up_b(self.up_a(y))
        return self.head(y)[scale_crop(crop, UPSCALE)]
