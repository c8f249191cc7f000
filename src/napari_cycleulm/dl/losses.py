"""Training losses of the three CycleULM networks (paper, section 3.1).

Every loss is a pure function of tensors returning a scalar tensor (or a
dict of scalar tensors with a ``"total"`` entry for the combined
objectives).  The symbols of the paper's equations were lost in the text we
work from, so the weights below are our choices; each is a parameter and the
reason for its default is given where it is defined.

MB-DT (CycleGAN, eqs. 1-9)
    :func:`lsgan_generator_loss`, :func:`lsgan_discriminator_loss`,
    :func:`cycle_consistency_loss`, :func:`similarity_loss` (with
    :func:`similarity_blur_kernel`), :func:`cyclegan_generator_objective`,
    :func:`cyclegan_discriminator_objective`.
MBL-Net (eqs. 10-13, DECODE)
    :func:`presence_bce`, :func:`gmm_localisation_nll`, :func:`mblnet_loss`.
MBT-Net (eqs. 14-16)
    :func:`trajectory_bce`, :func:`weighted_velocity_mse`, :func:`mbtnet_loss`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CycleULMError
from ..psf import gaussian_kernel

#: CycleGAN default weight of the two cycle-consistency terms (Zhu et al. 2017).
LAMBDA_CYCLE = 10.0

#: Weight of the similarity loss.  It is a regulariser that stops MB-DT from
#: dropping bubbles, not a target: the CEUS frame also contains clutter and
#: noise that the translation must remove.  1.0 keeps it an order of magnitude
#: below the cycle terms and comparable to one adversarial term (an LSGAN
#: generator loss starts around 0.25-1), the same role and scale as CycleGAN's
#: identity loss relative to its adversarial loss.
LAMBDA_SIMILARITY = 1.0


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise CycleULMError(
            f"{na} and {nb} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )


def _as_n1hw(t: torch.Tensor, name: str) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) -> (N, 1, H, W)."""
    if t.ndim == 3:
        return t[:, None]
    if t.ndim == 4 and t.shape[1] == 1:
        return t
    raise CycleULMError(f"{name} must be (N, H, W) or (N, 1, H, W), got shape {tuple(t.shape)}.")


# ---------------------------------------------------------------------------
# MB-DT: CycleGAN with LSGAN losses
# ---------------------------------------------------------------------------
def lsgan_generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """LSGAN generator loss (Mao et al. 2017): ``mean((D(fake) - 1)^2)``.

    Parameters
    ----------
    d_fake : torch.Tensor
        Discriminator scores of generated images, any shape (PatchGAN map).
    """
    return torch.mean((d_fake - 1.0) ** 2)


def lsgan_discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """LSGAN discriminator loss: ``0.5 * (mean((D(real) - 1)^2) + mean(D(fake)^2))``.

    Parameters
    ----------
    d_real, d_fake : torch.Tensor
        Scores of real and (detached) generated images, any shapes.
    """
    return 0.5 * (torch.mean((d_real - 1.0) ** 2) + torch.mean(d_fake**2))


def cycle_consistency_loss(x: torch.Tensor, x_reconstructed: torch.Tensor) -> torch.Tensor:
    """L1 cycle-consistency: ``mean(|x - G_BA(G_AB(x))|)`` (or the B->A->B cycle).

    Parameters
    ----------
    x, x_reconstructed : torch.Tensor
        Same shape, e.g. ``(N, 3, H, W)`` for domain A.
    """
    _check_same_shape(x, x_reconstructed, "x", "x_reconstructed")
    return torch.mean(torch.abs(x - x_reconstructed))


