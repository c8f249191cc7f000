"""Checkpoints: exact round trip, safe loading, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cycleulm.dl.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.dl.nets import MBDT, MBLNet, MBTNet
from napari_cycleulm.psf import PSF

torch.set_num_threads(1)


def _perturb(model):
    """Move weights away from their initial values so a fresh model differs."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize(
    "kind,model,x",
    [
        ("mbdt", MBDT(base_channels=4, disc_channels=4, output_activation="softplus"), torch.rand(1, 3, 13, 18)),
        ("mblnet", MBLNet(base_channels=4, norm="batch"), torch.rand(2, 1, 13, 18)),
        ("mbtnet", MBTNet(n_frames=3, base_channels=4), torch.rand(1, 3, 9, 10)),
    ],
)
def test_round_trip_gives_identical_outputs(tmp_path, kind, model, x):
    torch.manual_seed(0)
    _perturb(model)
    if kind == "mblnet":  # give batch norm non-trivial running statistics
        model.train()
        model(x * 3)
    model.eval()
    with torch.no_grad():
        before = model(x)
    path = save_checkpoint(tmp_path / f"{kind}.pt", model, kind=kind, step=7)
    ck = load_checkpoint(path, kind=kind, device="cpu")
    assert isinstance(ck, Checkpoint)
    assert ck.kind == kind and ck.step == 7 and ck.config == model.config
    assert type(ck.model) is type(model) and not ck.model.training
    with torch.no_grad():
        after = ck.model(x)
    assert torch.equal(before, after)
    with torch.no_grad():
        assert not torch.equal(build_model(kind, model.config).eval()(x), before)


def test_metadata_optimizer_and_psf_survive_and_weights_only_load_works(tmp_path):
    torch.manual_seed(0)
    net = MBLNet(base_channels=4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.rand(1, 1, 8, 8)).sum().backward()
    opt.step()
    psf = PSF(sigma_y_px=1.5, sigma_x_px=2.5, theta_rad=0.1, pixel_size_um=50.0)
    extra = {
        "losses": np.array([3.0, 2.5, 2.0]),
        "params": {"lr": 1e-3, "patch": (40, 40), "name": "kidney", "n": np.int64(5)},
        "normalisation": {"scale": np.float32(0.5)},
    }
    path = save_checkpoint(tmp_path / "m.pt", net, kind="mblnet", optimizer=opt, step=100,
                           psf=psf, extra=extra)
    raw = torch.load(path, weights_only=True)  # no pickled code in the file
    assert raw["format_version"] == FORMAT_VERSION and raw["kind"] == "mblnet"
    ck = load_checkpoint(path)
    assert ck.psf["sigma_y_px"] == 1.5 and ck.psf["sigma_x_px"] == 2.5
    assert ck.psf["theta_rad"] == 0.1 and ck.psf["pixel_size_um"] == 50.0
    assert PSF(**{k: ck.psf[k] for k in ("sigma_y_px", "sigma_x_px", "theta_rad")}).fwhm_y_px > 0
    assert torch.equal(ck.extra["losses"], torch.tensor([3.0, 2.5, 2.0], dtype=torch.float64))
    assert ck.extra["params"] == {"lr": 1e-3, "patch": (40, 40), "name": "kidney", "n": 5}
    assert ck.extra["normalisation"]["scale"] == 0.5
    opt2 = torch.optim.Adam(ck.model.parameters(), lr=1e-3)
    opt2.load_state_dict(ck.optimizer_state)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_save_is_atomic_and_rejects_unstorable_metadata(tmp_path):
    net = MBLNet(base_channels=4)
    path = save_checkpoint(tmp_path / "a.pt", net, kind="mblnet", step=1)
    good = path.read_bytes()
    with pytest.raises(CycleULMError, match="cannot be stored"):
        save_checkpoint(path, net, kind="mblnet", extra={"f": lambda x: x})
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]  # no temp file left
    with pytest.raises(CycleULMError, match="does not match the model"):
        save_checkpoint(tmp_path / "b.pt", net, kind="mbtnet")
    with pytest.raises(CycleULMError, match="unknown network kind"):
        save_checkpoint(tmp_path / "b.pt", net, kind="decode")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CycleULMError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CycleULMError, match="not a CycleULM checkpoint or corrupt.*re-save it"):
        load_checkpoint(bad)
    path = save_checkpoint(tmp_path / "t.pt", MBLNet(base_channels=4), kind="mblnet")
    data = path.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CycleULMError, match="not a CycleULM checkpoint or corrupt"):
        load_checkpoint(trunc)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)  # a valid torch file, not ours
    with pytest.raises(CycleULMError, match="not a CycleULM checkpoint or corrupt"):
        load_checkpoint(other)


def test_wrong_kind_names_both_networks(tmp_path):
    path = save_checkpoint(tmp_path / "l.pt", MBLNet(base_channels=4), kind="mblnet")
    with pytest.raises(
        CycleULMError, match="this is an MBL-Net checkpoint but an MB-DT model was asked for"
    ):
        load_checkpoint(path, kind="mbdt")


def test_architecture_mismatch_names_the_keys(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", MBLNet(base_channels=4), kind="mblnet")
    raw = torch.load(path, weights_only=True)
    raw["config"]["base_channels"] = 8  # config no longer matches the weights
    del raw["state_dict"]["p_head.1.bias"]
    raw["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(raw, path)
    with pytest.raises(CycleULMError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "MBL-Net architecture" in msg
    assert "missing keys: p_head.1.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "mismatched shapes" in msg and "(4, 1, 3, 3) vs (8, 1, 3, 3)" in msg


def test_newer_format_version_asks_for_an_upgrade(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", MBTNet(n_frames=2, base_channels=4), kind="mbtnet")
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, path)
    with pytest.raises(CycleULMError, match="newer.*upgrade napari-cycleulm"):
        load_checkpoint(path)


def test_bad_config_is_a_clear_error(tmp_path):
    with pytest.raises(CycleULMError, match="invalid MBT-Net configuration"):
        build_model("mbtnet", {"n_frame": 8})
