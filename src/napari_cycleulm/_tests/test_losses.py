"""Losses: known values on hand-made inputs, shapes, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.dl.losses import (
    LAMBDA_CYCLE,
    LAMBDA_SIMILARITY,
    cycle_consistency_loss,
    cyclegan_discriminator_objective,
    cyclegan_generator_objective,
    gmm_localisation_nll,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    mblnet_loss,
    mbtnet_loss,
    presence_bce,
    similarity_blur_kernel,
    similarity_loss,
    soft_dice_loss,
    trajectory_bce,
    weighted_velocity_mse,
)
from napari_cycleulm.psf import gaussian_kernel

ONES = torch.ones(2, 1, 3, 3)
ZEROS = torch.zeros(2, 1, 3, 3)


# -- LSGAN / CycleGAN -------------------------------------------------------------
def test_lsgan_known_values():
    assert lsgan_generator_loss(ONES).item() == 0.0
    assert lsgan_generator_loss(ZEROS).item() == 1.0
    assert lsgan_discriminator_loss(ONES, ZEROS).item() == 0.0  # perfect discriminator
    assert lsgan_discriminator_loss(ZEROS, ONES).item() == 1.0  # fully fooled
    assert lsgan_discriminator_loss(ONES * 0.5, ONES * 0.5).item() == pytest.approx(0.25)
    assert lsgan_generator_loss(torch.tensor([0.0, 2.0, 1.0, 3.0])).item() == pytest.approx(1.5)


def test_cycle_consistency_is_l1():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    assert cycle_consistency_loss(x, x).item() == 0.0
    assert cycle_consistency_loss(x, x + torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])).item() == (
        pytest.approx(2.5 / 4)
    )
    with pytest.raises(CycleULMError, match="same shape"):
        cycle_consistency_loss(x, x[..., :1])


def test_similarity_compares_with_the_centre_ceus_frame():
    a = torch.zeros(1, 3, 4, 4)
    a[:, 1] = 0.5  # centre frame
    a[:, 0] = 9.0  # other frames are ignored
    b = torch.full((1, 1, 4, 4), 0.25)
    assert similarity_loss(b, a).item() == pytest.approx(0.25)
    assert similarity_loss(b, a, centre_index=0).item() == pytest.approx(8.75)


def test_blur_kernel_maps_the_mbonly_bubble_onto_the_ceus_bubble():
    sy, sx = 2.0, 3.0
    h, w = 41, 41
    mb = torch.as_tensor(gaussian_kernel(sy / 2, sx / 2, size=(h, w)))[None, None] * 0.7
    ceus = torch.as_tensor(gaussian_kernel(sy, sx, size=(h, w)))[None, None] * 0.7
    ceus3 = ceus.repeat(1, 3, 1, 1)
    k = similarity_blur_kernel(sy, sx)
    assert k.shape[0] % 2 == 1 and k.shape[1] % 2 == 1
    assert k.sum().item() == pytest.approx(4.0, rel=1e-5)
    blurred = similarity_loss(mb, ceus3, blur_kernel=k).item()
    plain = similarity_loss(mb, ceus3).item()
    assert blurred < 0.02 * plain  # the blurred MB-only bubble is (almost) the CEUS bubble
    with pytest.raises(CycleULMError, match="shrink"):
        similarity_blur_kernel(sy, sx, shrink=1.0)


def test_generator_objective_combines_terms_with_documented_weights():
    a = torch.rand(2, 3, 8, 8)
    b = torch.rand(2, 1, 8, 8)
    terms = cyclegan_generator_objective(
        real_a=a, real_b=b, fake_a=a * 0, fake_b=b * 0 + 0.1, rec_a=a + 0.2, rec_b=b - 0.1,
        d_a_fake=ZEROS, d_b_fake=ONES * 0.5,
    )
    assert set(terms) == {"total", "gan_ab", "gan_ba", "cycle_a", "cycle_b", "similarity"}
    assert terms["gan_ab"].item() == pytest.approx(0.25)
    assert terms["gan_ba"].item() == pytest.approx(1.0)
    assert terms["cycle_a"].item() == pytest.approx(0.2)
    assert terms["cycle_b"].item() == pytest.approx(0.1)
    sim = (0.1 - a[:, 1:2]).abs().mean().item()
    assert terms["similarity"].item() == pytest.approx(sim)
    expected = 1.25 + LAMBDA_CYCLE * 0.3 + LAMBDA_SIMILARITY * sim
    assert terms["total"].item() == pytest.approx(expected, rel=1e-5)
    assert LAMBDA_CYCLE == 10.0


def test_discriminator_objective():
    terms = cyclegan_discriminator_objective(
        d_a_real=ONES, d_a_fake=ZEROS, d_b_real=ZEROS, d_b_fake=ONES
    )
    assert terms["d_a"].item() == 0.0 and terms["d_b"].item() == 1.0
    assert terms["total"].item() == 1.0


# -- MBL-Net ------------------------------------------------------------------------
def test_presence_bce_matches_torch_reference():
    torch.manual_seed(0)
    logit = torch.randn(2, 1, 5, 6)
    target = (torch.rand(2, 1, 5, 6) > 0.8).float()
    p = torch.sigmoid(logit)
    ref = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert presence_bce(logit, target).item() == pytest.approx(ref.item(), rel=1e-5)
    ref_w = -(3 * target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert presence_bce(logit, target, pos_weight=3).item() == pytest.approx(ref_w.item(), rel=1e-5)
    assert trajectory_bce(logit[:, 0], target[:, 0]).item() == pytest.approx(ref.item(), rel=1e-5)


def _log_normal(x, mu, s):
    return sum(-0.5 * ((a - b) / c) ** 2 - math.log(c) - 0.5 * math.log(2 * math.pi)
               for a, b, c in zip(x, mu, s))


def test_gmm_single_pixel_is_the_analytic_gaussian_nll():
    # one pixel at (0, 0): mixture of one component, weight 1 whatever p is
    means = torch.tensor([0.8, 0.3, -0.2]).reshape(1, 3, 1, 1)
    sigmas = torch.tensor([0.2, 0.5, 0.4]).reshape(1, 3, 1, 1)
    gt = torch.tensor([[[1.0, 0.1, 0.25]]])
    out = gmm_localisation_nll(torch.full((1, 1, 1, 1), -2.0), means, sigmas, gt,
                               torch.ones(1, 1, dtype=torch.bool))
    expected = -_log_normal((1.0, 0.1, 0.25), (0.8, 0.3, -0.2), (0.2, 0.5, 0.4))
    assert out["localisation"].item() == pytest.approx(expected, rel=1e-5)
    assert out["total"].item() == pytest.approx(expected, rel=1e-5)  # count_weight 0


def test_gmm_uses_pixel_centres_offsets_and_probability_weights():
    # 1x2 image: pixel (0,0) and (0,1); GT bubble at (0, 1.3) with intensity 1
    logit = torch.tensor([[[[0.0, 2.0]]]])
    means = torch.zeros(1, 3, 1, 2)
    means[0, 0] = 1.0
    means[0, 2, 0, 1] = 0.25  # pixel (0,1) predicts x = 1.25
    sigmas = torch.ones(1, 3, 1, 2)
    gt = torch.tensor([[[1.0, 0.0, 1.3], [0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, False]])
    p = torch.sigmoid(logit).flatten().numpy()
    w = p / p.sum()
    lik = (w[0] * math.exp(_log_normal((1, 0, 1.3), (1, 0, 0), (1, 1, 1)))
           + w[1] * math.exp(_log_normal((1, 0, 1.3), (1, 0, 1.25), (1, 1, 1))))
    out = gmm_localisation_nll(logit, means, sigmas, gt, mask)
    assert out["localisation"].item() == pytest.approx(-math.log(lik), rel=1e-5)


def test_gmm_count_term_and_empty_patches():
    logit = torch.zeros(2, 1, 2, 2)  # p = 0.5 everywhere: mean count 2, variance 1
    means = torch.zeros(2, 3, 2, 2)
    sigmas = torch.ones(2, 3, 2, 2)
    gt = torch.zeros(2, 3, 3)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    empty = gmm_localisation_nll(logit, means, sigmas, gt, mask, count_weight=1.0)
    assert empty["total"].item() == 0.0 and empty["count"].item() == 0.0
    mask[0] = True  # 3 bubbles in the first patch, none in the second
    out = gmm_localisation_nll(logit, means, sigmas, gt, mask, count_weight=2.0)
    count = 0.5 * (3 - 2) ** 2 / 1.0 + 0.5 * math.log(2 * math.pi)
    assert out["count"].item() == pytest.approx(count, rel=1e-5)
    assert out["total"].item() == pytest.approx(out["localisation"].item() + 2 * count, rel=1e-5)


def test_gmm_shape_errors():
    with pytest.raises(CycleULMError, match="gt_mask"):
        gmm_localisation_nll(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 2, 2),
                             torch.ones(1, 3, 2, 2), torch.zeros(1, 2, 3),
                             torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(CycleULMError, match="means and sigmas"):
        gmm_localisation_nll(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2),
                             torch.ones(1, 3, 2, 2), torch.zeros(1, 2, 3),
                             torch.ones(1, 2, dtype=torch.bool))


def test_mblnet_loss_sums_presence_and_localisation_and_has_gradients():
    torch.manual_seed(1)
    out = torch.randn(2, 7, 6, 6)
    out[:, 4:] = out[:, 4:].abs() + 0.1
    out.requires_grad_(True)
    pres = torch.zeros(2, 1, 6, 6)
    pres[0, 0, 2, 3] = 1
    gt = torch.tensor([[[0.5, 2.1, 3.2]], [[0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True], [False]])
    terms = mblnet_loss(out, pres, gt, mask)
    assert set(terms) == {"total", "presence", "localisation", "count"}
    assert terms["total"].item() == pytest.approx(
        terms["presence"].item() + terms["localisation"].item(), rel=1e-6
    )
    terms["total"].backward()
    assert torch.isfinite(out.grad).all() and out.grad[:, 1:].abs().sum() > 0
    with pytest.raises(CycleULMError, match=r"\(N, 7, H, W\)"):
        mblnet_loss(out[:, :6], pres, gt, mask)


# -- MBT-Net ------------------------------------------------------------------------
def test_weighted_velocity_mse_equals_hand_computation():
    pred = torch.zeros(2, 2, 2, 2)
    true = torch.zeros(2, 2, 2, 2)
    true[0, 0, 0, 0] = 2.0  # sample 0: vy error 2 at (0,0)
    true[0, 1, 1, 1] = 1.0  # vx error 1 at (1,1)
    w = torch.zeros(2, 2, 2)
    w[0, 0, 0] = 3.0
    w[0, 1, 1] = 1.0  # normalised: 0.75, 0.25
    # sample 0: 0.75 * (4 + 0)/2 + 0.25 * (0 + 1)/2 = 1.625; sample 1: no weight -> 0
    assert weighted_velocity_mse(pred, true, w).item() == pytest.approx(1.625 / 2)
    # scaling the weights does not matter
    assert weighted_velocity_mse(pred, true, 10 * w[:, None]).item() == pytest.approx(1.625 / 2)


def _mbtnet_batch(seed: int, empty_fraction: float):
    """Random MBT-Net outputs, a random trajectory map and velocities on it: ``(out, traj, vel)``."""
    torch.manual_seed(seed)
    out = torch.randn(2, 3, 8, 8)
    traj = (torch.rand(2, 1, 8, 8) > empty_fraction).float()
    return out, traj, torch.randn(2, 2, 8, 8) * traj


def test_mbtnet_loss_terms_and_weight_source():
    out, traj, vel = _mbtnet_batch(2, 0.7)
    t = mbtnet_loss(out, traj, vel)
    assert t["trajectory"].item() == pytest.approx(
        F.binary_cross_entropy_with_logits(out[:, :1], traj).item(), rel=1e-6
    )
    assert t["velocity"].item() == pytest.approx(
        weighted_velocity_mse(out[:, 1:], vel, traj).item(), rel=1e-6
    )
    assert t["total"].item() == pytest.approx(t["trajectory"].item() + t["velocity"].item())
    tp = mbtnet_loss(out, traj, vel, weight_source="prediction")
    assert tp["velocity"].item() == pytest.approx(
        weighted_velocity_mse(out[:, 1:], vel, torch.sigmoid(out[:, :1])).item(), rel=1e-6
    )
    with pytest.raises(CycleULMError, match="weight_source"):
        mbtnet_loss(out, traj, vel, weight_source="gt")
    with pytest.raises(CycleULMError, match="do not match"):
        weighted_velocity_mse(out[:, 1:], vel, traj[..., :4])


def test_soft_dice_known_values_and_it_penalises_wide_predictions():
    t = torch.zeros(1, 1, 8, 8)
    t[0, 0, 4, :] = 1  # a thin line, 8 pixels
    big = 40.0
    exact = torch.where(t > 0, big, -big)
    assert soft_dice_loss(exact, t).item() == pytest.approx(0.0, abs=1e-6)
    # predicted 3 pixels wide: Dice 2*8 / (24 + 8); eps = 1 pixel
    wide = torch.full_like(t, -big)
    wide[0, 0, 3:6, :] = big
    assert soft_dice_loss(wide, t).item() == pytest.approx(1 - (16 + 1) / (32 + 1), rel=1e-5)
    empty = torch.full_like(t, -big)
    assert soft_dice_loss(empty, t).item() == pytest.approx(1 - 1 / 9, rel=1e-5)
    # An empty target predicted empty costs nothing.
    assert soft_dice_loss(empty, torch.zeros_like(t)).item() == pytest.approx(0.0, abs=1e-6)


def test_mbtnet_loss_dice_weight_adds_the_dice_term():
    out, traj, vel = _mbtnet_batch(3, 0.8)
    plain = mbtnet_loss(out, traj, vel)
    with_dice = mbtnet_loss(out, traj, vel, dice_weight=0.5)
    assert with_dice["trajectory"].item() == pytest.approx(
        plain["trajectory"].item() + 0.5 * soft_dice_loss(out[:, :1], traj).item(), rel=1e-6
    )


def test_presence_bce_accepts_bool_targets():
    logit = torch.zeros(1, 1, 2, 2)
    assert presence_bce(logit, torch.ones(1, 1, 2, 2, dtype=torch.bool)).item() == (
        pytest.approx(np.log(2.0))
    )


def test_gmm_ignores_padding_rows_even_if_nan():
    logit = torch.zeros(1, 1, 3, 3, requires_grad=True)
    means = torch.zeros(1, 3, 3, 3)
    sigmas = torch.ones(1, 3, 3, 3)
    gt = torch.tensor([[[1.0, 1.0, 1.0], [float("nan"), 0.0, 0.0]]])
    mask = torch.tensor([[True, False]])
    out = gmm_localisation_nll(logit, means, sigmas, gt, mask)
    ref = gmm_localisation_nll(logit, means, sigmas, gt[:, :1], mask[:, :1])
    assert out["localisation"].item() == pytest.approx(ref["localisation"].item())
    out["total"].backward()
    assert torch.isfinite(logit.grad).all()
