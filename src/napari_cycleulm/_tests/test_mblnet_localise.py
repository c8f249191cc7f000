"""MBL-Net decoding: summed 3x3 probability peaks, owner pixel's offsets, exact positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.localise import METHODS, localise
from napari_cycleulm.localise.mblnet import decode_mblnet, localise_mblnet

from ._tiny_nets import tiny_checkpoints

H, W = 24, 32


def _logit(p):
    return float(np.log(p / (1 - p)))


def _hand_outputs():
    """(2, 7, H, W) outputs with known bubbles, and the expected detections."""
    out = torch.zeros((2, 7, H, W))
    out[:, 0] = -30.0  # p ~ 0 everywhere
    out[:, 4:] = 0.5  # uncertainties

    def put(f, y, x, p, inten=0.0, dy=0.0, dx=0.0, s=(0.5, 0.5, 0.5)):
        out[f, 0, y, x] = _logit(p)
        out[f, 1, y, x] = inten
        out[f, 2, y, x] = dy
        out[f, 3, y, x] = dx
        out[f, 4:, y, x] = torch.tensor(s)

    # A: owner (10, 12), p 0.9, with a weaker neighbour (p 0.3, offsets that must NOT be used).
    put(0, 10, 12, 0.9, 0.7, 0.3, -0.2, (0.05, 0.1, 0.2))
    put(0, 10, 13, 0.3, 0.1, -0.9, -0.9)
    # B: probability split evenly over two pixels (each below threshold, sum above);
    # the owner is the first in raster order, (4, 20).
    put(0, 4, 20, 0.3, 0.4, 0.45, 0.1)
    put(0, 5, 20, 0.3, 0.4, -0.45, 0.1)
    # C: too faint (0.2 in total).
    put(0, 18, 5, 0.2, 0.5)
    # D: in frame 1, at the image corner.
    put(1, 0, 0, 0.8, 0.9, -0.25, 0.4)
    expected = [
        # frame, y, x, intensity, score
        (0, 10.3, 11.8, 0.7, 1.0),
        (0, 4.45, 20.1, 0.4, 0.6),
        (1, -0.25, 0.4, 0.9, 0.8),
    ]
    return out, expected


class FakeMBLNet(nn.Module):
    """Returns the hand-made outputs of the frame whose index is stored in pixel (-1, -1)."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs
        self.config = {"in_channels": 1}

    def forward(self, x):
        idx = x[:, 0, -1, -1].round().long()
        return self.outputs[idx]


def _frames_with_index():
    frames = np.zeros((2, H, W), np.float32)
    frames[:, -1, -1] = [0, 1]
    return frames


def _check(locs, expected):
    assert len(locs) == len(expected)
    got = sorted(zip(locs["frame"], locs["y"], locs["x"], locs["intensity"], locs["score"]))
    for g, e in zip(got, sorted(expected)):
        np.testing.assert_allclose(g, e, atol=1e-5)


def test_decoding_gives_exact_positions_from_the_owner_pixel():
    outputs, expected = _hand_outputs()
    locs = decode_mblnet(outputs, threshold=0.5)
    _check(locs, expected)
    a = locs.select(locs["y"] > 10)
    np.testing.assert_allclose(
        [a["sigma_intensity"][0], a["sigma_y"][0], a["sigma_x"][0]], [0.05, 0.1, 0.2], atol=1e-6
    )
    for name in ("frame", "y", "x", "intensity", "score", "sigma_intensity", "sigma_y", "sigma_x"):
        assert name in locs


def test_threshold_is_on_the_summed_probability():
    outputs, _ = _hand_outputs()
    assert len(decode_mblnet(outputs, threshold=0.15)) == 4  # the faint one too
    assert len(decode_mblnet(outputs, threshold=0.65)) == 2
    empty = decode_mblnet(outputs, threshold=9.0)
    assert len(empty) == 0 and "sigma_y" in empty


def test_localise_mblnet_runs_the_model_in_batches():
    outputs, expected = _hand_outputs()
    fake = FakeMBLNet(outputs)
    _check(localise_mblnet(_frames_with_index(), fake, 0.5, batch_size=1), expected)
    # Registered in the dispatcher, with the model as a keyword.
    assert "mblnet" in METHODS
    _check(localise(_frames_with_index(), None, method="mblnet", model=fake, threshold=0.5), expected)


def test_tiny_checkpoint_runs_and_threshold_selects_a_subset(tmp_path):
    paths = tiny_checkpoints(tmp_path)
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 1, (3, 19, 23)).astype(np.float32)
    low = localise_mblnet(frames, paths["mblnet"], 0.05, device="cpu")
    high = localise_mblnet(frames, paths["mblnet"], 0.15, device="cpu")
    assert len(low) >= len(high)
    assert set(zip(high["frame"], high["y"])) <= set(zip(low["frame"], low["y"]))
    assert (low["score"] <= 1).all() and (low["sigma_y"] > 0).all()


def test_bad_inputs_are_explained(tmp_path):
    paths = tiny_checkpoints(tmp_path)
    frames = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(CycleULMError, match="threshold"):
        localise_mblnet(frames, paths["mblnet"], -1)
    with pytest.raises(CycleULMError, match="MB-DT checkpoint but an MBL-Net"):
        localise_mblnet(frames, paths["mbdt"])
    with pytest.raises(CycleULMError, match=r"\(T, 7, H, W\)"):
        decode_mblnet(torch.zeros((1, 3, 4, 4)))


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_batchwise_decoding_equals_decoding_the_whole_block(batch_size):
    """localise_mblnet decodes batch by batch (memory); the table equals decoding all maps at once."""
    from napari_cycleulm.localise.mblnet import mblnet_maps
    from napari_cycleulm.dl.models import load_model

    rng = np.random.default_rng(3)
    frames = np.zeros((10, 40, 48), np.float32)
    yy, xx = np.mgrid[0:40, 0:48]
    for f in range(10):
        for _ in range(4):
            y, x = rng.uniform(4, 36), rng.uniform(4, 44)
            frames[f] += np.exp(-0.5 * (((yy - y) / 1.2) ** 2 + ((xx - x) / 1.2) ** 2))
    before, after = frames[3], frames[7]
    net = load_model("mblnet", "default", "cpu")
    want = decode_mblnet(mblnet_maps(frames, net, batch_size=batch_size, device="cpu", before=before, after=after),
                         0.4)
    got = localise_mblnet(frames, net, 0.4, batch_size=batch_size, device="cpu", before=before, after=after)
    assert len(want) > 20
    for col in ("frame", "y", "x", "intensity", "score"):
        np.testing.assert_array_equal(got[col], want[col])
