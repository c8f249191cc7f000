"""The three CycleULM networks: shapes for any frame size, gradients, output ranges."""

from __future__ import annotations

import pytest
import torch

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.dl.losses import cyclegan_generator_objective, mblnet_loss, mbtnet_loss
from napari_cycleulm.dl.nets import (
    MBDT,
    MBTNET_CHANNELS,
    ConvLSTM,
    Discriminator,
    Generator,
    MBLNet,
    MBTNet,
    count_parameters,
    pad_to_multiple,
    split_outputs,
)
from napari_cycleulm.dl.nets.blocks import ResidualBlock, UNet, UpBlock

torch.set_num_threads(1)

SIZES = [(40, 40), (61, 77), (5, 3)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- blocks -----------------------------------------------------------------
@pytest.mark.parametrize("h,w", [(40, 40), (61, 77), (1, 2), (6, 9)])
def test_pad_to_multiple_pads_to_4_and_crop_recovers_input(h, w):
    x = torch.arange(2 * 3 * h * w, dtype=torch.float32).reshape(2, 3, h, w)
    xp, crop = pad_to_multiple(x, 4)
    assert xp.shape[-2] % 4 == 0 and xp.shape[-1] % 4 == 0
    assert xp.shape[-2] - h < 4 and xp.shape[-1] - w < 4
    assert torch.equal(xp[crop], x)


def test_pad_to_multiple_handles_5d_sequences():
    x = torch.rand(2, 8, 1, 10, 13)
    xp, crop = pad_to_multiple(x, 4)
    assert xp.shape == (2, 8, 1, 12, 16)
    assert torch.equal(xp[crop], x)


def test_blocks_shapes():
    x = torch.rand(2, 8, 12, 16)
    assert ResidualBlock(8, norm="batch", act="relu")(x).shape == x.shape
    assert UpBlock(8, 4, norm="none", act="leaky")(x).shape == (2, 4, 24, 32)
    assert UpBlock(8, 4, norm="none", act="leaky")(x, (25, 33)).shape == (2, 4, 25, 33)
    assert UNet(8, 4, pool_kernel=4, norm="instance", act="relu")(x[..., :11, :13]).shape == (
        2, 4, 11, 13,
    )


def test_bad_norm_is_a_clear_error():
    with pytest.raises(CycleULMError, match="norm must be one of"):
        Generator(3, 1, 4, norm="group")


# -- MB-DT --------------------------------------------------------------------
@pytest.mark.parametrize("h,w", SIZES)
def test_generators_keep_spatial_size(h, w):
    m = MBDT(base_channels=4, disc_channels=4)
    a = torch.randn(2, 3, h, w)
    b = m.g_ab(a)
    assert b.shape == (2, 1, h, w)
    assert m.g_ba(b).shape == (2, 3, h, w)


def test_g_ab_output_is_non_negative_and_g_ba_is_signed():
    m = MBDT(base_channels=4, disc_channels=4)
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        m.g_ab.head.bias.fill_(-0.05)  # some outputs negative while training (linear output)...
    assert m.g_ab(x).min() < 0
    assert m.translate(x).min() == 0  # ...clipped at 0 for use
    assert m.g_ba(torch.randn(2, 1, 24, 24)).min() < 0
    soft = MBDT(base_channels=4, disc_channels=4, output_activation="softplus")
    assert soft.g_ab(x).min() > 0
    relu = MBDT(base_channels=4, output_activation="relu")
    with torch.no_grad():
        relu.g_ab.head.bias.fill_(-100.0)  # every pre-activation negative: relu gives exact zeros
    assert relu.g_ab(torch.randn(2, 3, 24, 24)).max() == 0


def test_generators_keep_absolute_amplitude_and_old_configs_load():
    """Without normalisation, a 10x brighter input changes G_AB's output (bubbles vs clutter is
    an amplitude question); ``norm=`` (checkpoints before 0.2) still sets all four networks."""
    m = MBDT(base_channels=4, disc_channels=4)
    assert m.config["generator_norm"] == "none" and m.config["disc_norm"] == "instance"
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        change = (m.g_ab(x) - m.g_ab(10 * x)).abs().max()
    assert change > 5e-3
    old = MBDT(base_channels=4, disc_channels=4, norm="instance")
    assert old.config["generator_norm"] == old.config["disc_norm"] == "instance"
    with torch.no_grad():  # instance norm: a global gain change is normalised away (up to eps)
        a, b = old.g_ab(x), old.g_ab(10 * x)
    assert torch.allclose(a, b, atol=1e-3)


def test_discriminator_gives_a_patch_map_on_40x40():
    d = Discriminator(3, 8, n_layers=3)
    out = d(torch.randn(2, 3, 40, 40))
    assert out.shape[:2] == (2, 1)
    assert out.shape[2] >= 2 and out.shape[3] >= 2
    assert out.shape[2:] == (3, 3)
    with pytest.raises(CycleULMError, match="at least 24x24"):
        d(torch.randn(1, 3, 20, 40))


def test_translate_accepts_single_stacks_and_checks_channels():
    m = MBDT(base_channels=4, disc_channels=4)
    assert m.translate(torch.rand(3, 17, 23)).shape == (1, 17, 23)
    with pytest.raises(CycleULMError, match=r"\(N, 3, H, W\)"):
        m.translate(torch.rand(2, 2, 17, 23))


def test_mbdt_config_rebuilds_same_architecture():
    m = MBDT(base_channels=4, disc_channels=8, disc_layers=2)
    m2 = MBDT(**m.config)
    assert {k: v.shape for k, v in m.state_dict().items()} == {
        k: v.shape for k, v in m2.state_dict().items()
    }


def test_gradients_reach_every_generator_and_discriminator_parameter():
    m = MBDT(base_channels=4, disc_channels=4)
    a, b = torch.rand(2, 3, 24, 24), torch.rand(2, 1, 24, 24)
    loss = m.d_b(m.g_ab(a)).mean() + m.d_a(m.g_ba(b)).mean()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# -- MBL-Net ------------------------------------------------------------------
@pytest.mark.parametrize("h,w", SIZES)
def test_mblnet_outputs_seven_maps_at_input_size(h, w):
    net = MBLNet(base_channels=4)
    out = net(torch.rand(2, 1, h, w))
    assert out.shape == (2, 7, h, w)


def test_mblnet_output_ranges_and_split():
    net = MBLNet(base_channels=4)
    out = net(torch.randn(3, 1, 20, 28) * 5)
    d = split_outputs(out)
    assert d["p_logit"].shape == (3, 1, 20, 28)
    assert d["means"].shape == d["sigmas"].shape == (3, 3, 20, 28)
    assert ((d["prob"] > 0) & (d["prob"] < 1)).all()
    assert (d["intensity"] >= 0).all()
    assert (d["dy"].abs() <= 1).all() and (d["dx"].abs() <= 1).all()
    assert (d["sigmas"] >= 0.01).all()
    # sparse prior: the initial detection probability is small everywhere
    assert d["prob"].mean() < 0.1


def test_mblnet_context_frames_and_bad_input():
    net = MBLNet(in_channels=3, base_channels=4)
    assert net(torch.rand(1, 3, 16, 16)).shape == (1, 7, 16, 16)
    with pytest.raises(CycleULMError, match="MBL-Net expects"):
        net(torch.rand(1, 1, 16, 16))


# -- MBT-Net ------------------------------------------------------------------
def test_convlstm_last_and_all_states():
    seq = torch.rand(2, 5, 3, 6, 7)
    last = ConvLSTM(3, 4)(seq)
    assert last.shape == (2, 4, 6, 7)
    lstm = ConvLSTM(3, 4, return_sequence=True)
    allh = lstm(seq)
    assert allh.shape == (2, 5, 4, 6, 7)
    # the state is carried: the last output depends on the first frame
    seq2 = seq.clone()
    seq2[:, 0] += 1.0
    assert not torch.allclose(lstm(seq2)[:, -1], allh[:, -1])
    assert (allh.abs() < 1).all()  # h = o * tanh(c)


@pytest.mark.parametrize("h,w", SIZES)
def test_mbtnet_output_is_four_times_larger(h, w):
    net = MBTNet(n_frames=8, base_channels=4)
    out = net(torch.rand(1, 8, h, w))
    assert out.shape == (1, len(MBTNET_CHANNELS), 4 * h, 4 * w)


def test_mbtnet_uses_all_frames_and_checks_frame_count():
    net = MBTNet(n_frames=4, base_channels=4)
    x = torch.rand(1, 4, 12, 12)
    x2 = x.clone()
    x2[:, 0] = 0
    assert not torch.allclose(net(x), net(x2))
    with pytest.raises(CycleULMError, match=r"\(N, 4, H, W\)"):
        net(torch.rand(1, 8, 12, 12))


# -- training sanity: a few steps lower each loss ---------------------------------
def _train(net, loss_fn, steps=25, lr=3e-3):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_mbdt_generator_objective_decreases_on_a_fixed_batch():
    m = MBDT(base_channels=4, disc_channels=4)
    for p in list(m.d_a.parameters()) + list(m.d_b.parameters()):
        p.requires_grad_(False)  # generator step only: the discriminators are fixed
    real_a = torch.rand(2, 3, 24, 24)
    real_b = torch.zeros(2, 1, 24, 24)
    real_b[:, :, 8:11, 12:15] = 1.0

    def objective():
        fake_b, fake_a = m.g_ab(real_a), m.g_ba(real_b)
        return cyclegan_generator_objective(
            real_a=real_a, real_b=real_b, fake_a=fake_a, fake_b=fake_b,
            rec_a=m.g_ba(fake_b), rec_b=m.g_ab(fake_a),
            d_a_fake=m.d_a(fake_a), d_b_fake=m.d_b(fake_b),
        )["total"]

    params = list(m.g_ab.parameters()) + list(m.g_ba.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(20):
        loss = objective()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]


def test_mblnet_loss_decreases_on_a_fixed_batch():
    n, h, w = 4, 16, 16
    gt = torch.tensor([[[1.0, 4.2, 5.7], [0.6, 11.0, 9.4]]]).repeat(n, 1, 1)
    mask = torch.ones(n, 2, dtype=torch.bool)
    mask[1, 1] = False
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = torch.zeros(n, 1, h, w)
    pres = torch.zeros(n, 1, h, w)
    for i in range(n):
        for (a, y, x), m in zip(gt[i], mask[i]):
            if m:
                img[i, 0] += a * torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 2.0)
                pres[i, 0, int(round(float(y))), int(round(float(x)))] = 1
    net = MBLNet(base_channels=8)
    losses = _train(net, lambda: mblnet_loss(net(img), pres, gt, mask)["total"])
    assert losses[-1] < losses[0] - 1.0


def test_mbtnet_loss_decreases_on_a_fixed_batch():
    n, t, h, w = 2, 4, 8, 8
    x = torch.zeros(n, t, h, w)
    for k in range(t):
        x[:, k, 4, 1 + k] = 1.0  # a bubble moving right by 1 px/frame
    traj = torch.zeros(n, 1, 4 * h, 4 * w)
    traj[:, :, 16:19, 4:18] = 1
    vel = torch.zeros(n, 2, 4 * h, 4 * w)
    vel[:, 1] = traj[:, 0] * 1.0
    net = MBTNet(n_frames=t, base_channels=4)
    losses = _train(net, lambda: mbtnet_loss(net(x), traj, vel)["total"], steps=20)
    assert losses[-1] < 0.7 * losses[0]


def test_parameter_counts_of_defaults_stay_small():
    total = count_parameters(MBDT()) + count_parameters(MBLNet()) + count_parameters(MBTNet())
    assert total * 4 < 8e6  # float32 weights of all shipped defaults: a few MB