def similarity_blur_kernel(
    sigma_y_px: float, sigma_x_px: float, theta_rad: float = 0.0, shrink: float = 0.5
) -> torch.Tensor:
    """Kernel that turns an MB-only bubble into the matching CEUS bubble.

    The MB-only PSF is the CEUS PSF (covariance ``S``) shrunk by ``shrink``
    (covariance ``shrink^2 S``).  Convolving with a Gaussian of covariance
    ``(1 - shrink^2) S`` restores covariance ``S``; scaling the kernel to sum
    ``1 / shrink^2`` keeps the peak amplitude (a 2-D Gaussian's peak falls as
    the square root of its covariance determinant grows).  So a bubble of
    amplitude ``a`` in the MB-only image becomes a bubble of amplitude ``a``
    and the CEUS shape, directly comparable with the CEUS frame.

    Parameters
    ----------
    sigma_y_px, sigma_x_px, theta_rad : float
        CEUS PSF (pixels, radians), e.g. from :class:`~napari_cycleulm.psf.PSF`.
    shrink : float
        MB-only PSF scale (paper: 0.5), in (0, 1).

    Returns
    -------
    torch.Tensor
        ``(kh, kw)`` float32 kernel, odd sizes.
    """
    if not 0.0 < shrink < 1.0:
        raise CycleULMError(f"shrink must be in (0, 1), got {shrink!r}.")
    if not (sigma_y_px > 0 and sigma_x_px > 0):
        raise CycleULMError("PSF sigmas must be positive numbers of pixels.")
    scale = math.sqrt(1.0 - shrink**2)
    k = gaussian_kernel(sigma_y_px * scale, sigma_x_px * scale, theta_rad).astype(np.float64)
    k = k / k.sum() / shrink**2
    return torch.as_tensor(k, dtype=torch.float32)


def similarity_loss(
    fake_b: torch.Tensor,
    real_a: torch.Tensor,
    *,
    blur_kernel: torch.Tensor | None = None,
    centre_index: int | None = None,
) -> torch.Tensor:
    """L1 between the MB-only output and the centre CEUS input frame (eq. 6).

    Ties the translated image to where the bubbles are in the CEUS input so
    that MB-DT does not drop (or invent) bubbles.  With ``blur_kernel`` (see
    :func:`similarity_blur_kernel`) the MB-only image is first blurred to the
    CEUS PSF, so that the comparison is not dominated by the deliberately
    smaller MB-only PSF; without it the images are compared directly
    (simplest; still aligns bubble positions and amplitudes).

    Parameters
    ----------
    fake_b : torch.Tensor
        ``(N, 1, H, W)`` MB-only output ``G_AB(real_a)``.
    real_a : torch.Tensor
        ``(N, C, H, W)`` normalised CEUS input of ``G_AB`` (the same
        normalisation as the network input, e.g. max 1 over the data set).
    blur_kernel : torch.Tensor, optional
        ``(kh, kw)`` kernel, odd sizes.
    centre_index : int, optional
        Channel of ``real_a`` that the output corresponds to; default ``C // 2``.

    Returns
    -------
    torch.Tensor
        Scalar mean absolute difference.
    """
    if fake_b.ndim != 4 or fake_b.shape[1] != 1 or real_a.ndim != 4:
        raise CycleULMError(
            f"similarity_loss expects fake_b (N, 1, H, W) and real_a (N, C, H, W), got "
            f"{tuple(fake_b.shape)} and {tuple(real_a.shape)}."
        )
    c = real_a.shape[1] // 2 if centre_index is None else centre_index
    if not 0 <= c < real_a.shape[1]:
        raise CycleULMError(f"centre_index {c} is outside the {real_a.shape[1]} CEUS channels.")
    centre = real_a[:, c : c + 1]
    _check_same_shape(fake_b, centre, "fake_b", "the centre CEUS frame")
    if blur_kernel is not None:
        k = torch.as_tensor(blur_kernel, dtype=fake_b.dtype, device=fake_b.device)
        if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
            raise CycleULMError(f"blur_kernel must be 2-D with odd sizes, got {tuple(k.shape)}.")
        ph, pw = k.shape[0] // 2, k.shape[1] // 2
        # Zero padding: MB-only images are zero away from bubbles.
        fake_b = F.conv2d(F.pad(fake_b, (pw, pw, ph, ph)), k[None, None])
    return torch.mean(torch.abs(fake_b - centre))


