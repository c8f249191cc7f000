"""MB-DT inference: frame t uses (t-1, t, t+1) with replicated edges; streaming equals one shot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_cycleulm.dl import models
from napari_cycleulm.dl.checkpoint import load_checkpoint
from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.dl.mbdt_inference import iter_translate, translate

from ._tiny_nets import tiny_checkpoints


class LinearMix(nn.Module):
    """Fake translator: a*prev + b*centre + c*next, so every output pixel is predictable."""

    def __init__(self, a=1.0, b=10.0, c=100.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([a, b, c], dtype=torch.float32))

    def forward(self, x):
        assert x.ndim == 4 and x.shape[1] == 3
        return (x * self.w[None, :, None, None]).sum(1, keepdim=True)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("nets"))


@pytest.fixture
def frames():
    rng = np.random.default_rng(1)
    return rng.uniform(0.0, 2.0, (11, 13, 21)).astype(np.float32)


def _expected(frames, scale, a=1.0, b=10.0, c=100.0):
    f = frames * scale
    prev = np.concatenate([f[:1], f[:-1]])
    nxt = np.concatenate([f[1:], f[-1:]])
    return a * prev + b * f + c * nxt


def test_output_is_mbonly_frames_of_the_input_size(ckpts, frames):
    out = translate(frames, ckpts["mbdt"], batch_size=4, device="cpu")
    assert out.shape == frames.shape and out.dtype == np.float32
    assert (out >= 0).all() and np.isfinite(out).all()


def test_neighbours_with_edge_replication(frames):
    out = translate(frames, LinearMix(), scale=0.5, batch_size=3)
    np.testing.assert_allclose(out, _expected(frames, 0.5), rtol=1e-5)
    # A single frame is its own previous and next frame.
    one = translate(frames[:1], LinearMix(), scale=1.0)
    np.testing.assert_allclose(one[0], 111 * frames[0], rtol=1e-5)


def test_given_neighbours_replace_the_replicated_edges(frames):
    out = translate(frames[3:6], LinearMix(), scale=1.0, before=frames[2], after=frames[6])
    np.testing.assert_allclose(out, _expected(frames, 1.0)[3:6], rtol=1e-5)


def test_default_scale_maps_the_999th_percentile_to_one_on_a_clipped_background(frames):
    dark = np.where(frames > 1.2, frames, 0.0) ** 4  # median 0: a clutter filter that clips the background
    out = translate(dark, LinearMix(0, 1, 0))
    np.testing.assert_allclose(out, dark / np.percentile(dark, 99.9), rtol=1e-5)
    # So the output does not depend on the input's units.
    np.testing.assert_allclose(translate(dark * 37.0, LinearMix(0, 1, 0)), out, rtol=1e-5)


def test_mbdt_background_factor_brings_the_median_between_floor_and_level():
    from napari_cycleulm.intensity import mbdt_background_factor

    assert mbdt_background_factor(0.2, level=0.1, floor=0.04, max_raise=3) == pytest.approx(0.5)
    assert mbdt_background_factor(0.07, level=0.1, floor=0.04, max_raise=3) == 1.0
    assert mbdt_background_factor(0.02, level=0.1, floor=0.04, max_raise=3) == pytest.approx(2.0)
    assert mbdt_background_factor(0.001, level=0.1, floor=0.04, max_raise=3) == 3.0
    assert mbdt_background_factor(0.0, level=0.1, floor=0.04, max_raise=3) == 1.0  # clipped background
    assert mbdt_background_factor(0.02, level=0.1, floor=0.0) == 1.0  # the rule before the floor


def test_default_scale_raises_a_dark_background_to_the_floor_at_most_max_raise_times(frames):
    from napari_cycleulm.intensity import (MBDT_BACKGROUND_FLOOR, MBDT_MAX_RAISE, intensity_scale,
                                           mbdt_input_scale)

    dim = frames ** 5  # median ~0.03 of the 99.9th percentile: darker than the floor
    assert 0 < np.median(dim) * intensity_scale(dim) < MBDT_BACKGROUND_FLOOR
    out = translate(dim, LinearMix(0, 1, 0))
    assert np.median(out) == pytest.approx(MBDT_BACKGROUND_FLOOR, rel=1e-4)
    np.testing.assert_allclose(translate(dim * 37.0, LinearMix(0, 1, 0)), out, rtol=1e-5)
    empty = frames ** 12  # median ~1e-6: almost empty, raised by MBDT_MAX_RAISE only
    assert mbdt_input_scale(empty) == pytest.approx(MBDT_MAX_RAISE * intensity_scale(empty), rel=1e-6)


def test_default_scale_darkens_a_bright_background_to_the_trained_level(frames):
    from napari_cycleulm.intensity import MBDT_BACKGROUND_LEVEL, intensity_scale, mbdt_input_scale

    # Uniform noise: its median is half its 99.9th percentile, five times MB-DT's trained background.
    out = translate(frames, LinearMix(0, 1, 0))
    assert np.median(out) == pytest.approx(MBDT_BACKGROUND_LEVEL, rel=1e-4)
    assert mbdt_input_scale(frames) < intensity_scale(frames)
    np.testing.assert_allclose(translate(frames * 37.0, LinearMix(0, 1, 0)), out, rtol=1e-5)


def test_output_is_clipped_at_zero(frames):
    out = translate(frames, LinearMix(0.0, -1.0, 0.0), scale=1.0)
    assert (out == 0).all()


@pytest.mark.parametrize("block_size", [1, 4, 11, 50])
def test_streaming_equals_one_shot(ckpts, frames, block_size):
    ckpt = load_checkpoint(ckpts["mbdt"], device="cpu")
    whole = translate(frames, ckpt)
    parts = list(iter_translate(frames, ckpt, block_size=block_size))
    assert [p[0] for p in parts] == list(range(0, 11, block_size))
    assert parts[-1][1] == 11
    np.testing.assert_allclose(np.concatenate([p[2] for p in parts]), whole, rtol=1e-5, atol=1e-6)
    # And with the exact linear fake, to the last bit of the neighbour logic.
    fake = np.concatenate([p[2] for p in iter_translate(frames, LinearMix(), block_size=block_size, scale=2.0)])
    np.testing.assert_allclose(fake, _expected(frames, 2.0), rtol=1e-5)


def test_missing_default_weights_are_explained(monkeypatch, tmp_path, frames):
    monkeypatch.setitem(models.DEFAULT_WEIGHTS, "mbdt", tmp_path / "mbdt_default.pt")
    with pytest.raises(CycleULMError, match="no default weights shipped for MB-DT.*train_default_weights"):
        translate(frames)
    with pytest.raises(CycleULMError, match="no default weights"):
        models.load_model("mbdt", "default")


def test_bad_inputs_are_explained(ckpts, frames, tmp_path):
    with pytest.raises(CycleULMError, match="MBL-Net checkpoint but an MB-DT"):
        translate(frames, ckpts["mblnet"])
    with pytest.raises(CycleULMError, match="not found"):
        translate(frames, tmp_path / "nope.pt")
    with pytest.raises(CycleULMError, match="scale"):
        translate(frames, LinearMix(), scale=0.0)
    with pytest.raises(CycleULMError, match="before"):
        translate(frames, LinearMix(), before=np.zeros((3, 3)))
    with pytest.raises(CycleULMError, match="block_size"):
        next(iter_translate(frames, LinearMix(), block_size=0))
    with pytest.raises(CycleULMError, match="unknown network kind"):
        models.load_model("nope")


class ShiftRight(nn.Module):
    """Fake translator that is not mirror symmetric: the centre frame moved one pixel right (zero fill)."""

    def forward(self, x):
        c = x[:, 1:2]
        return torch.cat([torch.zeros_like(c[..., :1]), c[..., :-1]], dim=-1)


def _shift(f, dy=0, dx=0):
    out = np.zeros_like(f)
    h, w = f.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        f[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_mirror_averaging_is_the_mean_of_the_mirrored_passes(frames):
    """Default: the mean of the frames' translation and of their left-right mirror's, mirrored back."""
    one = translate(frames, ShiftRight(), scale=1.0, tta="none")
    np.testing.assert_allclose(one, _shift(frames, dx=1), rtol=1e-6)
    # Mirrored, translated and mirrored back, the shift goes left: the mean of the two.
    lateral = 0.5 * (_shift(frames, dx=1) + _shift(frames, dx=-1))
    np.testing.assert_allclose(translate(frames, ShiftRight(), scale=1.0), lateral, rtol=1e-6)
    np.testing.assert_allclose(translate(frames, ShiftRight(), scale=1.0, tta="lateral"), lateral, rtol=1e-6)
    # Four passes: the up-down mirror does not change a horizontal shift.
    np.testing.assert_allclose(translate(frames, ShiftRight(), scale=1.0, tta="lateral+axial"), lateral,
                               rtol=1e-6)
    streamed = np.concatenate([mb for _, _, mb in iter_translate(frames, ShiftRight(), block_size=4, scale=1.0)])
    np.testing.assert_allclose(streamed, lateral, rtol=1e-6)


@pytest.mark.parametrize("tta", ["both", None, 2])
def test_bad_mirror_averaging_is_one_clear_error(frames, tta):
    with pytest.raises(CycleULMError, match="tta must be one of"):
        translate(frames, ShiftRight(), scale=1.0, tta=tta)
    with pytest.raises(CycleULMError, match="tta must be one of"):
        next(iter_translate(frames, ShiftRight(), scale=1.0, tta=tta))