def cyclegan_generator_objective(
    *,
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    fake_a: torch.Tensor,
    fake_b: torch.Tensor,
    rec_a: torch.Tensor,
    rec_b: torch.Tensor,
    d_a_fake: torch.Tensor,
    d_b_fake: torch.Tensor,
    lambda_cycle: float = LAMBDA_CYCLE,
    lambda_similarity: float = LAMBDA_SIMILARITY,
    similarity_kernel: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Generator objective of MB-DT (eq. 1).

    ``total = gan_ab + gan_ba + lambda_cycle * (cycle_a + cycle_b)
    + lambda_similarity * similarity``.

    Parameters
    ----------
    real_a : (N, 3, H, W)
        CEUS frames (domain A).
    real_b : (N, 1, H, W)
        Synthetic MB-only images (domain B), unpaired.
    fake_b, fake_a : tensors
        ``G_AB(real_a)`` (N, 1, H, W) and ``G_BA(real_b)`` (N, 3, H, W).
    rec_a, rec_b : tensors
        ``G_BA(fake_b)`` and ``G_AB(fake_a)``.
    d_a_fake, d_b_fake : tensors
        ``D_A(fake_a)`` and ``D_B(fake_b)`` (not detached).
    lambda_cycle : float
        Default 10 (CycleGAN).
    lambda_similarity : float
        Default :data:`LAMBDA_SIMILARITY` (1.0).
    similarity_kernel : torch.Tensor, optional
        Passed to :func:`similarity_loss` as ``blur_kernel``.

    Returns
    -------
    dict
        ``total``, ``gan_ab`` (G_AB fooling D_B), ``gan_ba``, ``cycle_a``,
        ``cycle_b``, ``similarity``; all scalar tensors.
    """
    if lambda_cycle < 0 or lambda_similarity < 0:
        raise CycleULMError("loss weights must be >= 0.")
    terms = {
        "gan_ab": lsgan_generator_loss(d_b_fake),
        "gan_ba": lsgan_generator_loss(d_a_fake),
        "cycle_a": cycle_consistency_loss(real_a, rec_a),
        "cycle_b": cycle_consistency_loss(real_b, rec_b),
        "similarity": similarity_loss(fake_b, real_a, blur_kernel=similarity_kernel),
    }
    terms["total"] = (
        terms["gan_ab"]
        + terms["gan_ba"]
        + lambda_cycle * (terms["cycle_a"] + terms["cycle_b"])
        + lambda_similarity * terms["similarity"]
    )
    return terms


def cyclegan_discriminator_objective(
    *,
    d_a_real: torch.Tensor,
    d_a_fake: torch.Tensor,
    d_b_real: torch.Tensor,
    d_b_fake: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Discriminator objective (eqs. 7-9): ``total = d_a + d_b`` (LSGAN).

    ``d_*_fake`` must be computed on detached generator outputs (or from an
    image pool).  Returns ``total``, ``d_a``, ``d_b``.
    """
    terms = {
        "d_a": lsgan_discriminator_loss(d_a_real, d_a_fake),
        "d_b": lsgan_discriminator_loss(d_b_real, d_b_fake),
    }
    terms["total"] = terms["d_a"] + terms["d_b"]
    return terms


# ---------------------------------------------------------------------------
# MBL-Net: presence BCE + DECODE Gaussian-mixture localisation loss
# ---------------------------------------------------------------------------
def presence_bce(
    p_logit: torch.Tensor, presence_map: torch.Tensor, pos_weight: float | None = None
) -> torch.Tensor:
    """Binary cross-entropy between the probability logits and the GT presence map (eq. 11).

    Parameters
    ----------
    p_logit : torch.Tensor
        ``(N, 1, H, W)`` or ``(N, H, W)`` logits.
    presence_map : torch.Tensor
        Same shape, 1 where a GT bubble lies in the pixel, else 0.
    pos_weight : float, optional
        Weight of the positive pixels (bubbles are sparse; e.g. 10 raises recall).

    Returns
    -------
    torch.Tensor
        Scalar mean over pixels.
    """
    presence_map = presence_map.to(p_logit.dtype)
    _check_same_shape(p_logit, presence_map, "p_logit", "presence_map")
    pw = None if pos_weight is None else torch.tensor(float(pos_weight), device=p_logit.device)
    return F.binary_cross_entropy_with_logits(p_logit, presence_map, pos_weight=pw)


def gmm_localisation_nll(
    p_logit: torch.Tensor,
    means: torch.Tensor,
    sigmas: torch.Tensor,
    gt_params: torch.Tensor,
    gt_mask: torch.Tensor,
    *,
    count_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """DECODE localisation loss in 2-D (eqs. 12-13, Speiser et al. 2021).

    Every pixel ``k`` (centre ``(y_k, x_k)``) predicts a Gaussian over
    ``(intensity, y, x)`` with mean ``(I_k, y_k + dy_k, x_k + dx_k)`` and
    diagonal standard deviations ``(s_I, s_y, s_x)``.  The mixture weights are
    ``w_k = p_k / sum_k p_k`` over the patch.  The loss is the mean over all GT
    bubbles of ``-log sum_k w_k N(gt | mu_k, Sigma_k)`` (computed with
    logsumexp).  Patches without bubbles contribute nothing here.

    Parameters
    ----------
    p_logit : torch.Tensor
        ``(N, 1, H, W)`` or ``(N, H, W)`` probability logits.
    means : torch.Tensor
        ``(N, 3, H, W)``: intensity, dy, dx (pixels).
    sigmas : torch.Tensor
        ``(N, 3, H, W)``: s_int, s_y, s_x, all > 0.
    gt_params : torch.Tensor
        ``(N, M, 3)`` GT (intensity, y, x) in pixel coordinates of the patch
        (``(0, 0)`` is the centre of the top-left pixel), padded to ``M``.
    gt_mask : torch.Tensor
        ``(N, M)`` bool, True for real bubbles.
    count_weight : float
        Weight of DECODE's count term, ``-log N(n_gt | sum p, sum p (1 - p))``
        (Gaussian approximation of the Poisson-binomial number of detections),
        averaged over patches with bubbles.  Default 0: the paper's loss
        (eq. 10) has only the presence and localisation terms and the BCE
        already calibrates the probabilities; set to 1 for DECODE's loss.

    Returns
    -------
    dict
        ``total`` (= ``localisation + count_weight * count``), ``localisation``
        and ``count`` (scalars; 0 when the batch has no bubble).  The NLL of a
        continuous density can be negative.
    """
    p_logit = _as_n1hw(p_logit, "p_logit")[:, 0]
    n, h, w = p_logit.shape
    if means.shape != (n, 3, h, w) or sigmas.shape != (n, 3, h, w):
        raise CycleULMError(
            f"means and sigmas must be (N, 3, H, W) = {(n, 3, h, w)}, got "
            f"{tuple(means.shape)} and {tuple(sigmas.shape)}."
        )
    if gt_params.ndim != 3 or gt_params.shape[0] != n or gt_params.shape[2] != 3:
        raise CycleULMError(f"gt_params must be (N, M, 3), got {tuple(gt_params.shape)}.")
    if gt_mask.shape != gt_params.shape[:2]:
        raise CycleULMError(
            f"gt_mask must be (N, M) = {tuple(gt_params.shape[:2])}, got {tuple(gt_mask.shape)}."
        )
    gt_mask = gt_mask.bool()
    zero = p_logit.sum() * 0.0
    n_gt = gt_mask.sum(dim=1)  # (N,)
    has = n_gt > 0
    if not bool(has.any()):
        return {"total": zero, "localisation": zero, "count": zero}

    k = h * w
    log_p = F.logsigmoid(p_logit).reshape(n, k)
    log_w = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)  # (N, K)

    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=means.dtype, device=means.device),
        torch.arange(w, dtype=means.dtype, device=means.device),
        indexing="ij",
    )
    mu = torch.stack([means[:, 0], yy + means[:, 1], xx + means[:, 2]], dim=-1).reshape(n, 1, k, 3)
    sig = sigmas.permute(0, 2, 3, 1).reshape(n, 1, k, 3)
    # Padding rows may hold anything (even NaN): zero them so they cannot poison gradients.
    gt = torch.where(gt_mask[..., None], gt_params.to(means.dtype), 0.0)
    z = (gt[:, :, None, :] - mu) / sig  # (N, M, K, 3)
    log_norm = (-0.5 * z**2 - torch.log(sig) - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_mix = torch.logsumexp(log_w[:, None, :] + log_norm, dim=2)  # (N, M)
    localisation = -torch.where(gt_mask, log_mix, 0.0).sum() / gt_mask.sum()

    p = torch.sigmoid(p_logit).reshape(n, k)
    mean_count = p.sum(1)
    # Variance floor: a nearly deterministic count would make the Gaussian degenerate.
    var_count = (p * (1 - p)).sum(1).clamp_min(1e-2)
    count_nll = 0.5 * (n_gt.to(p.dtype) - mean_count) ** 2 / var_count + 0.5 * torch.log(
        2 * math.pi * var_count
    )
    count = count_nll[has].mean()
    return {
        "total": localisation + count_weight * count,
        "localisation": localisation,
        "count": count,
    }


def mblnet_loss(
    output: torch.Tensor,
    presence_map: torch.Tensor,
    gt_params: torch.Tensor,
    gt_mask: torch.Tensor,
    *,
    pos_weight: float | None = None,
    localisation_weight: float = 1.0,
    count_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """MBL-Net loss (eq. 10): ``presence + localisation_weight * localisation (+ count)``.

    Parameters
    ----------
    output : torch.Tensor
        ``(N, 7, H, W)`` MBL-Net output (channel order
        :data:`napari_cycleulm.dl.nets.mblnet.CHANNELS`).
    presence_map : torch.Tensor
        ``(N, 1, H, W)`` or ``(N, H, W)`` GT presence (1 at the pixel of each bubble).
    gt_params, gt_mask : torch.Tensor
        See :func:`gmm_localisation_nll`.
    pos_weight : float, optional
        See :func:`presence_bce`.
    localisation_weight : float
        Weight of the GMM term (1: eq. 10 is an unweighted sum).
    count_weight : float
        See :func:`gmm_localisation_nll`.

    Returns
    -------
    dict
        ``total``, ``presence``, ``localisation``, ``count``.
    """
    if output.ndim != 4 or output.shape[1] != 7:
        raise CycleULMError(f"output must be (N, 7, H, W), got shape {tuple(output.shape)}.")
    presence_map = _as_n1hw(presence_map, "presence_map")
    presence = presence_bce(output[:, 0:1], presence_map, pos_weight)
    loc = gmm_localisation_nll(
        output[:, 0:1], output[:, 1:4], output[:, 4:7], gt_params, gt_mask,
        count_weight=count_weight,
    )
    return {
        "total": presence + localisation_weight * loc["total"],
        "presence": presence,
        "localisation": loc["localisation"],
        "count": loc["count"],
    }


# ---------------------------------------------------------------------------
# MBT-Net: trajectory BCE + trajectory-weighted velocity MSE
# ---------------------------------------------------------------------------
def trajectory_bce(
    logit: torch.Tensor, traj_map: torch.Tensor, pos_weight: float | None = None
) -> torch.Tensor:
    """BCE between the trajectory logits and the GT trajectory map (eq. 15).

    ``logit`` and ``traj_map``: ``(N, 1, H, W)`` or ``(N, H, W)``, map in [0, 1].
    """
    return presence_bce(logit, traj_map, pos_weight)


def soft_dice_loss(logit: torch.Tensor, traj_map: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 sum(p t) + eps) / (sum p + sum t + eps)`` per sample, averaged.

    ``p = sigmoid(logit)``.  Unlike a positive-class weight on the BCE, which
    rewards probabilities above 0.5 beside thin targets and so widens them,
    the Dice term penalises every predicted pixel off the target as much as
    every missed target pixel: it keeps predicted trajectories as thin as the
    true ones.  ``eps`` (pixels) keeps empty samples finite.

    ``logit`` and ``traj_map``: ``(N, 1, H, W)`` or ``(N, H, W)``, map in [0, 1].
    """
    _check_same_shape(logit, traj_map, "logit", "traj_map")
    p = torch.sigmoid(logit).flatten(1)
    t = traj_map.to(p.dtype).flatten(1)
    dice = (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
    return (1 - dice).mean()


def weighted_velocity_mse(
    pred_v: torch.Tensor, true_v: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Trajectory-weighted velocity MSE (eq. 16).

    The weights are normalised to sum 1 per sample, so every sample's loss is
    a weighted mean over its trajectory pixels of the squared velocity error
    (mean of the ``vy`` and ``vx`` errors); the result is the mean over
    samples.  Samples whose weights are all 0 contribute 0.

    Parameters
    ----------
    pred_v, true_v : torch.Tensor
        ``(N, 2, H, W)`` velocities (vy, vx).
    weights : torch.Tensor
        ``(N, H, W)`` or ``(N, 1, H, W)`` non-negative weights (the trajectory map).

    Returns
    -------
    torch.Tensor
        Scalar.
    """
    _check_same_shape(pred_v, true_v, "pred_v", "true_v")
    if pred_v.ndim != 4:
        raise CycleULMError(f"velocities must be (N, 2, H, W), got {tuple(pred_v.shape)}.")
    w = _as_n1hw(weights, "weights").to(pred_v.dtype)
    if w.shape[0] != pred_v.shape[0] or w.shape[-2:] != pred_v.shape[-2:]:
        raise CycleULMError(
            f"weights {tuple(weights.shape)} do not match velocities {tuple(pred_v.shape)}."
        )
    w = w / w.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    err = ((pred_v - true_v) ** 2).mean(dim=1, keepdim=True)
    return (w * err).sum(dim=(1, 2, 3)).mean()


def mbtnet_loss(
    output: torch.Tensor,
    traj_map: torch.Tensor,
    velocity: torch.Tensor,
    *,
    velocity_weight: float = 1.0,
    pos_weight: float | None = None,
    weight_source: str = "target",
    dice_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """MBT-Net loss (eq. 14): ``trajectory + velocity_weight * velocity``.

    With ``dice_weight > 0`` the trajectory term is
    ``BCE + dice_weight * soft Dice`` (:func:`soft_dice_loss`).

    Parameters
    ----------
    output : torch.Tensor
        ``(N, 3, H, W)`` MBT-Net output: traj_logit, vy, vx.
    traj_map : torch.Tensor
        ``(N, 1, H, W)`` or ``(N, H, W)`` GT trajectory map in [0, 1].
    velocity : torch.Tensor
        ``(N, 2, H, W)`` GT (vy, vx), zero off trajectories.
    velocity_weight : float
        1 (eq. 14 is an unweighted sum).
    pos_weight : float, optional
        See :func:`trajectory_bce`.
    weight_source : str
        Where the velocity weights come from: ``"target"`` (default: the GT
        trajectory map, a fixed weighting the network cannot game) or
        ``"prediction"`` (the detached predicted trajectory probabilities,
        the "detected trajectories" reading of the paper).
    dice_weight : float
        Weight of the soft Dice term of the trajectory loss (0: BCE only).

    Returns
    -------
    dict
        ``total``, ``trajectory``, ``velocity``.
    """
    if output.ndim != 4 or output.shape[1] != 3:
        raise CycleULMError(f"output must be (N, 3, H, W), got shape {tuple(output.shape)}.")
    traj_map = _as_n1hw(traj_map, "traj_map")
    if weight_source == "target":
        weights = traj_map
    elif weight_source == "prediction":
        weights = torch.sigmoid(output[:, 0:1]).detach()
    else:
        raise CycleULMError(
            f"weight_source must be 'target' or 'prediction', got {weight_source!r}."
        )
    traj = trajectory_bce(output[:, 0:1], traj_map, pos_weight)
    if dice_weight:
        traj = traj + float(dice_weight) * soft_dice_loss(output[:, 0:1], traj_map)
    vel = weighted_velocity_mse(output[:, 1:3], velocity, weights)
    return {"total": traj + velocity_weight * vel, "trajectory": traj, "velocity": vel}
